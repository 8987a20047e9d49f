"""Value objects shared by the archive and its storage seams."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

DEFAULT_PARTITION = "Microsoft.Default"
# A data partition's name (Microsoft's PartitionNameValidator, not empty)
PARTITION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class InstanceId:
    study: str
    series: str
    sop: str
    partition: str = DEFAULT_PARTITION


@dataclass(frozen=True)
class Scope:
    """A study, a series of it, or one instance: what a retrieve or delete addresses."""

    study: str
    series: str | None = None
    sop: str | None = None
    partition: str = DEFAULT_PARTITION
    # the original version of each instance (as first stored, before any upsert or update)
    # instead of the latest: Microsoft's msdicom-request-original (reference 6.9)
    original: bool = False


@dataclass(frozen=True)
class NewInstance:
    """Everything the index records for an instance, computed once at ingest."""

    id: InstanceId
    sop_class: str
    transfer_syntax: str
    size: int
    metadata: bytes  # DICOM JSON object, BulkDataURIs with a base-URL placeholder
    frames: str | None  # FrameIndex JSON; None without pixel data
    bulk: str  # JSON {tag path: [offset, length]}
    parse_on_read: bool  # offsets unusable (deflated data set): parse the file instead
    search: SearchRecord
    invalid: dict[str, str] = field(default_factory=dict)  # tag path -> why it was left out
    # The file itself when the index keeps it (a small instance: written and synced
    # with its rows, see storage/kept_blobs); None when it is in the blob store.
    blob: bytes | None = None

    def in_partition(self, partition: str) -> NewInstance:
        """The instance as stored in data partition ``partition``."""
        if self.id.partition == partition:
            return self
        return dataclasses.replace(self, id=dataclasses.replace(self.id, partition=partition))


@dataclass(frozen=True)
class SearchRecord:
    """What the search index records for an instance: its normalised matching values
    (column -> value) and the DICOM JSON documents QIDO-RS returns for its study, series and
    itself. Study and series matching values are derived from their (merged) documents."""

    instance: dict[str, Any]
    study_doc: str
    series_doc: str
    instance_doc: str


@dataclass(frozen=True)
class StoredInstance:
    id: InstanceId
    version: int
    sop_class: str
    transfer_syntax: str
    size: int
    created: datetime
    frames: str | None
    bulk: str
    parse_on_read: bool

    @property
    def blob_key(self) -> str:
        return blob_key(self.id.partition, self.version)


@dataclass(frozen=True)
class Partition:
    """A data partition: its own UID namespace, created by the first store to its name."""

    key: int
    name: str
    created: datetime


class Action(IntEnum):
    CREATE = 0
    DELETE = 1
    UPDATE = 2


@dataclass(frozen=True)
class ChangeFeedEntry:
    sequence: int
    timestamp: datetime
    action: Action
    id: InstanceId
    state: str  # current, replaced, deleted
    metadata: bytes | None


class JobType(StrEnum):
    """Kinds of background job (the ``type`` of an operation)."""

    BLOB_CLEANUP = "blob-cleanup"  # deleted instances' blobs, and stores that never finished
    REINDEX = "reindex"  # instances stored before extended query tags were added
    STORAGE_COMMITMENT = "storage-commitment"  # a report to a requester in --dimse-peers
    COMMITMENT_ANSWERED = "storage-commitment-answered"  # the record of a Transaction UID
    EXPORT = "export"  # instances copied to a destination (POST /export)
    BULK_UPDATE = "update"  # studies' attributes changed (POST /v2/studies/$bulkUpdate)


# the operations whose end (completed or failed) is a webhook event, dicomhub.OperationFinished
# (webhooks/events.py), written with the operation's final state (storage/job_ops.py)
OPERATION_FINISHED = "dicomhub.OperationFinished"
EVENTFUL_JOBS = (JobType.EXPORT, JobType.BULK_UPDATE, JobType.REINDEX)


class OperationStatus(StrEnum):
    NOT_STARTED = "notStarted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Operation:
    """A background job, and the long-running operation clients follow."""

    id: str
    type: str
    status: OperationStatus
    percent_complete: int
    created: datetime
    last_updated: datetime
    payload: dict[str, Any]
    checkpoint: dict[str, Any] | None  # where a resumed job goes on from
    results: dict[str, Any] | None
    errors: list[str]
    attempts: int
    max_attempts: int

    @property
    def finished(self) -> bool:
        return self.status in (OperationStatus.COMPLETED, OperationStatus.FAILED)


@dataclass(frozen=True)
class SyncState:
    """Where the FHIR sync into one server stands."""

    sequence: int  # every change up to this one is synced
    synced: int  # changes synced so far
    updated: datetime | None
    holder: str | None  # the node syncing now
    failures: int


@dataclass(frozen=True)
class StoredWorkitem:
    """A UPS workitem as the index keeps it: its dataset (DICOM JSON text, Transaction UID
    included), its state and lock, and a revision that each change increments."""

    uid: str
    state: str
    lock: str | None  # the Transaction UID of the performer that claimed it
    revision: int
    dataset: str


@dataclass(frozen=True)
class SyncFailure:
    """A change the FHIR server refused for good, with its answer (an OperationOutcome)."""

    id: int
    sequence: int
    study: str
    error: str
    outcome: dict[str, Any] | None
    at: datetime


@dataclass(frozen=True)
class Subscription:
    """A webhook subscription (see archive/webhooks.py): where events go, which ones, and how
    far delivery has got in the change feed."""

    id: str
    url: str
    event_types: tuple[str, ...]
    # partition, modality, sopClassUid -> values any of; study -> {QIDO key: value}
    filter: dict[str, Any]
    secret: str  # whsec_ + base64 key (Standard Webhooks)
    schema: str  # cloudevents or eventgrid
    paused: bool
    created: datetime
    updated: datetime
    sequence: int  # every change up to this one is delivered (or dead-lettered, or filtered)
    delivered: int  # events delivered so far
    attempts: int  # failed attempts at delivering the next event
    failing_since: datetime | None
    next_attempt: datetime
    last_error: str | None
    holder: str | None  # the node delivering now

    @property
    def state(self) -> str:
        if self.paused:
            return "paused"
        return "failing" if self.attempts or self.failing_since else "active"


@dataclass(frozen=True)
class DeadLetter:
    """An event a subscriber did not take within the retry window; kept to be replayed."""

    subscription: str
    event_id: str  # the change-feed sequence; for a StudyStable event, "{sequence}.stable"
    sequence: int  # of the change (for a StudyStable, the study's last change)
    event_type: str
    body: str  # the request body as it was sent (JSON)
    error: str
    attempts: int
    dead: datetime
    replay: bool  # a replay was asked for and is pending


@dataclass(frozen=True)
class EventSource:
    """A change-feed entry with what webhook filters match on (None: unknown, the instance
    being gone)."""

    sequence: int
    timestamp: datetime
    action: Action
    id: InstanceId
    modality: str | None
    sop_class: str | None


@dataclass(frozen=True)
class ExtendedTagError:
    """An instance whose value of an extended query tag failed validation."""

    study: str
    series: str
    instance: str  # SOP Instance UID
    created: datetime
    message: str


THUMBNAIL_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif"}


def thumbnail_keys(key: str) -> dict[str, str]:
    """The cached default thumbnails of the instance stored under ``key``, by media type."""
    stem = key.removesuffix(".dcm")
    return {media: f"{stem}.thumbnail.{ext}" for media, ext in THUMBNAIL_EXTENSIONS.items()}


def blob_key(partition: str, version: int) -> str:
    """Blob keys come from the internal version, never from UIDs (UIDs can carry PHI)."""
    digest = hashlib.sha256(f"{partition}/{version}".encode()).hexdigest()
    return f"{digest[:2]}/{digest[2:12]}_{version}.dcm"


def blob_version(key: str) -> int | None:
    """The version an instance's blob key was made from; None for any other key (a cached
    thumbnail's)."""
    stem, sep, tail = key.rpartition("_")
    number = tail.removesuffix(".dcm")
    return int(number) if sep and tail.endswith(".dcm") and number.isdigit() else None


