"""UPS Watch and Event (PS3.18 11.10-11.14, PS3.4 CC.2.3): subscribe to one workitem or to
all of them (the Global Subscription, or the Filtered Global Subscription with the matching
keys of a search), unsubscribe, suspend a global subscription, and read a subscriber's queue
of event reports for its event channel.

A subscriber is an AE title in a data partition: subscriptions, global subscriptions and the
event channel are each partition's (``of``), so an AE title subscribed in two partitions has two
queues, and a partition's reports go to its own subscribers only.

Everything lives in the index (subscriptions, queues); no node keeps any of it in memory, so
a subscriber connected to any node and any server process gets the reports of changes made on
any other. Reports are delivered at least once, in sequence order; delivered ones leave the
queue, undelivered ones are kept ``RETENTION`` long.
"""

from __future__ import annotations

from datetime import timedelta

import orjson

from dicomhub.clock import utcnow
from dicomhub.dicom import workitem_events as wev
from dicomhub.dicom.json_model import compact
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import WorkitemConflict, WorkitemInvalid, WorkitemNotFound
from dicomhub.model import DEFAULT_PARTITION
from dicomhub.storage.protocols import WorkitemEvents

RETENTION = timedelta(days=30)  # reports never delivered are dropped after this long
BATCH = 100  # reports read from the queue at a time
UNKNOWN_SUBSCRIBER = "C308"  # PS3.4 CC.2.3: the receiving AE title is unknown to this SCP


class WorkitemEventService:
    def __init__(self, index: WorkitemEvents, partition: str = DEFAULT_PARTITION):
        self.index = index
        self.partition = partition  # the data partition of the subscribers and workitems

    def of(self, partition: str) -> WorkitemEventService:
        """The subscriptions and event channels of data ``partition``."""
        if partition == self.partition:
            return self
        return WorkitemEventService(self.index, partition)

    async def subscribe(
        self, uid: str, subscriber: str, deletion_lock: bool, filters: list[str]
    ) -> None:
        """Subscribe ``subscriber`` to workitem ``uid``, or to all of them when ``uid`` is the
        Global or Filtered Global Subscription UID. WorkitemInvalid (400) for a malformed
        request, WorkitemNotFound (404, C307) for an unknown workitem."""
        title = wev.subscriber(subscriber)
        uid = require_uid(uid, "workitem")
        if uid == wev.FILTERED_GLOBAL:
            params = wev.split_filter(filters)
            wev.filter_query(params)  # refused here when malformed
            await self.index.subscribe_all(
                title, uid, deletion_lock, params, utcnow(), self.partition
            )
            return
        if filters:
            raise WorkitemInvalid(
                "0106",
                f"a filter applies to the Filtered Global Subscription ({wev.FILTERED_GLOBAL})",
            )
        if uid == wev.GLOBAL:
            await self.index.subscribe_all(
                title, uid, deletion_lock, None, utcnow(), self.partition
            )
            return
        made = await self.index.subscribe_workitem(
            title, uid, deletion_lock, utcnow(), self.partition
        )
        if not made:
            raise WorkitemNotFound("C307", f"no workitem {uid}")

    async def unsubscribe(self, uid: str, subscriber: str) -> None:
        """Unsubscribe from one workitem, or (a global UID) from the global subscription and
        every workitem. WorkitemConflict (409, C308) when ``subscriber`` was not subscribed."""
        title = wev.subscriber(subscriber)
        uid = require_uid(uid, "workitem")
        if uid in (wev.GLOBAL, wev.FILTERED_GLOBAL):
            if not await self.index.unsubscribe_all(title, self.partition):
                raise _unknown(title, "has no subscription")
            return
        found = await self.index.unsubscribe_workitem(title, uid, self.partition)
        if found is None:
            raise WorkitemNotFound("C307", f"no workitem {uid}")
        if not found:
            raise _unknown(title, f"is not subscribed to workitem {uid}")

    async def suspend(self, uid: str, subscriber: str) -> None:
        """Suspend the global subscription: new workitems no longer get ``subscriber``."""
        title = wev.subscriber(subscriber)
        if require_uid(uid, "workitem") not in (wev.GLOBAL, wev.FILTERED_GLOBAL):
            raise WorkitemInvalid("0106", f"only a global subscription ({wev.GLOBAL}) is suspended")
        if not await self.index.suspend_global_subscription(title, self.partition):
            raise _unknown(title, "has no global subscription")

    # -- the event channel -------------------------------------------------------------------

    async def opened(self, subscriber: str) -> str:
        """The subscriber of a channel being opened (its AE title checked)."""
        return wev.subscriber(subscriber)

    async def pending(self, subscriber: str, after: int) -> list[tuple[int, bytes]]:
        """(sequence, DICOM JSON text) of the next reports numbered after ``after``."""
        found = await self.index.pending_workitem_events(subscriber, after, BATCH, self.partition)
        return [(n, orjson.dumps(wev.numbered(orjson.loads(text), n))) for n, text in found]

    async def delivered(self, subscriber: str, sequence: int) -> None:
        await self.index.acknowledge_workitem_events(subscriber, sequence, self.partition)

    async def restarted(self) -> int:
        """The node started (PS3.4 CC.2.4.2): an SCP Status Change (RESTARTED, WARM START)
        to every subscriber of every partition, queued like every report; how many it went
        to."""
        report = compact(wev.scp_status_change())
        return await self.index.report_to_every_subscriber(report, utcnow())

    async def purge_expired(self) -> None:
        """Drop the reports queued longer than ``RETENTION`` and never delivered (run by the
        background cleanup job)."""
        await self.index.purge_workitem_events(utcnow() - RETENTION)


def _unknown(title: str, why: str) -> WorkitemConflict:
    return WorkitemConflict(UNKNOWN_SUBSCRIBER, f"the AE title {title} {why}")
