"""The store's commit on PostgreSQL: one statement (storage/pg_commit.py, dicomhub_store) that
leaves the index exactly as the commit of every other engine does (SQLite's here), in at most
3 round trips to PostgreSQL, counted on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import pytest

from dicomhub.dicom import extended_tags as et
from dicomhub.errors import AlreadyExists
from dicomhub.model import NewInstance
from dicomhub.storage.postgres_index import PostgresIndex
from dicomhub.storage.urls import open_index
from tests import components
from tests.conftest import index_database
from tests.synthetic import instance, uid
from tests.test_extended_tags import TAGS, with_private
from tests.test_index_contract import new_instance, store

# What the two engines may differ in: keys given out in another order, clocks.
UNCOMPARED = {"created", "timestamp", "id"}
TABLES = [
    "study",
    "series",
    "instance",
    "person_name_word",
    "series_request",
    "changefeed",
    "extended_query_tag_study",
    "extended_query_tag_series",
    "extended_query_tag_instance",
    "extended_query_tag_error",
    "kept_blob",
]


def items() -> list[NewInstance]:
    """New studies and series, repeated and differing study and series documents (merged),
    names (words), request items, values of extended query tags at every level, an invalid
    one, and a newer instance's study value replacing an older one's."""
    specs = [
        (
            1,
            1,
            1,
            dict(
                PatientName="Doe^Jane",
                PatientWeight="70.5",
                BodyPartExamined="CHEST",
                OperatorsName="Smith^Anna",
                AcquisitionDate="20200105",
            ),
        ),
        (
            1,
            1,
            2,
            dict(
                PatientName="Doe^Jane",
                PatientWeight="70.5",
                BodyPartExamined="CHEST",
                OperatorsName="Smith^Anna",
                AcquisitionDate="20200106",
            ),
        ),
        (
            1,
            1,
            3,
            dict(
                PatientName="Doe^Jane",
                StudyDescription="Chest",
                PatientWeight="71",
                BodyPartExamined="chest",
                SeriesDescription="late",
            ),
        ),
        (
            1,
            2,
            1,
            dict(
                PatientName="Doe^J",
                ReferringPhysicianName="Who^Doctor",
                RequestAttributesSequence=[
                    {"ScheduledProcedureStepID": "S1", "RequestedProcedureID": "R1"},
                    {"ScheduledProcedureStepID": "S2"},
                ],
            ),
        ),
        (
            1,
            2,
            2,
            dict(
                PatientName="Doe^J",
                RequestAttributesSequence=[
                    {"ScheduledProcedureStepID": "S3", "RequestedProcedureID": "R3"}
                ],
            ),
        ),
        (2, 1, 1, dict(PatientName="Roe^Richard", PatientAge="045Y", ProtocolName="Head")),
        (2, 1, 2, dict(PatientName="Roe^Richard", PatientAge="045Y", AcquisitionDate="2020")),
    ]
    out = []
    for study, series, sop, attrs in specs:
        ids = uid(90, study), uid(90, study, series), uid(90, study, series, sop)
        data = instance(*ids, **attrs)
        data = with_private(data, "ACME 1.0", f"SCANNER-{sop % 2}")
        record = new_instance(data)
        # every other one's file kept by the index: in the commit's statement on PostgreSQL
        out.append(dataclasses.replace(record, blob=data) if sop % 2 else record)
    return out


async def fill(url: str, together: bool = False) -> None:
    """Add the tags (not ready: stores index tags being added too), then store, in order: one
    commit at a time, or ``together``, all in one ``commit_each`` with an instance already
    stored and a store abandoned among them."""
    index = open_index(url)
    await index.start()
    try:
        tags = [et.parse_new(t, frozenset()) for t in TAGS]
        await index.add_extended_tags(tags, 100, "op", datetime.now(UTC), 1)
        if together:
            stores = items()
            stores[3:3] = [stores[0], items()[5]]  # a second copy, and one abandoned
            versions = await index.reserve_versions("Microsoft.Default", len(stores))
            assert await index.abandon(versions[4])
            outcomes = await index.commit_each(list(zip(versions, stores, strict=True)))
            assert [type(o).__name__ for o in outcomes[3:5]] == [
                "AlreadyExists",
                "StoreAbandoned",
            ]
            assert outcomes[:3] + outcomes[5:] == [None] * (len(stores) - 2), outcomes
        for item in [] if together else items():
            [version] = await index.reserve_versions(item.id.partition, 1)
            await index.commit(version, item)
        [version] = await index.reserve_versions("Microsoft.Default", 1)
        with pytest.raises(AlreadyExists):
            await index.commit(version, items()[0])
        await index.changefeed(0, 100, True)  # numbers the entries (PostgreSQL)
    finally:
        await index.close()


def comparable(tables: dict[str, list[dict]]) -> dict[str, list]:
    """The rows of each table, sorted, study and series keys replaced by their UIDs (a commit
    retried after a conflict leaves a key unused on PostgreSQL)."""
    studies = {r["study_key"]: r["study_uid"] for r in tables["study"]}
    series = {r["series_key"]: r["series_uid"] for r in tables["series"]}
    owners = {"extended_query_tag_study": studies, "extended_query_tag_series": series}
    out = {}
    for table, rows in tables.items():
        keys = {"study_key": studies, "series_key": series, "owner_key": owners.get(table, {})}
        rows = [
            {k: keys[k].get(v, v) if k in keys else v for k, v in r.items() if k not in UNCOMPARED}
            for r in rows
        ]
        out[table] = sorted(rows, key=repr)
    return out


def sqlite_tables(path) -> dict:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return comparable(
            {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")] for t in TABLES}
        )
    finally:
        conn.close()


async def postgres_tables(url: str) -> dict:
    conn = await asyncpg.connect(url)
    try:
        return comparable(
            {t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t}")] for t in TABLES}
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("together", [False, True], ids=["one by one", "together"])
def test_the_commit_leaves_the_index_as_on_sqlite(tmp_path, together):
    path = tmp_path / "index.sqlite"
    asyncio.run(fill(f"sqlite://{path}", together))
    expected = sqlite_tables(path)
    with index_database("postgresql") as url:
        asyncio.run(fill(url, together))
        found = asyncio.run(postgres_tables(url))
    assert expected["extended_query_tag_error"] and expected["person_name_word"]
    assert expected["series_request"] and expected["extended_query_tag_study"]
    assert expected["kept_blob"] and len(expected["kept_blob"]) < len(expected["instance"])
    for table in TABLES:
        assert found[table] == expected[table], table


@contextlib.contextmanager
def relayed_database():
    """A fresh database, and its URL through a relay that counts round trips."""
    with index_database("postgresql") as url:
        pg = urlsplit(url)
        relay = components.TcpProxy(pg.hostname, pg.port)
        try:
            yield (
                url,
                relay,
                url.replace(f"@{pg.netloc.split('@')[1]}/", f"@127.0.0.1:{relay.port}/"),
            )
        finally:
            relay.close()


def test_a_store_costs_at_most_3_round_trips():
    """Counted on a relay between the index and PostgreSQL: the commit of a store into a new
    study, a new series, an existing series, one whose study document must be merged with a
    different one, one into a study whose document another node changed, and the first after
    another node added an extended query tag (versions are reserved a block at a time, one round
    trip per block)."""
    with relayed_database() as (url, relay, relayed):

        async def run() -> dict[str, int]:
            index = PostgresIndex(relayed, pool_size=1)  # one connection: statements prepared
            other = open_index(url)
            await index.start()
            await other.start()
            try:
                versions = iter(await index.reserve_versions("Microsoft.Default", 10))
                counted = {}

                async def count(case: str, data: bytes) -> None:
                    version, before = next(versions), relay.round_trips
                    await index.commit(version, new_instance(data))
                    counted[case] = relay.round_trips - before

                await count("warm-up", instance(uid(91), uid(91, 1), uid(91, 1, 1)))
                await count("new study", instance(uid(92), uid(92, 1), uid(92, 1, 1)))
                await count("new series", instance(uid(92), uid(92, 2), uid(92, 2, 1)))
                await count("existing series", instance(uid(92), uid(92, 2), uid(92, 2, 2)))
                await count(
                    "merged study",
                    instance(uid(92), uid(92, 2), uid(92, 2, 3), StudyDescription="one"),
                )
                await store(
                    other,
                    new_instance(
                        instance(uid(92), uid(92, 3), uid(92, 3, 1), StudyDescription="two")
                    ),
                )
                await count("changed by another node", instance(uid(92), uid(92, 2), uid(92, 2, 5)))
                tag = et.parse_new({"path": "AcquisitionDate", "level": "Instance"}, frozenset())
                await other.add_extended_tags([tag], 10, "op", datetime.now(UTC), 1)
                await count(
                    "tags changed",
                    instance(uid(92), uid(92, 2), uid(92, 2, 4), AcquisitionDate="20200101"),
                )
                return counted
            finally:
                await index.close()
                await other.close()

        counted = asyncio.run(run())
    del counted["warm-up"]
    assert all(n <= 3 for n in counted.values()), counted
    assert counted["existing series"] == counted["merged study"] == 1, counted
    assert counted["changed by another node"] == 2 and counted["tags changed"] == 3, counted


def test_stores_ready_together_commit_in_one_round_trip():
    """commit_each: new studies and series, merged documents, an instance stored already, all
    in one statement; a store into a study another node changed meanwhile is committed again
    on its own (two more round trips), the others are not."""
    with relayed_database() as (url, relay, relayed):

        async def run() -> tuple[int, int, list]:
            index = PostgresIndex(relayed, pool_size=1)
            other = open_index(url)
            await index.start()
            await other.start()
            try:
                versions = iter(await index.reserve_versions("Microsoft.Default", 20))

                async def together(*specs) -> tuple[int, list]:
                    stores = [
                        (next(versions), new_instance(instance(*s[:3], **s[3]))) for s in specs
                    ]
                    before = relay.round_trips
                    outcomes = await index.commit_each(stores)
                    return relay.round_trips - before, [type(o).__name__ for o in outcomes]

                ids = lambda st, se, sop: (uid(93, st), uid(93, st, se), uid(93, st, se, sop))  # noqa: E731
                await together((*ids(9, 1, 1), {}), (*ids(9, 1, 2), {}))  # statements prepared
                await together((*ids(9, 1, 3), {}))
                first = await together(
                    (*ids(1, 1, 1), {"StudyDescription": "one"}),
                    (*ids(1, 1, 2), {"StudyDescription": "two"}),
                    (*ids(1, 2, 1), {}),
                    (*ids(2, 1, 1), {}),
                    (*ids(9, 1, 1), {}),  # stored already
                )
                await store(other, new_instance(instance(*ids(1, 3, 1), StudyDescription="x")))
                second = await together((*ids(2, 1, 2), {}), (*ids(1, 1, 3), {}))
                conn = await asyncpg.connect(url)
                study = await conn.fetchrow(
                    "SELECT instance_count, series_count, study_description FROM study"
                    " WHERE study_uid = $1",
                    uid(93, 1),
                )
                await conn.close()
                return first, second, tuple(study)
            finally:
                await index.close()
                await other.close()

        first, second, study = asyncio.run(run())
    assert first == (1, ["NoneType"] * 4 + ["AlreadyExists"]), first
    assert second == (3, ["NoneType", "NoneType"]), second
    assert study == (5, 3, "x"), study  # merged into what the other node stored
