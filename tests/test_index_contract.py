"""The IndexStore contract where several nodes share one index: two index objects on one
database (one SQLite file, or one PostgreSQL database) stand for two nodes."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

import pytest

from dicomhub.archive.store import Commits, Versions
from dicomhub.clock import utcnow
from dicomhub.dicom.instance import ingest
from dicomhub.dicom.parse import read_part10
from dicomhub.errors import AlreadyExists
from dicomhub.model import InstanceId, NewInstance, Scope
from dicomhub.storage import statements as st
from dicomhub.storage import webhook_ops
from dicomhub.storage.sqlite_writer import WriterService
from dicomhub.storage.urls import open_index
from tests.conftest import index_database
from tests.synthetic import instance, uid


def new_instance(data: bytes) -> NewInstance:
    parsed = read_part10(io.BytesIO(data), len(data), 1024)
    return ingest(parsed, lambda o, n: data[o : o + n], 1024, False, None).record


@pytest.fixture(params=["sqlite", "sqlite-writer", "postgresql"])
def nodes(request, tmp_path):
    """Two index objects ("nodes") on one database; "sqlite-writer": two server processes of
    ``serve --workers``, whose writes go to the one writer (storage/sqlite_writer.py)."""
    kind = request.param.split("-")[0]
    with index_database(kind) as url:
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'index.sqlite'}"
        service = None
        if request.param == "sqlite-writer":
            service = WriterService(lambda: open_index(url))
            service.start()

        async def open_both():
            address = service.address if service else None
            a, b = open_index(url, sqlite_writer=address), open_index(url, sqlite_writer=address)
            await a.start()
            await b.start()
            return a, b

        try:
            yield url, open_both
        finally:
            if service is not None:
                service.stop()


# how a transaction commits: SQLite's synchronous (2 FULL, 1 NORMAL), PostgreSQL's
# synchronous_commit ("on", "off")
COMMIT_MODE = {"sqlite": "PRAGMA synchronous", "postgresql": "SHOW synchronous_commit"}


def _commit_mode(sql: str):
    return (yield st.one(sql))[0]


@st.unsynced  # as webhook delivery's records are
def _unsynced_commit_mode(sql: str):
    return (yield from _commit_mode(sql))


def test_unsynced_writes_alone_do_not_wait_for_the_disk(nodes, request):
    """A transaction of statements.unsynced writes alone commits without waiting for the disk
    (SQLite synchronous NORMAL, PostgreSQL synchronous_commit off): webhook delivery adds no
    flush to the writes ingest waits on. Beside another write in one batch (SQLite's group
    commit) it is synced; every other transaction is, before and after."""
    url, open_both = nodes
    sql = COMMIT_MODE[url.split(":")[0]]

    async def run():
        a, b = await open_both()
        try:
            alone = await a._write(_unsynced_commit_mode, sql)
            together = await asyncio.gather(
                a._write(_unsynced_commit_mode, sql), a._write(_commit_mode, sql)
            )
            return alone, together, await a._write(_commit_mode, sql)
        finally:
            await a.close()
            await b.close()

    alone, together, after = asyncio.run(run())
    if request.node.callspec.params["nodes"] == "sqlite-writer":
        # the two reach the writer service over a socket: in one batch or in two
        assert alone == 1 and together in ([1, 2], [2, 2]) and after == 2
    elif url.startswith("sqlite"):
        assert alone == 1 and together == [2, 2] and after == 2  # NORMAL, FULL
    else:  # one transaction each
        assert alone == "off" and together == ["off", "on"] and after == "on"
    assert all(getattr(webhook_ops, op).unsynced for op in ("claim", "delivered", "release"))


async def store(index, item: NewInstance) -> int:
    [version] = await index.reserve_versions(item.id.partition, 1)
    await index.commit(version, item)
    return version


def test_concurrent_stores_of_one_instance_one_wins(nodes):
    _, open_both = nodes
    item = new_instance(instance(uid(1), uid(1, 1), uid(1, 1, 1), PatientID="P1"))

    async def run():
        a, b = await open_both()
        try:
            p = item.id.partition
            # both start
            [va], [vb] = await a.reserve_versions(p, 1), await b.reserve_versions(p, 1)
            assert va != vb
            results = await asyncio.gather(
                a.commit(va, item), b.commit(vb, item), return_exceptions=True
            )
            found = await b.instances(Scope(item.id.study))
            loser = vb if results[0] is None else va
            # the loser abandons its store; its blob is queued for deletion
            assert await (b if loser == vb else a).abandon(loser) is True
            return results, found
        finally:
            await a.close()
            await b.close()

    results, found = asyncio.run(run())
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "NoneType"]
    assert len(found) == 1


def test_commit_each_fails_stores_alone_and_keeps_their_order(nodes):
    """Stores committed together: each one's outcome is its own (a duplicate or an abandoned
    store fails alone, the others are stored), and the change feed lists them in their order."""
    _, open_both = nodes
    items = [new_instance(instance(uid(6), uid(6, 1), uid(6, 1, n))) for n in range(3)]

    async def run():
        a, b = await open_both()
        try:
            p = items[0].id.partition
            versions = await a.reserve_versions(p, 5)
            assert await a.abandon(versions[3]) is True
            outcomes = await a.commit_each(
                [
                    (versions[0], items[0]),
                    (versions[1], items[0]),  # a duplicate of the first
                    (versions[2], items[1]),
                    (versions[3], items[2]),  # abandoned before
                    (versions[4], items[2]),
                ]
            )
            stored = await b.instances(Scope(items[0].id.study))
            feed = await b.changefeed(0, 100, by_sequence=True)
            left = await b.stale_uploads(utcnow() + timedelta(seconds=1))
            return versions, outcomes, stored, feed, left
        finally:
            await a.close()
            await b.close()

    versions, outcomes, stored, feed, left = asyncio.run(run())
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["NoneType", "AlreadyExists", "NoneType", "StoreAbandoned", "NoneType"]
    expected = [(items[0].id.sop, versions[0]), (items[1].id.sop, versions[2])]
    expected.append((items[2].id.sop, versions[4]))
    assert [(s.id.sop, s.version) for s in stored] == expected
    assert [e.id.sop for e in feed] == [sop for sop, _ in expected]
    assert {v for v, _ in left} == {versions[1]}  # the duplicate's store is still its to end


def test_a_request_commits_the_parts_ready_together_in_one_write(nodes):
    """The commits of one request's parts queued while the index is busy go in one index write,
    in the order queued; a duplicate among them fails alone."""
    _, open_both = nodes
    items = [new_instance(instance(uid(7), uid(7, 1), uid(7, 1, n))) for n in range(6)]
    items.insert(3, items[1])

    async def run():
        a, b = await open_both()
        batches = []
        real = a.commit_each

        async def counted(stores):
            batches.append(len(stores))
            return await real(stores)

        a.commit_each = counted
        try:
            versions = await a.reserve_versions(items[0].id.partition, len(items))
            commits = Commits(a)
            queued = [commits.queue(v, item) for v, item in zip(versions, items, strict=True)]
            outcomes = await asyncio.gather(*queued, return_exceptions=True)
            feed = await b.changefeed(0, 100, by_sequence=True)
            return batches, outcomes, feed
        finally:
            await a.close()
            await b.close()

    batches, outcomes, feed = asyncio.run(run())
    assert batches == [len(items)]
    assert [type(o).__name__ for o in outcomes] == ["NoneType"] * 3 + ["AlreadyExists"] + [
        "NoneType"
    ] * 3
    assert [e.id.sop for e in feed] == [i.id.sop for i in items[:3] + items[4:]]


def test_versions_are_reserved_in_blocks(nodes):
    """Each node reserves versions a block at a time: ascending, never shared, each an upload
    the cleanup job would abandon; a version committed for a stored instance is refused."""
    _, open_both = nodes
    item = new_instance(instance(uid(4), uid(4, 1), uid(4, 1, 1)))

    async def run():
        a, b = await open_both()
        try:
            first = await a.reserve_versions(item.id.partition, 5)
            second = await b.reserve_versions(item.id.partition, 5)
            pending = await a.stale_uploads(utcnow() + timedelta(seconds=1))
            await a.commit(first[0], item)
            with pytest.raises(AlreadyExists):
                await b.commit(second[0], item)
            left = await a.stale_uploads(utcnow() + timedelta(seconds=1))
            return first, second, pending, left
        finally:
            await a.close()
            await b.close()

    first, second, pending, left = asyncio.run(run())
    assert first == sorted(first) and second == sorted(second)
    assert len(set(first) | set(second)) == 10
    assert {v for v, _ in pending} == set(first) | set(second)
    # the committed version's upload is finished; the refused one is still the store's to end
    assert {v for v, _ in left} == (set(first) | set(second)) - {first[0]}


def test_an_aged_block_gives_back_its_unused_versions(nodes):
    """A node's block of versions is used only while young; the next block replaces it and the
    unused versions of the old one stop being uploads at once (the cleanup job, which may be
    busy or on a dead node, is not needed for them)."""
    _, open_both = nodes
    partition = InstanceId(uid(5), uid(5, 1), uid(5, 1, 1)).partition

    async def run():
        a, b = await open_both()
        try:
            versions = Versions(a, max_age=0.05, block=4)
            first = await versions.take(partition)
            await asyncio.sleep(0.1)
            second = await versions.take(partition)
            pending = {v for v, _ in await b.stale_uploads(utcnow() + timedelta(seconds=1))}
            await versions.release()
            left = {v for v, _ in await b.stale_uploads(utcnow() + timedelta(seconds=1))}
            return first, second, pending, left
        finally:
            await a.close()
            await b.close()

    first, second, pending, left = asyncio.run(run())
    assert second > first + 3  # a new block
    assert {first, second} <= pending  # taken ones stay the stores' to finish
    assert not {v for v in pending if first < v < second}  # the old block's rest is given back
    assert left == {first, second}


def test_one_ordered_change_feed_across_nodes(nodes):
    """Entries appear in sequence order: a reader following the feed while two nodes write
    never sees an entry appear behind one it has already read."""
    _, open_both = nodes
    items = [
        new_instance(instance(uid(2), uid(2, n % 3), uid(2, n % 3, n), PatientID=f"P{n % 4}"))
        for n in range(60)
    ]

    async def run():
        a, b = await open_both()
        seen: list[int] = []
        writing = True

        async def follow():
            while True:
                done = not writing
                for entry in await a.changefeed(seen[-1] if seen else 0, 100, by_sequence=True):
                    seen.append(entry.sequence)
                if done:
                    return

        async def write(index, part):
            for item in part:
                await store(index, item)

        reader = asyncio.create_task(follow())
        try:
            await asyncio.gather(write(a, items[0::2]), write(b, items[1::2]))
        finally:
            writing = False
        await reader
        everything = await b.changefeed(0, 1000, by_sequence=True)
        await a.close()
        await b.close()
        return seen, everything

    seen, everything = asyncio.run(run())
    assert [e.sequence for e in everything] == seen  # nothing was skipped while following
    assert seen == sorted(seen) and len(seen) == 60
    assert {e.id.sop for e in everything} == {i.id.sop for i in items}


def test_stale_uploads_are_abandoned_once(nodes):
    _, open_both = nodes
    item = new_instance(instance(uid(3), uid(3, 1), uid(3, 1, 1)))

    async def run():
        a, b = await open_both()
        try:
            [version] = await a.reserve_versions(item.id.partition, 1)
            stale = await b.stale_uploads(utcnow() + timedelta(seconds=1))
            fresh = await b.stale_uploads(utcnow() - timedelta(hours=1))
            assert await b.abandon(version) is True  # the cleanup job on node B
            with pytest.raises(Exception) as late:  # node A finishes too late
                await a.commit(version, item)
            due = await a.due_blob_deletions(utcnow() + timedelta(seconds=1), 10)
            return stale, fresh, late.value, due, await a.instances(Scope(item.id.study))
        finally:
            await a.close()
            await b.close()

    stale, fresh, late, due, found = asyncio.run(run())
    assert [v for v, _ in stale] == [stale[0][0]] and fresh == []
    assert "abandoned" in str(late) and not isinstance(late, AlreadyExists)
    assert len(due) == 1 and found == []


def test_a_change_feed_entry_is_never_overtaken():
    """PostgreSQL: a write that has written its change-feed entry and not committed yet holds
    nobody back, and readers do not see its entry until it commits; then it comes after every
    entry seen before, numbered without a gap. A write that began earlier (its transaction has
    the lower id) but wrote its entry after another write committed comes after that one: the
    other may be what it depends on (e.g. the delete of the instance it stores again)."""
    import asyncpg

    from dicomhub.storage.instance_ops import INSERT_CHANGE
    from dicomhub.storage.postgres_index import numbered

    items = [new_instance(instance(uid(4), uid(4, 1), uid(4, 1, n))) for n in range(3)]
    with index_database("postgresql") as url:

        async def run():
            node = open_index(url)
            await node.start()
            slow = await asyncpg.connect(url)
            try:
                await store(node, items[0])
                tx = slow.transaction()
                await tx.start()
                await slow.execute("SELECT pg_current_xact_id()")  # begins first (lower id)...
                await store(node, items[1])  # ...not held back by it
                await slow.execute(numbered(INSERT_CHANGE), 0, 0, "p", "1.2", "1.2.3", "1.2.3.4", 1)
                await store(node, items[2])
                seen = [(e.sequence, e.id.sop) for e in await node.changefeed(0, 10, True)]
                await tx.commit()  # ...and commits last
                return seen, [(e.sequence, e.id.sop) for e in await node.changefeed(0, 10, True)]
            finally:
                await slow.close()
                await node.close()

        seen, after = asyncio.run(run())
    sops = [i.id.sop for i in items]
    assert seen == [(1, sops[0]), (2, sops[1]), (3, sops[2])]
    assert after == [*seen, (4, "1.2.3.4")]


def test_concurrent_deletes_of_one_instance_remove_it_once():
    """PostgreSQL: two nodes that both found an instance to delete (a third transaction holds
    its row meanwhile) remove it once: one deletes it with its emptied series and study, the
    other then finds it gone; the feed and the blob queue have it once."""
    import asyncpg

    item = new_instance(instance(uid(5), uid(5, 1), uid(5, 1, 1)))
    with index_database("postgresql") as url:

        async def run():
            a, b = open_index(url), open_index(url)
            await a.start()
            await b.start()
            holder = await asyncpg.connect(url)
            try:
                version = await store(a, item)
                tx = holder.transaction()
                await tx.start()
                await holder.execute("SELECT FROM instance WHERE version = $1 FOR UPDATE", version)
                scope = Scope(uid(5), uid(5, 1), uid(5, 1, 1))
                deletes = [asyncio.create_task(n.delete(scope, utcnow())) for n in (a, b)]
                await asyncio.sleep(0.5)  # both have found the instance and wait
                await tx.commit()
                removed = sorted(await asyncio.gather(*deletes))
                feed = [e.action.name for e in await a.changefeed(0, 10, True)]
                left = await holder.fetchval("SELECT count(*) FROM series")
                queued = await a.due_blob_deletions(utcnow() + timedelta(seconds=1), 10)
                return removed, feed, left, len(queued)
            finally:
                await holder.close()
                await a.close()
                await b.close()

        removed, feed, left, queued = asyncio.run(run())
    assert removed == [0, 1]
    assert feed == ["CREATE", "DELETE"] and left == 0 and queued == 1


def test_a_reindex_covers_the_stores_running_when_a_tag_was_added():
    """PostgreSQL: settled_version (what a new tag's reindex covers) is read once every
    transaction that had begun writing when asked has ended (a store among them may not have
    seen the tag), and includes what they stored; a write begun later is not waited for."""
    import asyncpg

    items = [new_instance(instance(uid(7), uid(7, 1), uid(7, 1, n))) for n in range(2)]
    with index_database("postgresql") as url:

        async def run():
            node = open_index(url)
            await node.start()
            early, late = await asyncpg.connect(url), await asyncpg.connect(url)
            try:
                await store(node, items[0])
                running = early.transaction()
                await running.start()
                await early.execute("SELECT pg_current_xact_id()")  # has begun writing
                bound = asyncio.create_task(node.settled_version())
                await asyncio.sleep(0.5)
                waited = not bound.done()
                later = late.transaction()
                await later.start()
                await late.execute("SELECT pg_current_xact_id()")
                version = await store(node, items[1])
                await running.commit()
                settled = await asyncio.wait_for(bound, 10)  # while the later one still runs
                await later.rollback()
                return waited, settled, version
            finally:
                await early.close()
                await late.close()
                await node.close()

        waited, settled, version = asyncio.run(run())
    assert waited and settled == version
