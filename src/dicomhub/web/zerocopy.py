"""uvicorn's HTTP protocol with the ASGI zero-copy send extension (``http.response.zerocopysend``).

uvicorn does not offer the extension, so every byte of a stored file a response sends passes
through Python: read from the page cache into a buffer, then copied into the socket, in hops
between the event loop and a thread. With the extension the kernel moves the file's pages to the
socket (``sendfile(2)``): no buffer, no copy in user space, one system call per socket buffer
full. The message (see the ASGI extensions spec)::

    {"type": "http.response.zerocopysend", "file": <open file>, "offset": int, "count": int,
     "more_body": bool}

Serve with ``uvicorn.run(..., http="dicomhub.web.zerocopy:HttpToolsProtocol")``. Responses that
do not use the extension are untouched. Over TLS the kernel cannot encrypt what it sends, so the
extension is not offered there and responses stream as before.

The protocol also keeps slow and greedy clients from exhausting the process (``limit``). A
connection must send each request's line and headers within ``header_timeout`` seconds, and
so the rest of a body the app answered without reading (uvicorn only times out idle kept-alive
connections). A connection over ``max_connections`` is answered 503 and closed at once, before
it holds more than its socket, while requests on the connections already open go on (uvicorn's
own ``limit_concurrency`` would refuse those too).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from dicomhub.web.balance import Balance
from dicomhub.web.common import ZEROCOPY

_SENDFILE = hasattr(os, "sendfile")  # not on Windows: responses stream as before
HOLD = 16 * 1024  # a body message this small waits for the next one
# At most one connection in this many seconds is asked to reconnect elsewhere: a process too
# busy to accept (a long request) costs the others a reconnection now and then, not one per
# request, while a few connections that all landed on one process are spread in a moment.
SHED_INTERVAL = 0.05
_MORE = getattr(socket, "MSG_MORE", 0)  # Linux: the file's bytes follow in the same packets
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)
log = logging.getLogger(__name__)


def _refusal(status: bytes, detail: bytes) -> bytes:
    body = b'{"type":"about:blank","status":%s,"detail":"%s"}' % (status[:3], detail)
    return b"HTTP/1.1 %s\r\ncontent-type: application/problem+json\r\n" % status + (
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


BUSY = _refusal(b"503 Service Unavailable", b"the server holds as many connections as it can")
LATE = _refusal(b"408 Request Timeout", b"the request line and headers did not come in time")


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol, offering ``http.response.zerocopysend`` on plain TCP."""

    header_timeout = 0.0  # seconds for a request's line and headers; 0: no limit
    max_connections = 0  # connections this process holds at once; 0: no cap
    balance: Balance | None = None  # the processes of ``serve --workers`` share connections
    _shedding = 0  # connections of this process answering their last request (balance)
    _shed_at = -60.0  # when this process last asked a client to reconnect
    _refused_at = -60.0  # when a refusal was last logged

    @classmethod
    def limit(cls, header_timeout: float, max_connections: int) -> None:
        cls.header_timeout, cls.max_connections = header_timeout, max_connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out: _SocketOut | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._shed = False
        if self.max_connections and len(self.connections) >= self.max_connections:
            transport.write(BUSY)
            transport.close()
            if self.loop.time() - HttpToolsProtocol._refused_at > 60:
                HttpToolsProtocol._refused_at = self.loop.time()
                log.warning("refusing connections: %d are open", len(self.connections))
            return
        super().connection_made(transport)
        if self.balance is not None:
            self.balance.publish(len(self.connections) - HttpToolsProtocol._shedding)
        sock = transport.get_extra_info("socket")
        if sock is not None and _SENDFILE and not transport.get_extra_info("sslcontext"):
            self._out = _SocketOut(self.loop, transport, sock.fileno())
        if self.header_timeout:  # one timer per connection, not one per request
            self._heading: float | None = self.loop.time()
            self._timer = self.loop.call_later(self.header_timeout, self._check_headers)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._out is not None:
            self._out.close()
        super().connection_lost(exc)
        if self.balance is not None:
            HttpToolsProtocol._shedding -= self._shed
            self.balance.publish(len(self.connections) - HttpToolsProtocol._shedding)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._heading = self.loop.time()  # a request's first byte: its headers are due

    def on_headers_complete(self) -> None:
        self._heading = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Answered before its body was read: uvicorn reads (and drops) the rest for as long as
        # it keeps coming, so the rest is due as headers are.
        if self.cycle.more_body:
            self._heading = self.loop.time()
        super().on_response_complete()

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket handshake: no request cycle, uvicorn's WebSocket protocol takes it
        super().on_message_complete()
        if self.cycle.response_complete:  # the rest of an answered body came
            self._heading = None

    def _check_headers(self) -> None:
        """Close the connection if the headers it is sending are late; else look again when
        they would be (or in ``header_timeout`` while no request is being received)."""
        delay = self.header_timeout
        if self._heading is not None:
            delay += self._heading - self.loop.time()
            if delay <= 0:
                if not self.transport.is_closing():
                    self.transport.write(LATE)
                    self.transport.close()
                return
        self._timer = self.loop.call_later(delay, self._check_headers)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        balance = self.balance
        if balance is not None and cycle.keep_alive and not self._shed:
            now = self.loop.time()
            held = len(self.connections) - HttpToolsProtocol._shedding
            if now >= HttpToolsProtocol._shed_at + SHED_INTERVAL and balance.crowded(held):
                cycle.keep_alive = False  # this answer says "Connection: close" (see balance)
                self._shed = True
                HttpToolsProtocol._shedding += 1
                HttpToolsProtocol._shed_at = now
                balance.publish(held - 1)
        if self._out is not None and not self._out.closed:
            cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}  # type: ignore[typeddict-item]
            cycle.transport = _Held(cycle.transport)  # type: ignore[assignment]
            cycle.send = _ZeroCopySend(cycle, self._out)  # type: ignore[method-assign]
        super()._start_asgi_task(cycle, app)


