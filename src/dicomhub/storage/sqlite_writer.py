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
import itertools
import logging
import os
import pickle
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
    """The writer, run by the supervisor on a thread with its own event loop around ``index``
    (a started-on-that-loop SqliteIndex)."""

    def __init__(self, make_index):
        self._make_index = make_index  # called on the service's loop
        self._folder = tempfile.mkdtemp(prefix="dicomhub-index-")  # mode 0700
        self.address = os.path.join(self._folder, "writer.sock")
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="index-writer-service", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            index = self._make_index()
            index.inline_writes = True  # this loop serves the writer alone
            await index.start()
            server = await asyncio.start_unix_server(
                lambda r, w: self._connection(index, r, w), path=self.address
            )
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await index.close()

    async def _connection(self, index, reader, writer) -> None:
        peer = writer.get_extra_info("socket")
        creds = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            log.warning("index writer: refused a connection from another user")
            writer.close()
            return
        sending = asyncio.Lock()

        async def answer(number: int, op, args) -> None:
            try:  # a result that cannot cross the socket is an error, not a caller left waiting
                reply = _frame((number, True, await index._write(op, *args)))
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                reply = _frame((number, False, _portable(exc)))
            async with sending:
                writer.write(reply)
                await writer.drain()

        tasks = set()
        try:
            while True:
                number, op, args = await _read_frame(reader)
                task = asyncio.create_task(answer(number, op, args))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the server process went away; what it sent is still written
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()


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
