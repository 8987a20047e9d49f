"""IndexStore on SQLite (WAL): the embedded default, and ``sqlite://:memory:`` for tests.

All writes go through one writer thread with group commit: concurrent write operations are run
in one transaction, each inside its own savepoint, so one failing operation does not fail the
others and a burst of stores costs one fsync. The writers of several processes (``serve
--workers``) take turns on a file lock beside the database. Reads use their own connections
(WAL readers).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dicomhub.errors import InsufficientStorage, Unavailable
from dicomhub.storage import instance_ops as ops
from dicomhub.storage import migrations
from dicomhub.storage import statements as st
from dicomhub.storage.dialect import SQLITE
from dicomhub.storage.disk import LOW_SPACE, check_space
from dicomhub.storage.sql_index import OpFactory, SqlIndex
from dicomhub.storage.sqlite_writer import MAX_BATCH, RemoteWriter

log = logging.getLogger(__name__)

# Planner statistics (ANALYZE, sampling this many rows per index) are refreshed at start-up and
# as the index grows: after 1,000 writes, then each time the writes since start-up double, and at
# least every 100,000 writes. Search plans depend on them once tables are large.
ANALYSIS_LIMIT = 400
STATS_RELOAD = 30  # seconds: how late a process that does not write sees new statistics
# Space kept beside the index file (index.sqlite-reserve) while the disk has room to spare: a
# WAL database cannot be opened, even to read, without room for its -shm file (32 KiB), which
# the last connection deletes at shut-down. Opening on a full disk releases it, so a restart
# still serves reads.
RESERVE = 256 * 1024


class SqliteIndex(SqlIndex):
    dialect = SQLITE
    shared = False  # one serve per data folder (a lock file); its workers start after recovery

    def __init__(self, path: str, writer: str | None = None, fsync: bool = True):
        """``writer``: the address of the process that writes this file for this one (see
        ``sqlite_writer``); None: this process writes itself. Without ``fsync``, commits are
        not synced (synchronous NORMAL: a power cut can undo the last ones)."""
        self._synchronous = "FULL" if fsync else "NORMAL"
        self._memory = path == ":memory:"
        self._remote = RemoteWriter(writer) if writer else None
        self._path = path
        self._turn: int | None = None
        self._uri = (
            f"file:dicomhub-{uuid.uuid4().hex}?mode=memory&cache=shared"
            if self._memory
            else "file:" + quote(str(Path(path).resolve()))
        )
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._keepalive: sqlite3.Connection | None = None
        self._stats = 0  # generation of the planner statistics
        self._writes = 0
        self._next_analyze = 1000

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._remote is not None:  # the writer's process migrated the schema
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="index-reader")
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="index-writer")
        if not self._memory:
            self._turn = os.open(self._path + ".writer", os.O_RDWR | os.O_CREAT, 0o600)
        self._readers = (
            self._writer
            if self._memory
            else ThreadPoolExecutor(4, thread_name_prefix="index-reader")
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._migrate)
        await asyncio.to_thread(self._keep_reserve)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="index-writer")

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for pool in {self._writer, self._readers} - {None}:
            pool.submit(self._close_local).result()
            pool.shutdown(wait=True)
        self._close_local()  # the writer service's thread (write_batch), if it wrote
        if self._keepalive:
            self._keepalive.close()
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None
            self._keep_reserve()  # the -shm and WAL files are gone: their space is back

    def _keep_reserve(self) -> None:
        if self._memory:
            return
        reserve = self._path + "-reserve"
        try:
            if os.path.exists(reserve) and os.path.getsize(reserve) >= RESERVE:
                return
            found = os.statvfs(os.path.dirname(os.path.abspath(reserve)))
            if found.f_bavail * found.f_frsize < RESERVE + LOW_SPACE:
                return  # no room to spare: the disk would look full for it
            fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not keep %s bytes in reserve at %s: %s", RESERVE, reserve, exc)
            with contextlib.suppress(OSError):
                os.unlink(reserve)

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.OperationalError as exc:
            try:  # a full disk has no room for the -shm file: the reserve makes some
                os.unlink(self._path + "-reserve")
            except OSError:
                raise exc from None
            log.warning("the index could not open (%s): released its reserve space", exc)
            return self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _close_local(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.writes = False

    def _migrate(self) -> None:
        if self._memory:  # keeps the shared in-memory database alive between connections
            self._keepalive = self._connect()
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current > migrations.latest("sqlite"):
            raise Unavailable("index", f"schema version {current} is newer than this dicomhub")
        pending = [(n, text) for n, text in migrations.scripts("sqlite") if n > current]
        if pending:
            conn.executescript("BEGIN; " + ";\n".join(text for _, text in pending) + ";")
            try:
                if migrations.needs_rebuild(current, "sqlite"):
                    st.drive(lambda stmt: _execute(conn, stmt), ops.rebuild_search())
                conn.executemany(
                    "INSERT INTO schema_version (version) VALUES (?)", [(n,) for n, _ in pending]
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        try:
            self._analyze()
        except sqlite3.Error as exc:  # a full disk: reads go on, with older statistics
            log.warning("could not refresh the index statistics at start-up: %s", exc)

    async def check(self) -> None:
        await self._read(st.single, st.one("SELECT 1"))
        if not self._memory:
            folder = Path(self._path).resolve().parent
            await asyncio.to_thread(check_space, "index", folder)

    # -- plumbing ------------------------------------------------------------------------------

    def _analyze(self) -> None:
        conn = self._conn()
        conn.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
        conn.execute("ANALYZE")
        self._stats += 1
        self._local.stats = self._stats

    def _reader(self) -> sqlite3.Connection:
        # The planner statistics the writer made, at once when it is this process, else (the
        # writer is another process's) at most STATS_RELOAD seconds late: a new connection
        # loads them. Not ANALYZE sqlite_schema, which takes the file's write lock: a reading
        # process stopped or starved while holding it (the background one runs at idle
        # priority) would stall every write.
        stats = self._stats if self._remote is None else int(time.monotonic() // STATS_RELOAD)
        if getattr(self._local, "stats", None) != stats:
            self._close_local()
            self._local.stats = stats
        return self._conn()

    async def _read(self, op: OpFactory, *args: Any, snapshot: bool = False) -> Any:
        def run() -> Any:
            conn = self._reader()
            if not snapshot:
                return st.drive(lambda stmt: _execute(conn, stmt), op(*args))
            conn.execute("BEGIN")
            try:
                return st.drive(lambda stmt: _execute(conn, stmt), op(*args))
            finally:
                conn.execute("COMMIT")

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def _write(self, op: OpFactory, *args: Any) -> Any:
        if self._remote is not None:
            return await self._remote.write(op, args)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, args, future))
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            calls = [(op, args) for op, args, _ in batch]
            results = await loop.run_in_executor(self._writer, self.write_batch, calls)
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def write_batch(self, calls: list[tuple[OpFactory, tuple]]) -> list[Any]:
        """Run write operations ``op(*args)`` in one transaction (group commit), each in a
        savepoint of its own; the result or the error of each. Always on one thread: this
        index's writer thread, or the writer service's (``serve --workers``)."""
        batch = [(op, args, getattr(op, "unsynced", False)) for op, args in calls]
        try:
            results = self._run_batch(batch)
        except sqlite3.Error as exc:
            results = [_unavailable(exc)] * len(batch)
        self._writes += len(batch)
        if self._writes >= self._next_analyze:
            self._next_analyze = self._writes + min(self._writes, 100_000)
            try:
                self._analyze()
            except sqlite3.Error:
                log.exception("could not refresh the index statistics")
        return results

    def _run_batch(self, batch) -> list[Any]:
        """One transaction for the batch. Writers of other processes on the same file take
        turns on a file lock first: the kernel wakes the next one as soon as the lock is free,
        where SQLite's own busy handler would sleep (1 to 100 ms) and poll."""
        if self._turn is None:
            return self._run_transaction(batch)
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            return self._run_transaction(batch)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _run_transaction(self, batch) -> list[Any]:
        conn = self._conn()
        if not getattr(self._local, "writes", False):
            # statement journals (a savepoint per operation) in memory, not in a temporary
            # file created and deleted in /var/tmp for each transaction
            conn.execute("PRAGMA temp_store = MEMORY")
            self._local.writes = True
        results: list[Any] = []
        relaxed = self._synchronous == "FULL" and all(unsynced for *_, unsynced in batch)
        if relaxed:  # only writes a power cut may undo (statements.unsynced)
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op, args, _ in batch:
                conn.execute("SAVEPOINT op")
                try:  # a call that does not fit its operation is that call's error, too
                    results.append(st.drive(lambda stmt: _execute(conn, stmt), op(*args)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - handed to the caller's future
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error):
                        exc = _unavailable(exc)
                    results.append(exc)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if relaxed:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return results


def _unavailable(exc: sqlite3.Error) -> Unavailable:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return InsufficientStorage("index", f"no space left: {exc}")
    return Unavailable("index", str(exc))


def _execute(conn: sqlite3.Connection, stmt: st.Stmt) -> Any:
    if stmt.fetch == "many":
        conn.executemany(stmt.sql, stmt.params)
        return None
    cursor = conn.execute(stmt.sql, stmt.params)
    if stmt.fetch == "one":
        return cursor.fetchone()
    if stmt.fetch == "all":
        return cursor.fetchall()
    return None
