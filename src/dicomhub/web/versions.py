"""The API versions (``/v1/...``, ``/v2/...``) and the header that lists them.

As Microsoft's server reports them, every response under a version prefix carries
``api-supported-versions`` (clients written for it read the header to pick a version).
"""

from __future__ import annotations

import re

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VERSIONS = (1, 2)
HEADER = (b"api-supported-versions", ", ".join(map(str, VERSIONS)).encode())
_VERSIONED = re.compile(r"/v\d+/")


class ApiVersions:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _VERSIONED.match(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def with_versions(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), HEADER]}
            await send(message)

        await self.app(scope, receive, with_versions)


def api_versions() -> list[Middleware]:
    return [Middleware(ApiVersions)]