class _Held:
    """A cycle's transport as uvicorn's ``send`` sees it. Once the response starts, its writes wait
    here until ``flush``: the head goes out with the body (or in a file's first packet), in one
    system call and one packet, not one for the head and one for the body."""

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.holding = False  # not before the response starts: "100 Continue" goes out at once
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if not self.holding:
            self.transport.write(data)
        elif data:
            self.parts.append(data)
            self.size += len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts, self.size = [], 0
        return out

    def flush(self) -> None:
        parts, self.parts, self.size = self.parts, [], 0
        if parts and not self.transport.is_closing():
            self.transport.writelines(parts)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


class _ZeroCopySend:
    """A cycle's ``send``: zero-copy messages here, everything else to uvicorn's own, whose writes
    are held (``_Held``) while what they add up to is small and more follows: the head waits for
    the body, a small body message for the next message; before a file they go out in the file's
    first packet (MSG_MORE)."""

    def __init__(self, cycle: RequestResponseCycle, out: _SocketOut):
        self.cycle, self.out, self.send = cycle, out, cycle.send
        self.held: _Held = cycle.transport  # type: ignore[assignment]

    async def __call__(self, message) -> None:
        cycle = self.cycle
        kind = message["type"]
        if kind != ZEROCOPY:
            if kind == "http.response.start":
                self.held.holding = True
            await self.send(message)
            more = kind == "http.response.start" or message.get("more_body", False)
            if not more or self.held.size > HOLD or cycle.response_complete:
                self.held.flush()
            return
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZEROCOPY}' outside a response body.")
        fd = message["file"].fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = os.fstat(fd).st_size - offset
        if cycle.scope["method"] == "HEAD":
            count = 0
        elif cycle.chunked_encoding:
            if count:
                self.held.write(b"%x\r\n" % count)
        elif count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        else:
            cycle.expected_content_length -= count
        if count:
            if not await self.out.sendfile(fd, offset, count, self.held.take()):
                cycle.disconnected = True  # as uvicorn's own send does once the client is gone
                cycle.message_event.set()
                cycle.transport.close()
                return
            if cycle.chunked_encoding:
                self.held.write(b"\r\n")
        if not message.get("more_body", False):
            await self({"type": "http.response.body", "body": b"", "more_body": False})


class _SocketOut:
    """Direct writes to a connection's socket, never interleaved with the transport's own: each
    send starts once the transport's buffer is empty, and the transport writes nothing while
    one runs (the response's messages are sent one after the other)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, fd: int):
        self.loop, self.transport = loop, transport
        # A duplicate of the socket's descriptor: the loop watches it for us without touching the
        # transport's registration, and it stays valid (and never names another connection's
        # socket) until we close it, even when the transport closes its own.
        self.sock = socket.socket(fileno=os.dup(fd))
        self.fd = self.sock.fileno()
        self.closed = False
        self._waiter: asyncio.Future | None = None

    async def sendfile(self, fd: int, offset: int, count: int, prefix: bytes = b"") -> bool:
        """Send ``prefix``, then ``count`` bytes of file ``fd`` from ``offset``, in the same
        packets; False when the client is gone."""
        while count > 0:
            if self.closed:
                return False
            if self.transport.get_write_buffer_size():
                await self._writable()
                await asyncio.sleep(0)  # the transport flushes its buffer on this event too
                continue
            try:
                if prefix:
                    prefix = prefix[self.sock.send(prefix, _MORE) :]
                    continue
                sent = os.sendfile(self.fd, fd, offset, count)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    return False
                raise
            if sent == 0:
                raise OSError(errno.EIO, f"file ended {count} bytes before the response did")
            offset += sent
            count -= sent
        return not self.closed

    async def _writable(self) -> None:
        waiter = self._waiter = self.loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.loop.add_writer(self.fd, ready)
        try:
            await waiter
        finally:
            self._waiter = None
            if not self.closed:
                self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_writer(self.fd)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.sock.close()
