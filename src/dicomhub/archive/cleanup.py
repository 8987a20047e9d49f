"""Background cleanup: blobs of deleted instances, and stores that never finished.

The queue lives in the index, so it survives restarts; a blob whose deletion fails is retried
later. Runs as the blob-cleanup background job (workers/background.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from dicomhub.clock import utcnow
from dicomhub.model import thumbnail_keys
from dicomhub.storage.protocols import BlobDeletions, BlobStore, Uploads

log = logging.getLogger(__name__)
RETRY_AFTER = timedelta(hours=1)
EVERYTHING = timedelta(days=365 * 1000)  # later than any deletion's delay


class CleanupIndex(Uploads, BlobDeletions, Protocol):
    """What the cleanup uses of the index: stale uploads to abandon, the blob deletion queue."""


class Cleanup:
    def __init__(
        self, index: CleanupIndex, blobs: BlobStore, batch_size: int, upload_timeout: float
    ):
        self.index = index
        self.blobs = blobs
        self.batch_size = batch_size
        self.upload_timeout = timedelta(seconds=upload_timeout)

    async def abandon_stale_uploads(self, started_before: datetime) -> int:
        """Undo stores cut off by a crash (or slower than the upload timeout): their upload
        ends and their blob, if any, joins the deletion queue."""
        removed = 0
        for version, _ in await self.index.stale_uploads(started_before):
            removed += await self.index.abandon(version)
        if removed:
            log.info("abandoned %d store(s) that never finished", removed)
        return removed

    async def run(self) -> dict:
        """One pass of the blob-cleanup job: stale stores, then the due deletions."""
        abandoned = await self.abandon_stale_uploads(utcnow() - self.upload_timeout)
        return {"abandonedStores": abandoned, "deletedBlobs": await self.delete_due_blobs()}

    async def delete_due_blobs(self, now: bool = False) -> int:
        """One pass over the due part of the deletion queue (``now``: all of it, whatever its
        delay); returns how many were removed."""
        removed = 0
        while True:
            until = utcnow() + (EVERYTHING if now else timedelta(0))
            due = await self.index.due_blob_deletions(until, self.batch_size)
            if not due:
                return removed
            done = []
            for id_, key in due:
                try:
                    for derived in thumbnail_keys(key).values():  # cached renderings first
                        await self.blobs.delete(derived)
                    await self.blobs.delete(key)
                    done.append(id_)
                except Exception as exc:  # noqa: BLE001 - retried later, never lost
                    log.warning("deleting blob %s failed (%s); retrying later", key, exc)
                    await self.index.retry_blob_deletion(id_, utcnow() + RETRY_AFTER)
            await self.index.finish_blob_deletions(done)
            removed += len(done)
            if not done:  # all failed (each retried later): the pass ends here
                return removed
            if len(due) < self.batch_size:
                return removed
