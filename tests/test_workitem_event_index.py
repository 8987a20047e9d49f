"""The index's UPS subscriptions and event queues (storage/workitem_event_ops.py) on SQLite and
PostgreSQL: reports are queued with a change only for the workitem's subscribers, numbered per
subscriber; delivered ones leave the queue; undelivered ones are purged after the retention."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from dicomhub.clock import utcnow
from tests.conftest import index_database
from tests.test_workitem_index import open_index

DATASET = json.dumps({"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}})


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_queues_acknowledgements_and_retention(engine, tmp_path):
    with index_database(engine) as url:

        async def run():
            index = open_index(engine, url, tmp_path)
            await index.start()
            try:
                now = utcnow()
                assert not await index.subscribe_workitem("AE1", "1.2.5", False, now)
                await index.add_workitem("1.2.5", "SCHEDULED", DATASET, [], now, ["created"])
                assert await index.subscribe_all("AE2", "1.2.840.10008.5.1.4.34.5", True, None, now)
                assert await index.subscribe_workitem("AE1", "1.2.5", True, now)
                assert await index.workitem_subscribers("1.2.5") == 2
                await index.add_workitem("1.2.6", "SCHEDULED", DATASET, [], now, ["created"])
                item = await index.workitem("1.2.5")
                await index.replace_workitem(
                    "1.2.5",
                    item.revision,
                    "SCHEDULED",
                    "SCHEDULED",
                    None,
                    DATASET,
                    [],
                    now,
                    ["a", "b"],
                )
                one = await index.pending_workitem_events("AE1", 0, 10)
                two = await index.pending_workitem_events("AE2", 0, 10)
                await index.acknowledge_workitem_events("AE2", 2)
                after_ack = await index.pending_workitem_events("AE2", 0, 10)
                await index.purge_workitem_events(now - timedelta(days=1))  # too old: none
                kept = await index.pending_workitem_events("AE1", 0, 10)
                await index.purge_workitem_events(now + timedelta(seconds=1))
                purged = await index.pending_workitem_events("AE1", 0, 10)
                return one, two, after_ack, kept, purged
            finally:
                await index.close()

        one, two, after_ack, kept, purged = asyncio.run(run())
    # AE1: its initial report, then the change's two; AE2 (global, existing workitem 1.2.5):
    # its initial report, the creation of 1.2.6, then the change's two
    assert [n for n, _ in one] == [1, 2, 3] and [t for _, t in one][1:] == ["a", "b"]
    assert [(n, t) for n, t in two][1:] == [(2, "created"), (3, "a"), (4, "b")]
    assert [n for n, _ in after_ack] == [3, 4]
    assert kept == one and purged == []


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_status_change_reaches_every_subscriber_once(engine, tmp_path):
    """The SCP Status Change of a node's start: one report to each AE title holding a global
    subscription or one to a workitem (an AE title with both: once), numbered after its
    queue; nobody else."""
    with index_database(engine) as url:

        async def run():
            index = open_index(engine, url, tmp_path)
            await index.start()
            try:
                now = utcnow()
                assert await index.report_to_every_subscriber("none", now) == 0
                await index.add_workitem("1.2.7", "SCHEDULED", DATASET, [], now, ["created"])
                assert await index.subscribe_workitem("AE1", "1.2.7", False, now)
                assert await index.subscribe_all(
                    "AE2", "1.2.840.10008.5.1.4.34.5", False, None, now
                )
                assert await index.subscribe_workitem("AE2", "1.2.7", False, now)
                assert await index.subscribe_workitem("AE3", "1.2.7", False, now)
                assert await index.unsubscribe_workitem("AE3", "1.2.7")  # no longer subscribed
                sent = await index.report_to_every_subscriber("restarted", now)
                queues = [await index.pending_workitem_events(ae, 0, 10) for ae in AES]
                return sent, queues
            finally:
                await index.close()

        sent, (ae1, ae2, ae3) = asyncio.run(run())
    assert sent == 2
    # AE1: its initial report, then this; AE2: two initial reports (global, then the
    # workitem's), then this once; AE3 unsubscribed: nothing queued
    assert ae1[-1] == (2, "restarted") and ae2[-1] == (3, "restarted")
    assert [t for _, t in ae2].count("restarted") == 1 and ae3 == []


AES = ("AE1", "AE2", "AE3")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_subscribers_are_each_partitions(engine, tmp_path):
    """One workitem UID in two partitions, one AE title subscribed globally in both: each
    partition's reports go to its own queue, numbered apart; acknowledging, suspending and
    unsubscribing in one leave the other; the status change reaches both."""
    with index_database(engine) as url:

        async def run():
            index = open_index(engine, url, tmp_path)
            await index.start()
            try:
                now, all_ = utcnow(), "1.2.840.10008.5.1.4.34.5"
                for p in ("Microsoft.Default", "p2"):
                    await index.add_workitem("1.2.7", "SCHEDULED", DATASET, [], now, [], p)
                assert await index.subscribe_all("AE", all_, False, None, now, "p2") == 1
                await index.add_workitem("1.2.8", "SCHEDULED", DATASET, [], now, ["new"])
                await index.add_workitem("1.2.8", "SCHEDULED", DATASET, [], now, ["new"], "p2")
                assert await index.workitem_subscribers("1.2.8") == 0
                assert await index.workitem_subscribers("1.2.8", "p2") == 1
                p2 = await index.pending_workitem_events("AE", 0, 10, "p2")
                default = await index.pending_workitem_events("AE", 0, 10)
                assert not await index.suspend_global_subscription("AE")
                assert not await index.unsubscribe_all("AE")
                assert await index.subscribe_workitem("AE", "1.2.7", False, now)
                await index.acknowledge_workitem_events("AE", 1)
                kept = await index.pending_workitem_events("AE", 0, 10, "p2")
                assert await index.report_to_every_subscriber("restart", now) == 2
                both = (
                    await index.pending_workitem_events("AE", 0, 10),
                    await index.pending_workitem_events("AE", 0, 10, "p2"),
                )
                assert await index.suspend_global_subscription("AE", "p2")
                assert await index.unsubscribe_all("AE", "p2")
                gone = await index.pending_workitem_events("AE", 0, 10, "p2")
                left = await index.pending_workitem_events("AE", 0, 10)
                return p2, default, kept, both, gone, left
            finally:
                await index.close()

        p2, default, kept, both, gone, left = asyncio.run(run())
    assert [(n, text) for n, text in p2][1:] == [(2, "new")]  # after 1.2.7's initial report
    assert p2[0][0] == 1 and default == []
    assert [n for n, _ in kept] == [1, 2]  # the default partition's acknowledgement: not p2's
    assert [text for _, text in both[0]] == ["restart"]
    assert [text for _, text in both[1]][-1] == "restart" and len(both[1]) == 3
    assert gone == [] and [text for _, text in left] == ["restart"]
