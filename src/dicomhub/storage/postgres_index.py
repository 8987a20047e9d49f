"""IndexStore on PostgreSQL (``postgresql://user:password@host:port/database``): the index of
deployments with several nodes.

A pool of asyncpg connections; every write operation runs in a transaction of its own and is run
again from the start when PostgreSQL aborts it for a deadlock, a serialization failure or a row
that a concurrent transaction removed. No write takes a lock beyond the rows it writes: the
change feed is numbered by its readers (``Dialect.number_changes``), and a store commits in one
statement (``pg_commit``). Migrations run under an advisory lock, so nodes starting together
upgrade the schema once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.errors import Unavailable
from dicomhub.model import NewInstance
from dicomhub.storage import extended_tags_ops as eqt
from dicomhub.storage import instance_ops as ops
from dicomhub.storage import migrations, pg_commit
from dicomhub.storage import statements as st
from dicomhub.storage.dialect import POSTGRES
from dicomhub.storage.sql_index import OpFactory, SqlIndex

log = logging.getLogger(__name__)

ENGINE = "postgresql"
MIGRATION_LOCK = 7340116
RETRIES = 5
# The connection is lost or refused, or the server is shutting down or out of connections.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ForeignKeyViolationError,
)
# While a reindex waits for the writes older than it to end (settled_version).
SETTLE_POLL = 0.05
NEW_XID = "SELECT pg_current_xact_id()::text::bigint"
OLDEST_XID = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class PostgresIndex(SqlIndex):
    dialect = POSTGRES
    shared = True

    def __init__(self, url: str, pool_size: int = 10, migrate: bool = True):
        self.url = url
        self.pool_size = pool_size
        self.migrate = migrate
        self._pool: asyncpg.Pool | None = None
        self._indexing: list[ExtendedTag] | None = None  # the tags stores index, as last read
        self._documents = pg_commit.Documents()

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=10,
                command_timeout=300,
                reset=_keep_session,
            )
        except UNAVAILABLE as exc:
            raise Unavailable("index", f"cannot connect to PostgreSQL: {exc}") from exc
        current = await self.upgrade() if self.migrate else await self.version()
        if current != migrations.latest(ENGINE):
            raise Unavailable(
                "index",
                f"schema version {current}, this dicomhub needs {migrations.latest(ENGINE)}: "
                "run `dicomhub db upgrade`",
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def check(self) -> None:
        await self._read(st.single, st.one("SELECT 1"))

    # -- migrations ----------------------------------------------------------------------------

    async def version(self) -> int:
        async with self._connection() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            if not exists:
                return 0
            return await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")

    async def upgrade(self) -> int:
        """Apply the pending migrations, all in one transaction; returns the schema version."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if current > migrations.latest(ENGINE):
                raise Unavailable("index", f"schema version {current} is newer than this dicomhub")
            pending = [(n, sql) for n, sql in migrations.scripts(ENGINE) if n > current]
            for number, sql in pending:
                log.info("index: applying migration %d", number)
                await conn.execute(sql)
            if migrations.needs_rebuild(current, ENGINE):
                await _drive(conn, ops.rebuild_search())
            await conn.executemany(
                "INSERT INTO schema_version (version) VALUES ($1)", [(n,) for n, _ in pending]
            )
            return migrations.latest(ENGINE) if pending else current

    # -- store and reindex ---------------------------------------------------------------------

    async def commit(self, version: int, instance: NewInstance) -> None:
        await pg_commit.commit(
            self._statement, self._indexing_tags, self._documents, version, instance
        )

    async def commit_each(self, stores: list[tuple[int, NewInstance]]) -> list[Exception | None]:
        """All in one statement (pg_commit.commit_each); when the database fails it, every
        store fails with it (none is committed)."""
        try:
            if len(stores) == 1:
                await self.commit(*stores[0])
                return [None]
            return await pg_commit.commit_each(
                self._statement, self._indexing_tags, self._documents, stores, self.commit
            )
        except Exception as exc:  # noqa: BLE001 - the outcome of each store
            return [exc] * len(stores)

    async def _indexing_tags(self, fresh: bool) -> list[ExtendedTag]:
        """The extended query tags stores index, read when they were found to have changed
        (dicomhub_store checks them in its transaction)."""
        if fresh or self._indexing is None:
            self._indexing = await self._read(eqt.indexing)
        return self._indexing

    async def settled_version(self) -> int:
        """A store reads the tags after its first write, so a store that did not see a tag
        added before this call got its transaction id before this call: below ``horizon``, an
        id given out now. Wait until no transaction below it is running. (A snapshot's oldest
        running id counts only ids below the newest ended transaction, which the horizon's
        own is once it has ended; its upper bound, xmax, is no horizon: a transaction newer
        than every ended one may be running above it.)"""
        horizon = (await self._write(st.single, st.one(NEW_XID)))[0]
        while (await self._read(st.single, st.one(OLDEST_XID)))[0] < horizon:
            await asyncio.sleep(SETTLE_POLL)
        return await super().settled_version()

    # -- drivers -------------------------------------------------------------------------------

    async def _read(self, op: OpFactory, *args: Any, snapshot: bool = False) -> Any:
        async with self._connection() as conn:
            if not snapshot:
                return await _drive(conn, op(*args))
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await _drive(conn, op(*args))

    async def _write(self, op: OpFactory, *args: Any) -> Any:
        unsynced = getattr(op, "unsynced", False)

        async def run() -> Any:
            async with self._connection() as conn, conn.transaction():
                if unsynced:  # statements.unsynced: a crash may undo it, at no cost
                    await conn.execute("SET LOCAL synchronous_commit = off")
                return await _drive(conn, op(*args))

        return await _retrying(run)

    async def _statement(self, sql: str, *args: Any) -> Any:
        """Run one statement as a transaction of its own: one round trip; its value."""

        async def run() -> Any:
            async with self._connection() as conn:
                return await conn.fetchval(sql, *args)

        return await _retrying(run)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; losing the server is Unavailable (503), anything else a bug."""
        try:
            conn = await self._pool.acquire(timeout=10)
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        try:
            yield conn
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        finally:
            await self._pool.release(conn)


async def _retrying(run: Callable[[], Awaitable[Any]]) -> Any:
    """``run()``, again from the start when PostgreSQL aborted its transaction for a conflict."""
    for attempt in range(RETRIES):
        try:
            return await run()
        except RETRYABLE:
            if attempt == RETRIES - 1:
                raise
            await asyncio.sleep(0.01 * 2**attempt)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond rolling back an open transaction:
    nothing. The index never changes a session's state (no SET, LISTEN, cursors or session
    locks), and asyncpg's default reset costs a round trip per operation."""


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable("index", str(exc) or type(exc).__name__)


async def _drive(conn: asyncpg.Connection, op: st.Op) -> Any:
    async def execute(stmt: st.Stmt) -> Any:
        sql = numbered(stmt.sql)
        if stmt.fetch == "many":
            return await conn.executemany(sql, stmt.params)
        if stmt.fetch == "one":
            return await conn.fetchrow(sql, *stmt.params)
        if stmt.fetch == "all":
            return await conn.fetch(sql, *stmt.params)
        return await conn.execute(sql, *stmt.params)

    return await st.drive_async(execute, op)


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``?`` parameters as PostgreSQL's ``$1, $2, ...`` (none of our SQL has ``?`` in quotes)."""
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]
