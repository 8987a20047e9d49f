"""Value objects shared by the archive and its storage seams."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

DEFAULT_PARTITION = "Microsoft.Default"


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


THUMBNAIL_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif"}


def thumbnail_keys(key: str) -> dict[str, str]:
    """The cached default thumbnails of the instance stored under ``key``, by media type."""
    stem = key.removesuffix(".dcm")
    return {media: f"{stem}.thumbnail.{ext}" for media, ext in THUMBNAIL_EXTENSIONS.items()}


def blob_key(partition: str, version: int) -> str:
    """Blob keys come from the internal version, never from UIDs (UIDs can carry PHI)."""
    digest = hashlib.sha256(f"{partition}/{version}".encode()).hexdigest()
    return f"{digest[:2]}/{digest[2:12]}_{version}.dcm"
