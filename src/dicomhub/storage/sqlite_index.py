"""IndexStore on SQLite (WAL): the embedded default, and ``sqlite://:memory:`` for tests.

All writes go through one writer thread with group commit: concurrent write operations are run
in one transaction, each inside its own savepoint, so one failing operation does not fail the
others and a burst of stores costs one fsync. Reads use their own connections (WAL readers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dicomhub.clock import from_micros, to_micros, utcnow
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import Query
from dicomhub.errors import AlreadyExists, Pending, Unavailable
from dicomhub.model import (
    Action,
    ChangeFeedEntry,
    InstanceId,
    NewInstance,
    Scope,
    StoredInstance,
    blob_key,
)
from dicomhub.storage import sqlite_queries as q
from dicomhub.storage.sqlite_search import count_sql, search_sql

log = logging.getLogger(__name__)

MAX_BATCH = 256
# Planner statistics (ANALYZE, sampling this many rows per index) are refreshed at start-up and
# as the index grows: after 1,000 writes, then each time the writes since start-up double, and at
# least every 100,000 writes. Search plans depend on them once tables are large.
ANALYSIS_LIMIT = 400


class SqliteIndex:
    def __init__(self, path: str):
        self._memory = path == ":memory:"
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
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="index-writer")
        self._readers = (
            self._writer
            if self._memory
            else ThreadPoolExecutor(4, thread_name_prefix="index-reader")
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._migrate)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="index-writer")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for pool in {self._writer, self._readers} - {None}:
            pool.submit(self._close_local).result()
            pool.shutdown(wait=True)
        if self._keepalive:
            self._keepalive.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
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

    def _migrate(self) -> None:
        if self._memory:  # keeps the shared in-memory database alive between connections
            self._keepalive = self._connect()
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for number, script in migrations():
            if number > current:
                conn.executescript(f"BEGIN; {script};")
                try:
                    if number in BACKFILLS:
                        BACKFILLS[number](conn)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        self._analyze()

    async def check(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- plumbing ------------------------------------------------------------------------------

    def _analyze(self) -> None:
        conn = self._conn()
        conn.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
        conn.execute("ANALYZE")
        self._stats += 1
        self._local.stats = self._stats

    def _reader(self) -> sqlite3.Connection:
        conn = self._conn()
        if getattr(self._local, "stats", 0) != self._stats:  # load statistics made by the writer
            conn.execute("ANALYZE sqlite_schema")
            self._local.stats = self._stats
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))
        except sqlite3.Error as exc:
            raise Unavailable("index", str(exc)) from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, future))
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._writer, self._run_batch, batch)
            except sqlite3.Error as exc:
                results = [Unavailable("index", str(exc))] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            self._writes += len(batch)
            if self._writes >= self._next_analyze:
                self._next_analyze = self._writes + min(self._writes, 100_000)
                try:
                    await loop.run_in_executor(self._writer, self._analyze)
                except sqlite3.Error:
                    log.exception("could not refresh the index statistics")

    def _run_batch(self, batch) -> list[Any]:
        conn = self._conn()
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append(fn(conn))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - handed to the caller's future
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error):
                        exc = Unavailable("index", str(exc))
                    results.append(exc)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    # -- store ---------------------------------------------------------------------------------

    async def reserve(self, instance_id: InstanceId) -> int:
        def op(c: sqlite3.Connection) -> int:
            row = c.execute(q.FIND_INSTANCE_STATUS, _uids(instance_id)).fetchone()
            if row is not None:
                if row["status"] == 1:
                    raise AlreadyExists(f"SOP instance {instance_id.sop} is already stored")
                raise Pending(f"SOP instance {instance_id.sop} is being stored by another request")
            series_key = _ensure_series(c, instance_id)
            cur = c.execute(q.INSERT_CLAIM, (series_key, instance_id.sop, to_micros(utcnow())))
            return cur.lastrowid

        return await self._write(op)

    async def commit(self, version: int, instance: NewInstance) -> None:
        def op(c: sqlite3.Connection) -> None:
            now = to_micros(utcnow())
            claim = c.execute(q.CLAIM_SERIES, (version,)).fetchone()
            if claim is None:
                raise Pending(f"the claim on SOP instance {instance.id.sop} was released")
            sequence = _log_change(c, now, Action.CREATE, instance.id, version)
            record = instance.search
            c.execute(
                q.COMMIT_INSTANCE,
                (
                    instance.sop_class,
                    instance.transfer_syntax,
                    instance.size,
                    now,
                    int(instance.parse_on_read),
                    instance.metadata,
                    instance.frames,
                    instance.bulk,
                    record.instance.get("instance_number"),
                    record.instance.get("acquisition_datetime"),
                    record.instance_doc,
                    sequence,
                    version,
                ),
            )
            _count_store(c, claim["series_key"], sequence, record)

        await self._write(op)

    async def abandon(self, version: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            row = c.execute(q.CLAIM_SERIES, (version,)).fetchone()
            c.execute(q.DELETE_CLAIM, (version,))
            if row is not None:
                _prune(c, row["series_key"])

        await self._write(op)

    async def abandoned_claims(self) -> list[tuple[int, str]]:
        rows = await self._read(lambda c: c.execute(q.ABANDONED_CLAIMS).fetchall())
        return [(r["version"], r["partition_name"]) for r in rows]

    # -- read ----------------------------------------------------------------------------------

    async def instances(self, scope: Scope) -> list[StoredInstance]:
        sql, params = q.scoped(q.SELECT_INSTANCES, scope)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [_stored(r) for r in rows]

    async def metadata(self, scope: Scope) -> tuple[list[bytes], str]:
        sql, params = q.scoped(q.SELECT_METADATA, scope)
        tag_sql, tag_params = q.etag_query(scope)

        def fn(c: sqlite3.Connection):
            c.execute("BEGIN")  # one snapshot for both reads
            try:
                rows = c.execute(sql, params).fetchall()
                tag = c.execute(tag_sql, tag_params).fetchone()
            finally:
                c.execute("COMMIT")
            return [r[0] for r in rows], (tag[0] if tag else "")

        items, tag = await self._read(fn)
        return items, str(tag)

    # -- search --------------------------------------------------------------------------------

    async def search(self, query: Query, needs: set[str]) -> list[dict]:
        sql, params = search_sql(query, needs)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [dict(r) for r in rows]

    async def count(self, query: Query) -> int:
        sql, params = count_sql(query)
        return (await self._read(lambda c: c.execute(sql, params).fetchone()))[0]

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, scope: Scope, cleanup_after: datetime) -> int:
        sql, params = q.scoped(q.SELECT_FOR_DELETE, scope)
        due = to_micros(cleanup_after)

        def op(c: sqlite3.Connection) -> int:
            rows = c.execute(sql, params).fetchall()
            now = to_micros(utcnow())
            removed: dict[int, list[int]] = {}  # series key -> change sequences
            for r in rows:
                iid = InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"])
                c.execute(q.DELETE_INSTANCE, (r["version"],))
                c.execute(q.QUEUE_BLOB_DELETION, (blob_key(r["partition_name"], r["version"]), due))
                sequence = _log_change(c, now, Action.DELETE, iid, r["version"])
                removed.setdefault(r["series_key"], []).append(sequence)
            for series_key, sequences in removed.items():
                study_key, emptied = c.execute(
                    q.COUNT_SERIES_DELETE, (len(sequences), sequences[-1], series_key)
                ).fetchone()
                c.execute(q.COUNT_STUDY_DELETE, (len(sequences), emptied, sequences[-1], study_key))
                _prune(c, series_key)
            return len(rows)

        return await self._write(op)

    async def due_blob_deletions(self, now: datetime, limit: int) -> list[tuple[int, str]]:
        rows = await self._read(
            lambda c: c.execute(q.DUE_BLOB_DELETIONS, (to_micros(now), limit)).fetchall()
        )
        return [(r["id"], r["blob_key"]) for r in rows]

    async def finish_blob_deletions(self, ids: list[int]) -> None:
        await self._write(lambda c: c.executemany(q.FINISH_BLOB_DELETION, [(i,) for i in ids]))

    async def retry_blob_deletion(self, id: int, not_before: datetime) -> None:
        await self._write(lambda c: c.execute(q.RETRY_BLOB_DELETION, (to_micros(not_before), id)))

    # -- change feed ---------------------------------------------------------------------------

    async def changefeed(
        self,
        offset: int,
        limit: int,
        by_sequence: bool,
        start: datetime | None = None,
        end: datetime | None = None,
        include_metadata: bool = True,
    ) -> list[ChangeFeedEntry]:
        if by_sequence:
            sql, params = q.CHANGEFEED_BY_SEQUENCE, (offset, offset + limit)
        else:
            lo = to_micros(start) if start else -(2**62)
            hi = to_micros(end) if end else 2**62
            sql, params = q.CHANGEFEED_BY_TIME, (lo, hi, limit, offset)
        sql = sql.format(metadata="i.metadata" if include_metadata else "NULL")
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [_entry(r) for r in rows]

    async def latest_change(self, include_metadata: bool = True) -> ChangeFeedEntry | None:
        sql = q.CHANGEFEED_LATEST.format(metadata="i.metadata" if include_metadata else "NULL")
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return _entry(row) if row else None


def _backfill_search(c: sqlite3.Connection) -> None:
    """Migration 2: derive the search columns of instances stored before it from their metadata."""
    rows = c.execute(q.BACKFILL_INSTANCES).fetchall()
    for r in rows:
        (metadata,) = c.execute(q.INSTANCE_METADATA, (r["version"],)).fetchone()
        record = sk.describe(json.loads(metadata))
        sequence = r["sequence"] or 0
        c.execute(
            q.BACKFILL_INSTANCE,
            (
                record.instance.get("instance_number"),
                record.instance.get("acquisition_datetime"),
                record.instance_doc,
                sequence,
                r["version"],
            ),
        )
        _count_store(c, r["series_key"], sequence, record)


BACKFILLS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _backfill_search}


def migrations() -> list[tuple[int, str]]:
    folder = resources.files("dicomhub.storage") / "sql" / "sqlite"
    scripts = sorted((p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(int(name.split("_", 1)[0]), text) for name, text in scripts]


def _uids(i: InstanceId) -> tuple[str, str, str, str]:
    return (i.partition, i.study, i.series, i.sop)


def _ensure_series(c: sqlite3.Connection, i: InstanceId) -> int:
    c.execute(q.INSERT_STUDY, (i.partition, i.study))
    study_key = c.execute(q.STUDY_KEY, (i.partition, i.study)).fetchone()[0]
    c.execute(q.INSERT_SERIES, (study_key, i.series))
    return c.execute(q.SERIES_KEY, (study_key, i.series)).fetchone()[0]


def _prune(c: sqlite3.Connection, series_key: int) -> None:
    """Remove a series (and its study) left without instances."""
    row = c.execute(q.SERIES_STUDY, (series_key,)).fetchone()
    if row is None:
        return
    c.execute(q.DELETE_EMPTY_SERIES, (series_key, series_key))
    c.execute(q.DELETE_EMPTY_STUDY, (row[0], row[0]))


def _count_store(c: sqlite3.Connection, series_key: int, sequence: int, record) -> None:
    """Counters, change sequences and attributes of an instance's series and study."""
    study_key, first, series_doc = c.execute(
        q.COUNT_SERIES_STORE, (sequence, sequence, series_key)
    ).fetchone()
    (study_doc,) = c.execute(
        q.COUNT_STUDY_STORE, (int(first), sequence, sequence, study_key)
    ).fetchone()
    _merge_attributes(c, Level.SERIES, series_key, series_doc, record.series_doc)
    _merge_attributes(c, Level.STUDY, study_key, study_doc, record.study_doc)


