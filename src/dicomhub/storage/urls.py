"""The one place where concrete backends are chosen, from URLs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from dicomhub.errors import InvalidRequest
from dicomhub.storage.audit_file import FileAuditLog
from dicomhub.storage.file_blobs import FileBlobStore
from dicomhub.storage.memory_blobs import MemoryBlobStore
from dicomhub.storage.object_blobs import SCHEMES, ObjectBlobStore
from dicomhub.storage.postgres_index import PostgresIndex
from dicomhub.storage.protocols import AuditSink, BlobStore, IndexStore
from dicomhub.storage.sqlite_index import SqliteIndex

FSYNC = ("instance", "off")  # the values of the fsync setting


def open_index(
    url: str,
    pool_size: int = 10,
    migrate: bool = True,
    sqlite_writer: str | None = None,
    fsync: bool = True,
) -> IndexStore:
    """``sqlite:///abs/path.sqlite``, ``sqlite:///:memory:``, ``sqlite://:memory:``, or
    ``postgresql://user:password@host:port/database`` (a pool of ``pool_size`` connections;
    pending migrations applied at start when ``migrate``). ``sqlite_writer``: the address of
    the process that writes a SQLite file for this one (``sqlite_writer.WriterService``);
    without ``fsync``, SQLite commits are not synced (WAL, synchronous NORMAL)."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgresql", "postgres"):
        return PostgresIndex(url, pool_size, migrate)
    if parsed.scheme == "sqlite":
        path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if path in (":memory:", "/:memory:"):
            return SqliteIndex(":memory:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteIndex(path, sqlite_writer, fsync)
    raise InvalidRequest(
        f"unsupported index URL {url!r} (supported: sqlite:///..., postgresql://...)"
    )


def open_blobs(
    url: str, multipart_threshold: int = 16 * 1024 * 1024, fsync: bool = True
) -> BlobStore:
    """``file:///abs/folder``, ``memory://``, or object storage: ``s3://``, ``az://``, ``gs://``
    (see ``object_blobs``)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileBlobStore(Path(parsed.netloc + parsed.path), fsync)
    if parsed.scheme == "memory":
        return MemoryBlobStore()
    if parsed.scheme in SCHEMES:
        return ObjectBlobStore(url, multipart_threshold)
    raise InvalidRequest(
        f"unsupported blob URL {url!r} (supported: file:///..., memory://, s3://, az://, gs://)"
    )


def open_audit(where: str, index: IndexStore) -> AuditSink | None:
    """Where ``--audit-log`` sends the audit log: ``index``, a file path, or ``off`` (None)."""
    if where == "off":
        return None
    return index if where == "index" else FileAuditLog(where)
