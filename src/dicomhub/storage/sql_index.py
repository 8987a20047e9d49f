"""The IndexStore over SQL, for every engine: each method is an operation of ``instance_ops``
(or ``version_ops``, ``audit_ops``, ``fhir_sync_ops``, ``job_ops``, ``extended_tags_ops``,
``workitem_ops``, ``workitem_event_ops``, ``webhook_ops``) handed to the engine's driver
(``_read`` or ``_write``), or one of their statements read as it is. It implements every index
protocol of ``protocols.py``. Where SQL lives: the schema in ``sql/<engine>/`` (migrations and
the declared schema), each concept's statements with its operations in ``<concept>_ops``,
QIDO's generated statements in ``search_sql``; ``statements`` runs operations and holds none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dicomhub.clock import from_micros, to_micros
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.query import Query
from dicomhub.dicom.workitem_query import WorkitemQuery
from dicomhub.model import (
    DEFAULT_PARTITION,
    Action,
    AuditEntry,
    AuditQuery,
    ChangeFeedEntry,
    DeadLetter,
    EventSource,
    ExtendedTagError,
    InstanceId,
    NewInstance,
    Operation,
    Partition,
    Scope,
    StoredInstance,
    StoredWorkitem,
    Subscription,
    SyncFailure,
    SyncState,
)
from dicomhub.storage import audit_ops as audit
from dicomhub.storage import extended_tags_ops as eqt
from dicomhub.storage import fhir_sync_ops as fhir
from dicomhub.storage import instance_ops as ops
from dicomhub.storage import job_ops as jobs
from dicomhub.storage import statements as st
from dicomhub.storage import version_ops as versions
from dicomhub.storage import webhook_ops as webhooks
from dicomhub.storage import workitem_event_ops as events
from dicomhub.storage import workitem_ops as workitems
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.search_sql import count_sql, search_sql
from dicomhub.storage.webhook_protocol import Place

OpFactory = Callable[..., st.Op]


class SqlIndex:
    dialect: Dialect

    async def _read(self, op: OpFactory, *args: Any, snapshot: bool = False) -> Any:
        """Run the reading operation ``op(*args)`` (in one snapshot when it reads more than
        once)."""
        raise NotImplementedError

    async def _write(self, op: OpFactory, *args: Any) -> Any:
        """Run the writing operation ``op(*args)`` in a transaction of its own, all or nothing
        (an engine may run it again from the start, e.g. after a deadlock)."""
        raise NotImplementedError

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return await self._read(st.single, st.rows(sql, *params))

    # -- store ---------------------------------------------------------------------------------

    async def reserve_versions(self, partition: str, count: int) -> list[int]:
        return await self._write(ops.reserve_versions, partition, count)

    async def release_versions(self, versions: list[int]) -> None:
        if versions:
            await self._write(ops.release_versions, versions)

    async def commit(self, version: int, instance: NewInstance) -> None:
        await self._write(ops.commit, version, instance)

    async def commit_each(self, stores: list[tuple[int, NewInstance]]) -> list[Exception | None]:
        return await self._write(ops.commit_each, stores)

    async def upsert(
        self, stores: list[tuple[int, NewInstance]], cleanup_after: datetime
    ) -> list[Exception | None]:
        return await self._write(versions.upsert, self.dialect, stores, cleanup_after)

    async def bulk_update(
        self, stores: list[tuple[int, NewInstance, int]], cleanup_after: datetime
    ) -> list[Exception | None]:
        return await self._write(versions.update, self.dialect, stores, cleanup_after)

    async def abandon(self, version: int) -> bool:
        return await self._write(ops.abandon, version)

    async def partitions(self) -> list[Partition]:
        found = await self._rows(ops.PARTITIONS, ())
        return [Partition(r[0], r[1], from_micros(r[2])) for r in found]

    async def stale_uploads(self, started_before: datetime) -> list[tuple[int, str]]:
        found = await self._rows(ops.STALE_UPLOADS, (to_micros(started_before),))
        return [(r["version"], r["partition_name"]) for r in found]

    # -- read ----------------------------------------------------------------------------------

    async def instances(self, scope: Scope) -> list[StoredInstance]:
        select = ops.SELECT_ORIGINALS if scope.original else ops.SELECT_INSTANCES
        sql, params = ops.scoped(select, scope)
        return [_stored(r) for r in await self._rows(sql, params)]

    async def metadata(self, scope: Scope) -> tuple[list[bytes], str]:
        return await self._read(ops.metadata, scope, snapshot=True)

    async def search(self, query: Query, needs: set[str]) -> list[dict[str, Any]]:
        sql, params = search_sql(query, needs, self.dialect)
        return [dict(r) for r in await self._rows(sql, params)]

    async def count(self, query: Query) -> int:
        sql, params = count_sql(query, self.dialect)
        return (await self._rows(sql, params))[0][0]

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, scope: Scope, cleanup_after: datetime) -> int:
        return await self._write(ops.delete, self.dialect, scope, cleanup_after)

    async def due_blob_deletions(self, now: datetime, limit: int) -> list[tuple[int, str]]:
        found = await self._rows(ops.DUE_BLOB_DELETIONS, (to_micros(now), limit))
        return [(r["id"], r["blob_key"]) for r in found]

    async def finish_blob_deletions(self, ids: list[int]) -> None:
        if ids:
            await self._write(ops.finish_blob_deletions, ids)

    async def kept_blobs(self, versions: list[int]) -> dict[int, bytes]:
        return await self._read(ops.kept_blobs, versions) if versions else {}

    async def retry_blob_deletion(self, id: int, not_before: datetime) -> None:
        await self._write(st.single, st.run(ops.RETRY_BLOB_DELETION, to_micros(not_before), id))

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
            sql, params = ops.CHANGEFEED_BY_SEQUENCE, (offset, offset + limit)
        else:
            lo = to_micros(start) if start else -(2**62)
            hi = to_micros(end) if end else 2**62
            sql, params = ops.CHANGEFEED_BY_TIME, (lo, hi, limit, offset)
        sql = sql.format(metadata="i.metadata" if include_metadata else "NULL")
        return [_entry(r) for r in await self._read(ops.changes, self.dialect, sql, params)]

    async def latest_change(self, include_metadata: bool = True) -> ChangeFeedEntry | None:
        sql = ops.CHANGEFEED_LATEST.format(metadata="i.metadata" if include_metadata else "NULL")
        found = await self._read(ops.changes, self.dialect, sql, ())
        return _entry(found[0]) if found else None

    # -- background jobs -----------------------------------------------------------------------

    async def enqueue_job(
        self,
        id: str,
        kind: str,
        payload: dict[str, Any],
        max_attempts: int,
        now: datetime,
        singleton: bool,
    ) -> str | None:
        return await self._write(jobs.enqueue, id, kind, payload, max_attempts, now, singleton)

    async def claim_job(self, owner: str, now: datetime, lease_until: datetime) -> Operation | None:
        return await self._write(jobs.claim, self.dialect, owner, now, lease_until)

    async def renew_job(
        self,
        id: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        percent: int,
        checkpoint: dict[str, Any] | None,
    ) -> bool:
        return await self._write(jobs.renew, id, owner, now, lease_until, percent, checkpoint)

    async def finish_job(
        self,
        id: str,
        owner: str,
        now: datetime,
        results: dict[str, Any] | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> bool:
        return await self._write(jobs.finish, id, owner, now, results, error, retry_at)

    async def operation(self, id: str) -> Operation | None:
        return await self._read(jobs.get, id)

    async def purge_operations(self, kind: str, before: datetime) -> None:
        await self._write(jobs.purge, kind, before)

    async def job_queue(self, now: datetime) -> list[tuple[str, int, datetime | None, int]]:
        return await self._read(jobs.queue, now)

    # -- audit log -------------------------------------------------------------------------------

    async def add_audit_entries(self, entries: list[AuditEntry]) -> None:
        await self._write(audit.add, entries)

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._read(audit.find, query)

    async def purge_audit_entries(self, before: datetime) -> None:
        await self._write(audit.purge, before)

    # -- FHIR sync -------------------------------------------------------------------------------

    async def claim_fhir_sync(
        self, target: str, owner: str, now: datetime, lease_until: datetime, start: int
    ) -> int | None:
        return await self._write(fhir.claim, target, owner, now, lease_until, start)

    async def advance_fhir_sync(
        self,
        target: str,
        owner: str,
        sequence: int,
        count: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        return await self._write(fhir.advance, target, owner, sequence, count, now, lease_until)

    async def release_fhir_sync(self, target: str, owner: str) -> None:
        await self._write(fhir.release, target, owner)

    async def record_fhir_failure(
        self,
        target: str,
        sequence: int,
        study: str,
        error: str,
        outcome: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        await self._write(fhir.fail, target, sequence, study, error, outcome, now)

    async def fhir_sync_state(self, target: str) -> SyncState:
        return await self._read(fhir.state, target)

    async def fhir_failures(self, target: str, offset: int, limit: int) -> list[SyncFailure]:
        return await self._read(fhir.failures, target, offset, limit)

    # -- extended query tags -------------------------------------------------------------------

    async def add_extended_tags(
        self,
        tags: list[ExtendedTag],
        max_tags: int,
        operation_id: str,
        now: datetime,
        max_attempts: int,
    ) -> str:
        return await self._write(eqt.add, tags, max_tags, operation_id, now, max_attempts)

    async def extended_tag(self, path: str) -> ExtendedTag:
        return await self._read(eqt.find, path)

    async def extended_tags(self, offset: int, limit: int) -> list[ExtendedTag]:
        return await self._read(eqt.listing, offset, limit)

    async def searchable_tags(self) -> list[ExtendedTag]:
        return await self._read(eqt.searchable)

    async def set_extended_tag_query_status(self, path: str, status: str) -> ExtendedTag:
        return await self._write(eqt.set_query_status, path, status)

    async def delete_extended_tag(self, path: str) -> None:
        await self._write(eqt.delete, path)

    async def extended_tag_errors(
        self, path: str, offset: int, limit: int
    ) -> list[ExtendedTagError]:
        return await self._read(eqt.errors, path, offset, limit)

    async def reindex_batch(
        self, tag_keys: list[int], after: int, until: int, limit: int
    ) -> tuple[int | None, int]:
        return await self._write(eqt.reindex_batch, tag_keys, after, until, limit)

    async def count_until(self, version: int) -> int:
        return await self._read(eqt.count_until, version)

    async def settled_version(self) -> int:
        # One writer at a time: a store that did not see a tag committed before the tag did.
        return await self._read(eqt.max_version)

    async def mark_extended_tags_ready(self, tag_keys: list[int]) -> None:
        await self._write(eqt.mark_ready, tag_keys)

    # -- UPS workitems -------------------------------------------------------------------------

    async def add_workitem(
        self,
        uid: str,
        state: str,
        dataset: str,
        values: list[tuple[str, int, str]],
        now: datetime,
        reports: list[str],
        partition: str = DEFAULT_PARTITION,
    ) -> None:
        await self._write(
            workitems.add, self.dialect, uid, state, dataset, values, now, reports, partition
        )

    async def workitem(self, uid: str, partition: str = DEFAULT_PARTITION) -> StoredWorkitem | None:
        return await self._read(workitems.get, uid, partition)

    async def replace_workitem(
        self,
        uid: str,
        revision: int,
        state_before: str,
        state: str,
        lock: str | None,
        dataset: str,
        values: list[tuple[str, int, str]],
        now: datetime,
        reports: list[str],
        partition: str = DEFAULT_PARTITION,
    ) -> bool:
        return await self._write(
            workitems.replace,
            uid,
            revision,
            state_before,
            state,
            lock,
            dataset,
            values,
            now,
            reports,
            partition,
        )

    async def search_workitems(self, query: WorkitemQuery) -> list[str]:
        sql, params = workitems.search_sql(query, self.dialect)
        return [r[0] for r in await self._rows(sql, params)]

    # -- UPS subscriptions and event reports ---------------------------------------------------

    async def subscribe_workitem(
        self,
        subscriber: str,
        uid: str,
        deletion_lock: bool,
        now: datetime,
        partition: str = DEFAULT_PARTITION,
    ) -> bool:
        return await self._write(events.subscribe, subscriber, uid, deletion_lock, now, partition)

    async def subscribe_all(
        self,
        subscriber: str,
        kind: str,
        deletion_lock: bool,
        filter_params: list[tuple[str, str]] | None,
        now: datetime,
        partition: str = DEFAULT_PARTITION,
    ) -> int:
        return await self._write(
            events.subscribe_all,
            self.dialect,
            subscriber,
            kind,
            deletion_lock,
            filter_params,
            now,
            partition,
        )

    async def unsubscribe_workitem(
        self, subscriber: str, uid: str, partition: str = DEFAULT_PARTITION
    ) -> bool | None:
        return await self._write(events.unsubscribe, subscriber, uid, partition)

    async def unsubscribe_all(self, subscriber: str, partition: str = DEFAULT_PARTITION) -> bool:
        return await self._write(events.unsubscribe_all, subscriber, partition)

    async def suspend_global_subscription(
        self, subscriber: str, partition: str = DEFAULT_PARTITION
    ) -> bool:
        return await self._write(events.suspend, subscriber, partition)

    async def workitem_subscribers(self, uid: str, partition: str = DEFAULT_PARTITION) -> int:
        return await self._read(events.count, uid, partition)

    async def pending_workitem_events(
        self, subscriber: str, after: int, limit: int, partition: str = DEFAULT_PARTITION
    ) -> list[tuple[int, str]]:
        return await self._read(events.pending, subscriber, after, limit, partition)

    async def acknowledge_workitem_events(
        self, subscriber: str, sequence: int, partition: str = DEFAULT_PARTITION
    ) -> None:
        await self._write(events.acknowledge, subscriber, sequence, partition)

    async def purge_workitem_events(self, before: datetime) -> None:
        await self._write(events.purge, before)

    async def report_to_every_subscriber(self, report: str, now: datetime) -> int:
        return await self._write(events.status_change, report, now)

    # -- webhook subscriptions -----------------------------------------------------------------

    async def create_subscription(self, subscription: Subscription) -> None:
        await self._write(webhooks.create, subscription)

    async def subscription(self, id: str) -> Subscription | None:
        return await self._read(webhooks.get, id)

    async def subscriptions(self) -> list[Subscription]:
        return await self._read(webhooks.listing)

    async def update_subscription(self, subscription: Subscription) -> bool:
        return await self._write(webhooks.update, subscription)

    async def delete_subscription(self, id: str) -> bool:
        return await self._write(webhooks.delete, id)

    async def claim_subscription(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> Subscription | None:
        if not await self._read(webhooks.due, self.dialect, now):
            return None
        return await self._write(webhooks.claim, self.dialect, owner, now, lease_until)

    async def subscription_delivered(
        self,
        id: str,
        owner: str,
        sequence: int,
        count: int,
        lease_until: datetime,
        marks: list[tuple[Place, int, datetime]] = (),
    ) -> bool:
        return await self._write(
            webhooks.delivered, id, owner, sequence, count, lease_until, list(marks)
        )

    async def renew_subscription(self, id: str, owner: str, lease_until: datetime) -> bool:
        return await self._write(webhooks.renew, id, owner, lease_until)

    async def subscription_failed(
        self, id: str, owner: str, now: datetime, error: str, retry_at: datetime
    ) -> int | None:
        return await self._write(webhooks.failed, id, owner, now, error, retry_at)

    async def dead_letter(
        self,
        id: str,
        owner: str,
        letter: DeadLetter,
        lease_until: datetime,
        stable: Place | None = None,
        outbox: bool = False,
    ) -> bool:
        return await self._write(
            webhooks.dead_letter, id, owner, letter, lease_until, stable, outbox
        )

    async def outbox_events(
        self, id: str, limit: int
    ) -> list[tuple[str, str, str | None, datetime, dict]]:
        return await self._read(webhooks.outbox, id, limit)

    async def outbox_done(
        self, id: str, owner: str, event_id: str, count: int, lease_until: datetime
    ) -> bool:
        return await self._write(webhooks.outbox_done, id, owner, event_id, count, lease_until)

    async def finished_operations(
        self, since: datetime, limit: int
    ) -> list[tuple[str, str | None, datetime, dict]]:
        return await self._read(jobs.finished_since, since, limit)

    async def due_stable(
        self, id: str, now: datetime, limit: int
    ) -> list[tuple[Place, int, datetime]]:
        return await self._read(webhooks.due_stable, id, now, limit)

    async def place_state(self, place: Place) -> tuple[int, datetime | None, int | None]:
        return await self._read(webhooks.place_state, place, snapshot=True)

    async def postpone_stable(self, id: str, place: Place, sequence: int, due: datetime) -> None:
        await self._write(webhooks.postpone_stable, id, place, sequence, due)

    async def stable_done(
        self,
        id: str,
        owner: str,
        place: Place,
        sequence: int,
        count: int,
        lease_until: datetime,
    ) -> bool:
        return await self._write(
            webhooks.stable_done, id, owner, place, sequence, count, lease_until
        )

    async def release_subscription(self, id: str, owner: str, not_before: datetime) -> None:
        await self._write(webhooks.release, id, owner, not_before)

    async def deadletters(self, id: str, offset: int, limit: int) -> list[DeadLetter]:
        return await self._read(webhooks.deadletters, id, offset, limit)

    async def count_deadletters(self, id: str) -> int:
        return await self._read(webhooks.count_deadletters, id)

    async def replay_deadletter(self, id: str, event_id: str, now: datetime) -> bool:
        return await self._write(webhooks.ask_replay, id, event_id, now)

    async def pending_replays(self, id: str, limit: int) -> list[DeadLetter]:
        return await self._read(webhooks.replays, id, limit)

    async def replayed(self, id: str, event_id: str) -> None:
        await self._write(webhooks.replayed, id, event_id)

    async def replay_failed(self, id: str, event_id: str, error: str, now: datetime) -> None:
        await self._write(webhooks.replay_failed, id, event_id, error, now)

    async def events_after(self, sequence: int, limit: int) -> list[EventSource]:
        return await self._read(webhooks.events_after, self.dialect, sequence, limit)


def _stored(r) -> StoredInstance:
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


def _entry(r) -> ChangeFeedEntry:
    # As Microsoft's server computes it when read (reference 9.1): an entry of the instance's
    # latest version (its create, or the update that made it) is current; one of an earlier
    # version, or a delete of an instance stored again since, is replaced.
    current = r["current_version"]
    if current is None:
        state = "deleted"
    elif current == r["version"] and r["action"] != Action.DELETE:
        state = "current"
    else:
        state = "replaced"
    metadata = r["metadata"] if current is not None and r["action"] != Action.DELETE else None
    return ChangeFeedEntry(
        sequence=r["sequence"],
        timestamp=from_micros(r["timestamp"]),
        action=Action(r["action"]),
        id=InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
        state=state,
        metadata=bytes(metadata) if metadata is not None else None,
    )
