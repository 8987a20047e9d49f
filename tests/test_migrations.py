"""A database built by the migrations equals the declared schema, on every engine; an index
refuses a schema newer than it knows; ``dicomhub db upgrade`` applies what is pending."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys

import asyncpg
import pytest

from dicomhub.errors import Unavailable
from dicomhub.storage import migrations
from dicomhub.storage.postgres_index import PostgresIndex
from dicomhub.storage.sqlite_index import SqliteIndex
from tests.conftest import ROOT, index_database


def sqlite_structure(path) -> dict:
    conn = sqlite3.connect(path)
    out = {}
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for name, sql in tables:
        columns = {tuple(r[1:]) for r in conn.execute(f"PRAGMA table_xinfo({name})")}
        indexes = set()
        for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({name})"):
            cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})"))
            # automatic indexes of UNIQUE constraints are named by their place in the DDL
            indexes.add((index if origin == "c" else origin, unique, cols, partial))
        keys = {tuple(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({name})")}
        out[name] = (columns, indexes, keys, "AUTOINCREMENT" in sql.upper())
    conn.close()
    return out


def test_sqlite_migrations_build_the_declared_schema(tmp_path):
    async def migrate():
        index = SqliteIndex(str(tmp_path / "migrated.sqlite"))
        await index.start()
        await index.close()

    asyncio.run(migrate())
    declared = sqlite3.connect(tmp_path / "declared.sqlite")
    declared.executescript(migrations.declared_schema("sqlite"))
    declared.close()
    migrated = sqlite_structure(tmp_path / "migrated.sqlite")
    assert migrated == sqlite_structure(tmp_path / "declared.sqlite")
    assert {"study", "series", "instance", "changefeed", "blob_upload"} <= set(migrated)


PG_STRUCTURE = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, collation_name,
            is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = 'public'""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public'""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'""",
}


async def pg_structure(url: str) -> dict:
    conn = await asyncpg.connect(url)
    try:
        return {k: {tuple(r) for r in await conn.fetch(sql)} for k, sql in PG_STRUCTURE.items()}
    finally:
        await conn.close()


def test_postgresql_migrations_build_the_declared_schema():
    with (
        index_database("postgresql", migrated=False) as migrated_url,
        index_database("postgresql", migrated=False) as declared,
    ):

        async def run():
            index = PostgresIndex(migrated_url)
            await index.start()
            await index.close()
            conn = await asyncpg.connect(declared)
            await conn.execute(migrations.declared_schema("postgresql"))
            await conn.close()
            return await pg_structure(migrated_url), await pg_structure(declared)

        migrated, expected = asyncio.run(run())
    assert migrated == expected
    assert any(row[0] == "blob_upload" for row in migrated["columns"])
    assert any(row[0] == "dicomhub_number_changes" for row in migrated["functions"])


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "index.sqlite"
    asyncio.run(_start_and_close(SqliteIndex(str(path))))
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (9999)")
    with pytest.raises(Unavailable, match="newer"):
        asyncio.run(_start_and_close(SqliteIndex(str(path))))


