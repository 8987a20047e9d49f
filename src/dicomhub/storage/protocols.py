"""The storage seams the archive sees. Backends are picked from URLs in ``urls.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.query import Query
from dicomhub.dicom.workitem_query import WorkitemQuery
from dicomhub.model import (
    DEFAULT_PARTITION,
    AuditEntry,
    AuditQuery,
    ChangeFeedEntry,
    ExtendedTagError,
    NewInstance,
    Operation,
    Partition,
    Scope,
    StoredInstance,
    StoredWorkitem,
    SyncFailure,
    SyncState,
)
from dicomhub.storage.webhook_protocol import Place, Webhooks  # noqa: F401 - Place: re-exported


class AuditSink(Protocol):
    """Where audit entries go: the index, or an append-only file (``audit_file.py``)."""

    async def add_audit_entries(self, entries: list[AuditEntry]) -> None: ...

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``, oldest first."""
        ...

    async def purge_audit_entries(self, before: datetime) -> None: ...


class ExportSink(Protocol):
    """Where an export writes (``storage/export_sinks``): unlike a blob store, it overwrites."""

    async def put(self, key: str, data: bytes) -> None: ...


OpenSink = Callable[[str, dict[str, str]], ExportSink]  # (url, options): InvalidRequest if bad


class BlobStore(Protocol):
    """Immutable objects addressed by key. A put is all-or-nothing: never a half object."""

    async def start(self) -> None: ...

    async def put(self, key: str, body: bytes | Path) -> None:
        """Store ``body`` (bytes, or a local file that may be consumed, i.e. moved) under
        ``key``, never over an existing object; durably, unless the store was opened with
        fsync off."""

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``offset`` .. ``offset+length`` of the object (to its end when length is None)."""

    def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """The same range, as chunks, without holding the object in memory."""

    async def local_path(self, key: str) -> Path | None:
        """A local file holding the object, if the backend has one (file store), else None."""

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
        """Whole objects, fetched together (one thread hop, or concurrent requests)."""

    async def open_local(self, keys: Sequence[str]) -> list[BinaryIO] | None:
        """The objects' local files opened for reading, for zero-copy sends (the caller closes
        them); None when the backend keeps no local files. Raises NotFound when one is missing."""

    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    async def check(self) -> None:
        """Raise Unavailable when the store cannot be reached (health check)."""

    async def close(self) -> None: ...


# -- the index, one protocol per concern ---------------------------------------------------------
#
# The SQL index (``sql_index.SqlIndex``: SQLite, PostgreSQL) implements them all; each archive
# service asks only for the ones it uses. Every change writes its change-feed rows in the same
# transaction as the index rows.


class IndexLifecycle(Protocol):
    """Opening, closing and probing the index."""

    shared: bool  # other nodes may be writing through the same database at any time

    async def start(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise Unavailable when the database cannot be reached (health check)."""


class Uploads(Protocol):
    """The write path of a store (STOW-RS, C-STORE): a version reserved, the blob written under
    it, then the instance committed, or the store abandoned."""

    async def reserve_versions(self, partition: str, count: int) -> list[int]:
        """Allocate ``count`` versions (ascending, never reused) for stores about to start: a
        store writes its blob under one, then commits it. One call serves many stores; a
        version not committed or abandoned within the upload timeout is abandoned by the
        cleanup job (its blob, if any, deleted)."""

    async def release_versions(self, versions: list[int]) -> None:
        """Give back reserved versions that no blob was written under (at shutdown)."""

    async def commit(self, version: int, instance: NewInstance) -> None:
        """Make a reserved instance visible and add its ``create`` change-feed entry, in one
        transaction. Raises AlreadyExists when the instance is stored already (of concurrent
        stores of one instance, exactly one succeeds)."""

    async def commit_each(self, stores: list[tuple[int, NewInstance]]) -> list[Exception | None]:
        """``commit`` of each store, in order, in as few index writes as the engine allows: for
        each, None or the error that failed it alone (AlreadyExists, StoreAbandoned); an
        error of the index itself fails the rest."""

    async def upsert(
        self, stores: list[tuple[int, NewInstance]], cleanup_after: datetime
    ) -> list[Exception | None]:
        """PUT (upsert): make the reserved instances of one request visible together (one
        transaction: a reader sees none of them or all), in order. Each is stored as
        ``commit`` stores it when it is new; when its series holds it already, it is replaced:
        its ``version`` becomes the latest (an ``update`` change-feed entry), its original kept
        until it is deleted, a version in between queued for deletion after
        ``cleanup_after``. For each, None or, undone alone, InstanceMoved (another study or
        series of the partition holds it), AlreadyExists or StoreAbandoned. Concurrent upserts
        and deletes take turns, each wholly."""

    async def bulk_update(
        self, stores: list[tuple[int, NewInstance, int]], cleanup_after: datetime
    ) -> list[Exception | None]:
        """Bulk update of a study's instances, in one transaction (a reader sees the study
        before or after, never in between): each ``(version, instance, replaced)`` makes a
        reserved version the latest of the stored instance whose latest is ``replaced``, as
        ``upsert`` replaces one (an ``update`` change-feed entry, the original kept). For each,
        None or, nothing done for it, InstanceChanged (its latest is no longer ``replaced``:
        replaced or deleted meanwhile) or StoreAbandoned (its upload timed out)."""

    async def abandon(self, version: int) -> bool:
        """End a store that will not commit and queue its blob for deletion; False when it had
        already committed or been abandoned."""

    async def partitions(self) -> list[Partition]:
        """The data partitions, in the order they were created (the default one first)."""

    async def stale_uploads(self, started_before: datetime) -> list[tuple[int, str]]:
        """(version, partition) of the stores started before then and not finished."""


