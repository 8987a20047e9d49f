"""Request limits checked before routing: the length of the URL (path and query string)."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomhub.settings import Settings
from dicomhub.web.errors import problem


class UrlLimit:
    """414 URI Too Long for a path and query string longer than ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = len(scope.get("raw_path") or scope["path"].encode()) + len(
                scope.get("query_string") or b""
            )
            if length > self.limit:
                detail = f"the URL is {length} bytes long, more than the {self.limit} accepted"
                await problem(414, "URI Too Long", detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def limits(settings: Settings) -> list[Middleware]:
    return [Middleware(UrlLimit, limit=settings.max_url_length)]
