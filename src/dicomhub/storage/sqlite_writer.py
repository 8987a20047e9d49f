"""One SQLite writer for the several processes of ``serve --workers N``.

SQLite takes one write transaction at a time per file. N processes each writing would take
turns on the file (and each re-read what the others changed, and sync its own small batches);
instead the supervisor process owns the only writer (``WriterService``: the index's group
commit, run on a thread of its own) and the server processes send it their write operations
(``RemoteWriter``) over a Unix socket: the operation (a function of ``instance_ops`` and its
arguments) goes in, its result or error comes back. Reads stay in each process (WAL readers).

The socket lives in a private folder (mode 0700) and the service checks that each peer runs
as the same user (SO_PEERCRED): the frames are pickles, so nobody else may connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from typing import Any

from dicomhub.errors import Unavailable
from dicomhub.loops import loop_factory

log = logging.getLogger(__name__)
ENVIRONMENT = "DICOMHUB_INDEX_WRITER"  # the socket's path, handed to the server processes
_LENGTH = struct.Struct("!I")
RECEIVE = 256 * 1024  # bytes read from a connection at a time
MAX_BATCH = 256  # calls in one transaction at most


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(size))


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _portable(exc: BaseException) -> BaseException:
    """An error as it can cross the socket (a bug's own exception may not pickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return Unavailable("index", f"the index writer failed: {exc!r}")


class WriterService:
    """The writer, run by the supervisor on a thread of its own around ``index`` (an
    SqliteIndex, started on that thread). The thread waits on the sockets alone, with no event
    loop: what every connection has sent since the last transaction runs in the next one (group
    commit across the server processes), then the answers go back."""

    def __init__(self, make_index):
        self._make_index = make_index  # called on the service's thread
        self._folder = tempfile.mkdtemp(prefix="dicomhub-index-")  # mode 0700
        self.address = os.path.join(self._folder, "writer.sock")
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._wake, self._woken = socket.socketpair()  # stop() writes to it
        self._thread = threading.Thread(target=self._run, name="index-writer-service", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._wake.send(b"x")
        self._thread.join(30)
        self._wake.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            try:
                index = self._make_index()
                runner.run(index.start())
                listener = socket.socket(socket.AF_UNIX)
                listener.bind(self.address)
                listener.listen(64)
            except BaseException as exc:
                self._failure = exc
                self._ready.set()
                raise
            self._ready.set()
            try:
                _Serving(index, listener, self._woken).run()
            finally:
                listener.close()
                self._woken.close()
                runner.run(index.close())


class _Peer:
    """One server process's connection: the bytes received and not yet read as frames, the
    answers not yet sent."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.received = bytearray()
        self.unsent = bytearray()
        self.waiting = False  # for the socket to take the rest of ``unsent``


class _Serving:
    def __init__(self, index, listener: socket.socket, woken: socket.socket):
        self.index = index
        self.listener = listener
        self.woken = woken
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(woken, selectors.EVENT_READ)

    def run(self) -> None:
        stopping = False
        try:
            while not stopping:
                calls: list[tuple[_Peer, int, Any, tuple]] = []
                for key, events in self.selector.select():
                    if key.fileobj is self.woken:
                        stopping = True  # after the calls received with it
                        continue
                    if key.fileobj is self.listener:
                        self._accept()
                        continue
                    peer = key.data
                    if events & selectors.EVENT_WRITE:
                        self._send(peer)
                    if events & selectors.EVENT_READ:
                        calls += self._receive(peer)
                for i in range(0, len(calls), MAX_BATCH):
                    self._answer(calls[i : i + MAX_BATCH])
        finally:
            for key in list(self.selector.get_map().values()):
                if isinstance(key.data, _Peer):
                    key.data.sock.close()
            self.selector.close()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            log.warning("index writer: refused a connection from another user")
            sock.close()
            return
        sock.setblocking(False)
        peer = _Peer(sock)
        self.selector.register(sock, selectors.EVENT_READ, peer)

    def _receive(self, peer: _Peer) -> list[tuple[_Peer, int, Any, tuple]]:
        """The calls ``peer`` has sent in full; a peer gone (or sending what is not a frame)
        is closed, and what it sent in full is still written."""
        try:
            data = peer.sock.recv(RECEIVE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        peer.received += data
        calls, done = [], 0
        received = peer.received
        while len(received) - done >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(received, done)
            end = done + _LENGTH.size + size
            if len(received) < end:
                break
            try:
                number, op, args = pickle.loads(received[done + _LENGTH.size : end])
            except Exception:  # noqa: BLE001 - not one of ours: the connection ends
                log.exception("index writer: a frame that is not a call")
                data = b""
                break
            calls.append((peer, number, op, args))
            done = end
        del received[:done]
        if not data:
            self._close(peer)
        return calls

    def _answer(self, calls: list[tuple[_Peer, int, Any, tuple]]) -> None:
        try:
            results = self.index.write_batch([(op, args) for _, _, op, args in calls])
        except Exception as exc:  # noqa: BLE001 - a bug: each caller gets it, the writer lives
            log.exception("index writer: a batch failed")
            results = [exc] * len(calls)
        answered: set[_Peer] = set()
        for (peer, number, *_), result in zip(calls, results, strict=True):
            if peer.sock.fileno() < 0:  # gone: nobody to answer
                continue
            ok = not isinstance(result, BaseException)
            try:  # a result that cannot cross the socket is an error, not a caller left waiting
                reply = _frame((number, ok, result if ok else _portable(result)))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                reply = _frame((number, False, _portable(exc)))
            peer.unsent += reply
            answered.add(peer)
        for peer in answered:
            self._send(peer)

    def _send(self, peer: _Peer) -> None:
        """As much of ``peer``'s answers as its socket takes now; the rest when it is
        writable again."""
        try:
            sent = peer.sock.send(peer.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(peer)
            return
        del peer.unsent[:sent]
        if peer.waiting != bool(peer.unsent):
            peer.waiting = bool(peer.unsent)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.waiting else 0)
            self.selector.modify(peer.sock, events, peer)

    def _close(self, peer: _Peer) -> None:
        if peer.sock.fileno() >= 0:
            self.selector.unregister(peer.sock)
            peer.sock.close()


class RemoteWriter:
    """A server process's side: ``write(op, args)`` runs on the supervisor's writer."""

    def __init__(self, address: str):
        self.address = address
        self._numbers = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._connecting = asyncio.Lock()

    async def write(self, op, args: tuple) -> Any:
        writer = await self._connection()
        number = next(self._numbers)
        future = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        try:
            writer.write(_frame((number, op, args)))
            await writer.drain()
        except ConnectionError as exc:
            self._pending.pop(number, None)
            raise Unavailable("index", f"the index writer is gone: {exc}") from exc
        return await future

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, self._writer = await asyncio.open_unix_connection(self.address)
                except OSError as exc:
                    raise Unavailable("index", f"cannot reach the index writer: {exc}") from exc
                self._reading = asyncio.create_task(self._read(reader))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                number, ok, value = await _read_frame(reader)
                future = self._pending.pop(number, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            failure = Unavailable("index", f"the index writer went away: {exc!r}")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._pending.clear()
            if self._writer is not None:
                self._writer.close()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self._writer is not None:
            self._writer.close()