class KeptBlobs(Protocol):
    """The files of small instances the index keeps itself (``NewInstance.blob``, committed
    with the instance's rows, so one sync makes both durable)."""

    async def kept_blobs(self, versions: list[int]) -> dict[int, bytes]:
        """{version: file} of those of ``versions`` whose file the index keeps."""


class Instances(Protocol):
    """The stored instances: read (WADO-RS, FHIR sync, export) and deleted."""

    async def instances(self, scope: Scope) -> list[StoredInstance]:
        """Visible instances in ``scope``, in storage order; empty when none. Their latest
        versions, or with ``scope.original`` the original of each (as first stored)."""

    async def metadata(self, scope: Scope) -> tuple[list[bytes], str]:
        """Stored DICOM JSON of every visible instance in ``scope`` (latest or original
        versions, as ``instances``), and an ETag for it."""

    async def delete(self, scope: Scope, cleanup_after: datetime) -> int:
        """Remove the instances of ``scope`` with every version kept (latest and original);
        queue their blobs; return how many instances were removed."""


class InstanceSearch(Protocol):
    """QIDO-RS matching (PS3.18 section 10.6) over the searchable attributes."""

    async def search(self, query: Query, needs: set[str]) -> list[dict[str, Any]]:
        """One page of matches, plus one more row when more follow. Each row has the UIDs, level
        documents and counters of its level and above, and the optional parts named in ``needs``
        (see ``dicom.qido_results.needs``); ``dicom.qido_results.build`` reads it."""

    async def count(self, query: Query) -> int:
        """How many matches ``query`` has, ignoring its limit and offset."""


class BlobDeletions(Protocol):
    """The queue of blobs to delete (deleted instances, abandoned stores), kept in the index so
    that it survives restarts."""

    async def due_blob_deletions(self, now: datetime, limit: int) -> list[tuple[int, str]]:
        """(id, blob key) of queued blob deletions whose time has come."""

    async def finish_blob_deletions(self, ids: list[int]) -> None:
        """Take done deletions off the queue, with the files the index kept for them."""

    async def retry_blob_deletion(self, id: int, not_before: datetime) -> None: ...


class ChangeFeed(Protocol):
    """The change feed: one entry per create, update or delete, in commit order."""

    async def changefeed(
        self,
        offset: int,
        limit: int,
        by_sequence: bool,
        start: datetime | None = None,
        end: datetime | None = None,
        include_metadata: bool = True,
    ) -> list[ChangeFeedEntry]:
        """By sequence: entries with sequence > offset and <= offset + limit.
        By time: entries in [start, end), skipping ``offset`` of them, at most ``limit``."""

    async def latest_change(self, include_metadata: bool = True) -> ChangeFeedEntry | None: ...