def _merge_attributes(c: sqlite3.Connection, level: Level, key: int, old: str | None, new: str):
    """Merge an instance's level document into its study's or series'; when that changes it,
    rewrite the level's matching columns and side rows (name words, request items)."""
    merged = sk.merge_docs(old, new)
    if merged == old:
        return
    js = json.loads(merged)
    table = q.LEVEL_ATTRIBUTES[level]
    normalised = sk.columns(level, js)
    values = [normalised[name] for name in table.columns]
    c.execute(table.update, (*values, merged, key))
    c.execute(table.clear_side, (key,))
    side = sk.words(js) if level is Level.STUDY else sk.request_items(js)
    c.executemany(table.insert_side, [(key, *row) for row in side])


def _log_change(
    c: sqlite3.Connection, now: int, action: Action, i: InstanceId, version: int
) -> int:
    cur = c.execute(q.INSERT_CHANGE, (now, int(action), *_uids(i), version))
    return cur.lastrowid


def _stored(r: sqlite3.Row) -> StoredInstance:
    return StoredInstance(
        id=InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
        version=r["version"],
        sop_class=r["sop_class_uid"],
        transfer_syntax=r["transfer_syntax"],
        size=r["size"],
        created=from_micros(r["created"]),
        frames=r["frames"],
        bulk=r["bulk"],
        parse_on_read=bool(r["parse_on_read"]),
    )


def _entry(r: sqlite3.Row) -> ChangeFeedEntry:
    current = r["current_version"]
    if current is None:
        state = "deleted"
    elif current == r["version"] and r["action"] == Action.CREATE:
        state = "current"
    else:
        state = "replaced"
    return ChangeFeedEntry(
        sequence=r["sequence"],
        timestamp=from_micros(r["timestamp"]),
        action=Action(r["action"]),
        id=InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
        state=state,
        metadata=r["metadata"] if current is not None and r["action"] != Action.DELETE else None,
    )