# The data actions roles grant (Microsoft's set); each HTTP route and DIMSE command needs one.
ACTIONS = ("read", "write", "delete", "manageExtendedQueryTags", "export", "admin")
READ, WRITE, DELETE, MANAGE_TAGS, EXPORT, ADMIN = ACTIONS


@dataclass
class AuditEntry:
    """One request (HTTP or DIMSE) as the audit log keeps it; never its credentials."""

    time: datetime
    protocol: str  # http | dimse
    method: str  # GET, POST, ... or C-STORE, C-FIND, ...
    path: str
    status: int
    principal: str | None = None  # the token's subject (None: authentication off)
    client: str | None = None  # the application the token was issued to
    address: str | None = None  # the caller's network address
    route: str | None = None  # the route's name (v2-instance, ...)
    action: str | None = None  # the data action the route needs
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)  # caller headers, stored instances, ...
    id: int | None = None
    request_id: str | None = None  # the HTTP request's id (X-Request-Id)

    def to_json(self) -> dict[str, Any]:
        """The entry as the audit API and the audit file write it."""
        out = {"id": self.id, "time": self.time.isoformat().replace("+00:00", "Z")}
        for name, key in _AUDIT_KEYS:
            out[key] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditEntry:
        time = datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
        values = {name: data.get(key) for name, key in _AUDIT_KEYS}
        return cls(
            time=time, id=data.get("id"), **{k: v for k, v in values.items() if v is not None}
        )


_AUDIT_KEYS = (
    ("protocol", "protocol"),
    ("method", "method"),
    ("path", "path"),
    ("status", "status"),
    ("principal", "principal"),
    ("client", "client"),
    ("address", "address"),
    ("route", "route"),
    ("action", "action"),
    ("study", "studyInstanceUid"),
    ("series", "seriesInstanceUid"),
    ("instance", "sopInstanceUid"),
    ("bytes_in", "bytesIn"),
    ("bytes_out", "bytesOut"),
    ("duration_ms", "durationMs"),
    ("detail", "detail"),
    ("request_id", "requestId"),
)


@dataclass(frozen=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    principal: str | None = None
    action: str | None = None
    study: str | None = None
    status: int | None = None
    request_id: str | None = None
    offset: int = 0
    limit: int = 100

    def matches(self, e: AuditEntry) -> bool:
        return (
            (self.since is None or e.time >= self.since)
            and (self.until is None or e.time < self.until)
            and (self.principal is None or e.principal == self.principal)
            and (self.action is None or e.action == self.action)
            and (self.study is None or e.study == self.study)
            and (self.status is None or e.status == self.status)
            and (self.request_id is None or e.request_id == self.request_id)
        )