class FhirCheckpoints(Protocol):
    """FHIR sync state (see storage/fhir_sync_ops.py): a checkpoint and a lease per FHIR server, and
    the changes it refused."""

    async def claim_fhir_sync(
        self, target: str, owner: str, now: datetime, lease_until: datetime, start: int
    ) -> int | None:
        """Take or keep the sync into ``target``: its sequence, or None when another node
        holds it. A new target starts after ``start``."""

    async def advance_fhir_sync(
        self,
        target: str,
        owner: str,
        sequence: int,
        count: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        """Record progress and keep the lease; False when it was lost."""

    async def release_fhir_sync(self, target: str, owner: str) -> None: ...

    async def record_fhir_failure(
        self,
        target: str,
        sequence: int,
        study: str,
        error: str,
        outcome: dict[str, Any] | None,
        now: datetime,
    ) -> None: ...

    async def fhir_sync_state(self, target: str) -> SyncState: ...

    async def fhir_failures(self, target: str, offset: int, limit: int) -> list[SyncFailure]:
        """The refused changes, newest first."""


class Jobs(Protocol):
    """Background jobs (see storage/job_ops.py): leased, retried, resumable; the operations
    clients follow at /operations/{id}."""

    async def enqueue_job(
        self,
        id: str,
        kind: str,
        payload: dict[str, Any],
        max_attempts: int,
        now: datetime,
        singleton: bool,
    ) -> str | None:
        """Add a job; its id. For a ``singleton`` kind, the id of the pending or running one
        if any; None when a job with this ``id`` exists already (not a singleton)."""

    async def claim_job(self, owner: str, now: datetime, lease_until: datetime) -> Operation | None:
        """Take the lease of the oldest ready job (not started and due, or its lease expired);
        concurrent claimers never get the same job."""

    async def renew_job(
        self,
        id: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        percent: int,
        checkpoint: dict[str, Any] | None,
    ) -> bool:
        """Extend the lease and record progress; False when the lease was lost."""

    async def finish_job(
        self,
        id: str,
        owner: str,
        now: datetime,
        results: dict[str, Any] | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> bool:
        """Complete (no error), retry at ``retry_at``, or fail the job; False without the lease."""

    async def operation(self, id: str) -> Operation | None: ...

    async def purge_operations(self, kind: str, before: datetime) -> None:
        """Forget finished jobs of ``kind`` last updated before then."""

    async def job_queue(self, now: datetime) -> list[tuple[str, int, datetime | None, int]]:
        """Per type of pending job: (type, how many are ready to be claimed, when the oldest
        of them became due (None: none is ready), how many are held under a live lease)."""


class ExtendedTagIndex(Protocol):
    """Extended query tags (see storage/extended_tags_ops.py): their definitions, the errors of
    values that failed validation, and the reindex of instances stored before a tag was added.
    Paths are 8 uppercase hex digits."""

    async def add_extended_tags(
        self,
        tags: list[ExtendedTag],
        max_tags: int,
        operation_id: str,
        now: datetime,
        max_attempts: int,
    ) -> str:
        """Add tags (Adding) and their reindex job in one transaction. Raises Conflict when one
        exists, InvalidRequest over ``max_tags``."""

    async def extended_tag(self, path: str) -> ExtendedTag:
        """Raises NotFound."""

    async def extended_tags(self, offset: int, limit: int) -> list[ExtendedTag]: ...

    async def searchable_tags(self) -> list[ExtendedTag]:
        """Ready and Enabled tags: the ones a query may use."""

    async def set_extended_tag_query_status(self, path: str, status: str) -> ExtendedTag: ...

    async def delete_extended_tag(self, path: str) -> None:
        """Remove the tag, its values and its errors."""

    async def extended_tag_errors(
        self, path: str, offset: int, limit: int
    ) -> list[ExtendedTagError]:
        """The tag's invalid values, in storage order. Raises NotFound."""

    async def reindex_batch(
        self, tag_keys: list[int], after: int, until: int, limit: int
    ) -> tuple[int | None, int]:
        """Index the next instances (versions after ``after``, up to ``until``); returns the
        last version done (None when none were left) and how many."""

    async def count_until(self, version: int) -> int:
        """How many instances have a version up to ``version``."""

    async def settled_version(self) -> int:
        """The highest stored version, read once every store running now has ended: what the
        reindex of a tag added before the call must cover (a store either saw the tag or has
        committed by then). May wait as long as the longest running write."""

    async def mark_extended_tags_ready(self, tag_keys: list[int]) -> None: ...


class Workitems(Protocol):
    """UPS workitems (see storage/workitem_ops.py): their datasets, states and locks, and the
    values of their matching keys. ``values`` are (tag path, sequence item, normalised value)
    rows, as ``dicom.workitem_query.index_values`` gives them."""

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
        """Add a workitem (revision 1, no lock) to data ``partition``. Raises WorkitemConflict
        (0111) when one there has this UID (of concurrent creations of one UID, exactly one
        succeeds). The partition's global subscribers join its subscription list and
        are sent ``reports`` (DICOM JSON event reports), in the same transaction."""

    async def workitem(
        self, uid: str, partition: str = DEFAULT_PARTITION
    ) -> StoredWorkitem | None: ...

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
        """Replace the workitem's state, lock, dataset and values, if it is still at
        ``revision`` and in ``state_before`` (one conditional write), and queue ``reports``
        for its subscribers in the same transaction; False, with nothing written, when another
        change came first: of concurrent changes decided on one revision, exactly one
        succeeds."""

    async def search_workitems(self, query: WorkitemQuery) -> list[str]:
        """The datasets (DICOM JSON text) of one page of matches, in creation order."""


class WorkitemEvents(Protocol):
    """UPS subscriptions and the queues of event reports (see storage/workitem_event_ops.py,
    PS3.4 CC.2.3). A subscriber is an AE title in a data partition (``partition``: the same AE
    title in another partition is another subscriber, with its own subscriptions and queue);
    each report queued for it has its next sequence number (from 1, in commit order); reports
    are DICOM JSON text."""

    async def subscribe_workitem(
        self,
        subscriber: str,
        uid: str,
        deletion_lock: bool,
        now: datetime,
        partition: str = DEFAULT_PARTITION,
    ) -> bool:
        """Add ``subscriber`` to the subscription list of the partition's workitem ``uid`` and
        queue its initial State Report; False when there is no such workitem."""

    async def subscribe_all(
        self,
        subscriber: str,
        kind: str,
        deletion_lock: bool,
        filter_params: list[tuple[str, str]] | None,
        now: datetime,
        partition: str = DEFAULT_PARTITION,
    ) -> int:
        """Make (or renew, unsuspended) the global subscription of ``subscriber`` in the
        partition (``kind``: the Global or Filtered Global Subscription UID;
        ``filter_params``: the query keys of the filtered one): it joins every SCHEDULED or IN
        PROGRESS workitem of the partition (matching) and gets each one's State Report; how
        many it joined."""

    async def unsubscribe_workitem(
        self, subscriber: str, uid: str, partition: str = DEFAULT_PARTITION
    ) -> bool | None:
        """Remove ``subscriber`` from the list of the partition's workitem ``uid`` (its
        undelivered reports of it dropped); None when there is no such workitem, else whether
        it was on the list."""

    async def unsubscribe_all(self, subscriber: str, partition: str = DEFAULT_PARTITION) -> bool:
        """Remove every subscription of ``subscriber`` in the partition and its queue there;
        whether it had any."""

    async def suspend_global_subscription(
        self, subscriber: str, partition: str = DEFAULT_PARTITION
    ) -> bool:
        """New workitems of the partition no longer get ``subscriber``; False when it has no
        global subscription there."""

    async def workitem_subscribers(self, uid: str, partition: str = DEFAULT_PARTITION) -> int:
        """How many subscribers workitem ``uid`` (of ``partition``) has."""

    async def pending_workitem_events(
        self, subscriber: str, after: int, limit: int, partition: str = DEFAULT_PARTITION
    ) -> list[tuple[int, str]]:
        """(sequence, report) of the queued reports numbered after ``after``, in order."""

    async def acknowledge_workitem_events(
        self, subscriber: str, sequence: int, partition: str = DEFAULT_PARTITION
    ) -> None:
        """The reports up to ``sequence`` were delivered: they leave the queue."""

    async def purge_workitem_events(self, before: datetime) -> None:
        """Drop the reports queued before then and never delivered."""

    async def report_to_every_subscriber(self, report: str, now: datetime) -> int:
        """Queue ``report`` to every subscriber (of every partition) with a subscription; how
        many."""


class IndexStore(
    IndexLifecycle,
    Uploads,
    KeptBlobs,
    Instances,
    InstanceSearch,
    BlobDeletions,
    ChangeFeed,
    AuditSink,
    FhirCheckpoints,
    Jobs,
    ExtendedTagIndex,
    Workitems,
    WorkitemEvents,
    Webhooks,
    Protocol,
):
    """The whole index, as the backends implement it and the composition root holds it
    (``urls.open_index``); services take only the parts above that they use."""