def test_db_upgrade_command_and_start_without_migrating():
    with index_database("postgresql", migrated=False) as url:
        with pytest.raises(Unavailable, match="db upgrade"):
            asyncio.run(_start_and_close(PostgresIndex(url, migrate=False)))
        done = subprocess.run(
            [sys.executable, "-m", "dicomhub", "db", "upgrade", "--index-url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "up to date" in done.stdout and "postgres:postgres" not in done.stdout
        asyncio.run(_start_and_close(PostgresIndex(url, migrate=False)))  # now it starts


async def _start_and_close(index) -> None:
    await index.start()
    await index.close()


def test_change_feed_entries_keep_their_numbers_across_the_upgrade():
    """PostgreSQL: entries numbered before migration 6 (numbered as written, with a gap where a
    write failed) keep their numbers; the next entry follows the last."""
    from tests.synthetic import instance, uid
    from tests.test_index_contract import new_instance, store

    with index_database("postgresql", migrated=False) as url:

        async def run():
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
                for number, sql in migrations.scripts("postgresql"):
                    if number <= 5:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
                await conn.executemany(
                    "INSERT INTO changefeed (sequence, timestamp, action, partition_name, "
                    "study_uid, series_uid, sop_uid, version) VALUES ($1, $1, 0, 'p', 's', "
                    "'se', $2, $1)",
                    [(1, "a"), (2, "b"), (4, "c")],
                )
            finally:
                await conn.close()
            index = PostgresIndex(url)
            await index.start()
            try:
                await store(index, new_instance(instance(uid(6), uid(6, 1), uid(6, 1, 1))))
                return [(e.sequence, e.id.sop) for e in await index.changefeed(0, 10, True)]
            finally:
                await index.close()

        feed = asyncio.run(run())
    assert feed == [(1, "a"), (2, "b"), (4, "c"), (5, uid(6, 1, 1))]


STALE, FRESH = "STALE", "FRESH"  # a study row's patient_id, and what its instance's metadata says


def _rows() -> list[tuple[str, dict]]:
    """One study, series and instance, as rows (a schema version takes the columns it has)."""
    from tests.synthetic import instance, uid
    from tests.test_index_contract import new_instance

    item = new_instance(instance(uid(8), uid(8, 1), uid(8, 1, 1), PatientID=FRESH))
    return [
        (
            "study",
            {
                "study_key": 1,
                "partition_name": item.id.partition,
                "study_uid": uid(8),
                "patient_id": STALE,
                "instance_count": 1,
                "series_count": 1,
            },
        ),
        ("series", {"series_key": 1, "study_key": 1, "series_uid": uid(8, 1), "instance_count": 1}),
        (
            "instance",
            {
                "version": 1,
                "series_key": 1,
                "sop_uid": uid(8, 1, 1),
                "status": 1,
                "created": 0,
                "metadata": item.metadata,
                "size": 1,
            },
        ),
    ]


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_an_upgrade_rebuilds_search_data_only_across_a_migration_that_needs_it(engine, tmp_path):
    """From every earlier schema version, with data in it: the search data is derived anew from
    the stored metadata only when a migration in between changed it (SQLite's 2), never on
    PostgreSQL, whose migration numbers mean other things."""
    for start in range(1, migrations.latest(engine)):
        rows = _rows()
        if engine == "sqlite":
            path = tmp_path / f"v{start}.sqlite"
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for number, sql in migrations.scripts("sqlite")[:start]:
                conn.executescript(sql)
                conn.execute("INSERT INTO schema_version VALUES (?)", (number,))

            for table, values in rows:
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                names = [c for c in values if c in have]
                marks = ", ".join("?" * len(names))
                conn.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",
                    [values[c] for c in names],
                )
            conn.commit()
            conn.close()
            asyncio.run(_start_and_close(SqliteIndex(str(path))))
            conn = sqlite3.connect(path)
            found = conn.execute("SELECT patient_id FROM study").fetchone()[0]
            conn.close()
        else:
            with index_database("postgresql", migrated=False) as url:
                found = asyncio.run(_postgres_upgrade(url, start, rows))
        expected = FRESH if engine == "sqlite" and start < 2 else STALE  # SQLite's 2 added them
        assert found == expected, (engine, start)


async def _postgres_upgrade(url: str, start: int, rows) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for number, sql in migrations.scripts("postgresql")[:start]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
        for table, values in rows:
            have = {
                r[0]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                    table,
                )
            }
            names = [c for c in values if c in have]
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                f"({', '.join(f'${i + 1}' for i in range(len(names)))})",
                *[values[c] for c in names],
            )
    finally:
        await conn.close()
    await _start_and_close(PostgresIndex(url))
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT patient_id FROM study")
    finally:
        await conn.close()
