"""The index's workitems (storage/workitem_ops.py) on SQLite and PostgreSQL: a change is one
conditional write, so of concurrent changes decided on one revision exactly one is written; a
second creation of one UID is refused; search values are replaced with the workitem."""

from __future__ import annotations

import asyncio

import pytest

from dicomhub.clock import utcnow
from dicomhub.dicom.workitem_query import parse
from dicomhub.errors import WorkitemConflict
from dicomhub.storage.postgres_index import PostgresIndex
from dicomhub.storage.sqlite_index import SqliteIndex
from tests.conftest import index_database

LOCKS = ["1.2.990.1", "1.2.990.2", "1.2.990.3", "1.2.990.4"]


def open_index(engine: str, url: str, tmp_path):
    if engine == "sqlite":
        return SqliteIndex(str(tmp_path / "index.sqlite"))
    return PostgresIndex(url)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_index_writes_a_change_only_on_the_revision_it_was_decided_on(engine, tmp_path):
    """replace_workitem is one conditional write: of changes decided on one revision, run
    together, exactly one is written; the workitem then holds the winner's lock."""
    with index_database(engine) as url:

        async def run():
            index = open_index(engine, url, tmp_path)
            await index.start()
            try:
                values = [("00100020", 0, "P1"), ("0040A370.00080050", 1, "ACC")]
                await index.add_workitem("1.2.3", "SCHEDULED", "{}", values, utcnow(), [])
                item = await index.workitem("1.2.3")
                claims = [
                    index.replace_workitem(
                        "1.2.3",
                        item.revision,
                        "SCHEDULED",
                        "IN PROGRESS",
                        lock,
                        "{}",
                        values,
                        utcnow(),
                        [],
                    )
                    for lock in LOCKS
                ]
                written = await asyncio.gather(*claims)
                return written, await index.workitem("1.2.3")
            finally:
                await index.close()

        written, after = asyncio.run(run())
    assert sorted(written) == [False, False, False, True]
    assert after.state == "IN PROGRESS" and after.revision == 2
    assert after.lock == LOCKS[written.index(True)]


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_one_creation_per_uid_and_values_follow_the_workitem(engine, tmp_path):
    with index_database(engine) as url:

        async def run():
            index = open_index(engine, url, tmp_path)
            await index.start()
            try:
                await index.add_workitem(
                    "1.2.4", "SCHEDULED", "{}", [("00100020", 0, "P1")], utcnow(), []
                )
                with pytest.raises(WorkitemConflict) as refused:
                    await index.add_workitem("1.2.4", "SCHEDULED", "{}", [], utcnow(), [])
                assert refused.value.code == "0111"
                found = [await index.search_workitems(parse([("PatientID", "P1")]))]
                item = await index.workitem("1.2.4")
                assert await index.replace_workitem(
                    "1.2.4",
                    item.revision,
                    "SCHEDULED",
                    "SCHEDULED",
                    None,
                    '{"a":1}',
                    [("00100020", 0, "P2")],
                    utcnow(),
                    [],
                )
                # a change decided on a state the workitem is no longer in is not written
                assert not await index.replace_workitem(
                    "1.2.4",
                    item.revision + 1,
                    "IN PROGRESS",
                    "COMPLETED",
                    None,
                    "{}",
                    [],
                    utcnow(),
                    [],
                )
                found.append(await index.search_workitems(parse([("PatientID", "P1")])))
                found.append(await index.search_workitems(parse([("PatientID", "P2")])))
                return found, await index.workitem("1.2.9")
            finally:
                await index.close()

        found, missing = asyncio.run(run())
    assert found == [["{}"], [], ['{"a":1}']]
    assert missing is None
