"""Delivering one event: a signed POST with a timeout; any 2xx answer is success, anything else
(a redirect too: not followed) a failure.

HTTP/1.1 written here over asyncio streams rather than through a general client: a delivery
needs a POST with a known length and the answer's status, nothing else (no redirects, cookies,
proxies, compression or HTTP/2), and it runs once per event per subscription, beside ingest,
where httpx's CPU per request showed (docs/events.md, "What it costs"). Connections to a
receiver are kept open between events; an answer's body is read (and dropped) when its length
says it is short, otherwise the connection is closed after it. The whole exchange, connecting
included, has ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from urllib.parse import SplitResult, quote, urlsplit

from dicomhub import __version__
from dicomhub.clock import utcnow
from dicomhub.webhooks import signing
from dicomhub.webhooks.events import MEDIA_TYPES

ANSWER_READ = 16 * 1024  # the longest answer read to keep its connection (others: closed)
HEAD_LIMIT = 64 * 1024  # an answer's status line and headers
IDLE = 4  # connections kept open per receiver (host and port)
USER_AGENT = f"dicomhub/{__version__} webhooks"


class DeliveryFailed(Exception):
    """The receiver did not take the event (an error answer, a timeout, no connection)."""


Origin = tuple[str, str, int]  # scheme, host, port
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class WebhookClient:
    def __init__(self, timeout: float, tls: ssl.SSLContext | None = None):
        """``tls``: the certificates trusted (default: the CA bundle of ``certifi``)."""
        self.timeout = timeout
        self._idle: dict[Origin, list[Connection]] = defaultdict(list)
        self._tls = tls

    async def send(self, url: str, secret: str, id: str, schema: str, body: bytes) -> None:
        """POST ``body`` signed with ``secret``; raises DeliveryFailed."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or _PORTS[parts.scheme])
        headers = signing.headers(secret, id, int(utcnow().timestamp()), body)
        headers["content-type"] = MEDIA_TYPES[schema]
        try:
            request = _request(parts, headers, body)
            async with asyncio.timeout(self.timeout):
                status = await self._exchange(origin, request)
        except TimeoutError:
            raise DeliveryFailed(f"no answer within {self.timeout:g} s") from None
        except (
            OSError,
            UnicodeError,  # a host name IDNA cannot encode
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the receiver answered {status}")

    async def _exchange(self, origin: Origin, request: bytes) -> int:
        """Send on a kept connection (again on a new one when the receiver had closed it), or
        on a new one; the answer's status."""
        while self._idle[origin]:
            reader, writer = self._idle[origin].pop()
            try:
                return await self._on(origin, reader, writer, request)
            except (OSError, asyncio.IncompleteReadError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise  # the receiver had begun answering: not a closed idle connection
        scheme, host, port = origin
        tls = self._context() if scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None, limit=HEAD_LIMIT
        )
        return await self._on(origin, reader, writer, request)

    async def _on(
        self,
        origin: Origin,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
    ) -> int:
        keep = False
        try:
            writer.write(request)
            await writer.drain()
            status, keep = await _answer(reader)
            return status
        finally:
            if keep and len(self._idle[origin]) < IDLE:
                self._idle[origin].append((reader, writer))
            else:
                writer.close()

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:  # the CA bundle general clients use (httpx's too)
            import certifi

            self._tls = ssl.create_default_context(cafile=certifi.where())
        return self._tls

    async def close(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()


_PORTS = {"http": 80, "https": 443}
_SAFE = "!#$%&'()*+,/:;=?@[]~"  # kept as they are in a request target (with letters, digits, -._)


def _request(parts: SplitResult, headers: dict[str, str], body: bytes) -> bytes:
    # what is not ASCII in the path and query percent-encoded, the host name in IDNA
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _SAFE)
    host = parts.netloc.rsplit("@", 1)[-1].encode("idna").decode("ascii")
    lines = [
        f"POST {target} HTTP/1.1",
        f"host: {host}",
        f"user-agent: {USER_AGENT}",
        "accept: */*",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the connection can carry another request) of an answer; informational
    answers (1xx) are skipped."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise DeliveryFailed(f"not an HTTP answer: {lines[0][:100]!r}")
        status = int(code)
        if status >= 200:
            break
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "")
    if status in (204, 304):
        return status, keep  # never a body
    length = fields.get("content-length", "")
    if "transfer-encoding" in fields or not length.isdigit() or int(length) > ANSWER_READ:
        return status, False  # chunked, up to the connection's end or long: not read, closed
    if int(length):
        await reader.readexactly(int(length))
    return status, keep
