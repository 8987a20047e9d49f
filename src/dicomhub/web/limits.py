"""Request limits checked before routing: the URL's length (414), the headers' total size and
count (431), and how long the client may leave the request body idle, or how slowly it may send
it (408)."""

from __future__ import annotations

import asyncio
import time

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomhub.errors import RequestTimeout
from dicomhub.settings_groups import RequestLimits as RequestLimitSettings
from dicomhub.web.errors import problem

MAX_HEADER_COUNT = 100


class RequestLimits:
    def __init__(self, app: ASGIApp, settings: RequestLimitSettings):
        self.app = app
        self.url = settings.max_url_length
        self.headers = settings.max_header_size
        self.idle = settings.request_timeout
        self.rate = settings.min_upload_rate
        self.window = settings.upload_rate_window

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal:
            await problem(*refusal)(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(
            scope.get("query_string") or b""
        )
        if url > self.url:
            detail = f"the URL is {url} bytes long, more than the {self.url} accepted"
            return 414, "URI Too Long", detail
        headers = scope.get("headers") or []
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.headers or len(headers) > MAX_HEADER_COUNT:
            detail = (
                f"the request has {len(headers)} headers of {size} bytes; at most "
                f"{MAX_HEADER_COUNT} headers of {self.headers} bytes in all are accepted"
            )
            return 431, "Request Header Fields Too Large", detail
        return None

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` that fails with 408 when the body stalls for ``idle`` seconds, or comes
        slower than ``rate`` bytes/s over a ``window`` of time spent waiting for it (once the
        body is complete, receive waits for the disconnect as long as it takes)."""
        body_done = False
        waited = 0.0  # in this window
        received = 0

        async def bounded() -> Message:
            nonlocal body_done, waited, received
            if body_done:
                return await receive()
            started = time.monotonic()
            try:  # asyncio.timeout, not wait_for: no task per chunk
                async with asyncio.timeout(self.idle):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body sent nothing for {self.idle} seconds"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            elif self.rate:
                waited += time.monotonic() - started
                received += len(message.get("body", b""))
                if waited >= self.window:
                    if received < self.rate * waited:
                        raise RequestTimeout(
                            f"the request body came at {received / waited:.0f} bytes/s, less "
                            f"than the {self.rate} required"
                        )
                    waited, received = 0.0, 0
            return message

        return bounded


def limits(settings: RequestLimitSettings) -> list[Middleware]:
    return [Middleware(RequestLimits, settings=settings)]
