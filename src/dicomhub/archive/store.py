"""STOW-RS use case (PS3.18 section 10.5): parse once, validate, store, index the parts that
the web layer (or the DIMSE service) received.

An instance becomes visible only when both its blob and its index rows are durable: its blob is
written under a version reserved in the index beforehand (a block of versions at a time), then
one transaction makes the row visible and writes the change-feed entry. A crash in between
leaves an upload row whose blob the cleanup job removes.

An upsert (PUT) stores the same way, but the parts of a request commit together in one
transaction; its commit replaces an instance stored already (a new version, see Uploads.upsert)
instead of refusing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from pydicom.uid import ImplicitVRLittleEndian

from dicomhub.archive.extended_tags import ExtendedTagsService
from dicomhub.archive.spool import PartBody
from dicomhub.clock import utcnow
from dicomhub.dicom import stow
from dicomhub.dicom.instance import (
    IngestedInstance,
    InvalidInstance,
    bulk_path,
    ingest,
    ingest_scanned,
)
from dicomhub.dicom.mediatype import parse_media_type
from dicomhub.dicom.parse import read_part10
from dicomhub.dicom.scan import scan
from dicomhub.errors import (
    AlreadyExists,
    InstanceMoved,
    InsufficientStorage,
    InvalidDicom,
    InvalidRequest,
)
from dicomhub.model import DEFAULT_PARTITION, NewInstance, blob_key
from dicomhub.settings_groups import Ingest
from dicomhub.storage.protocols import BlobStore, Uploads

log = logging.getLogger(__name__)
DICOM = "application/dicom"
PIPELINE = 8  # parts of one STOW request in flight at once
VERSION_BLOCK = 64  # versions reserved in the index at once
# Parts whose header is at most this size are parsed on the event loop (a few hundred
# microseconds): a part up to this size, or one held in memory whose Pixel Data element (explicit
# VR, OB or OW) starts within it (an image of any size); any other in a thread, so that a huge
# header cannot stall the loop.
INLINE_DESCRIBE = 64 * 1024
# Pixel Data, explicit VR OB or OW (one search: bytes.find of each took 100 us over 64 KB)
PIXEL_DATA = re.compile(rb"\xe0\x7f\x10\x00O[BW]")


class Versions:
    """Versions for new stores, reserved in the index a block at a time, so that a store costs
    one index write (its commit), not two. A block is used only while young: its upload rows
    must not reach the upload timeout, after which the cleanup job abandons them."""

    def __init__(self, index: Uploads, max_age: float, block: int = VERSION_BLOCK):
        self.index, self.max_age, self.block = index, max_age, block
        self._free: dict[str, deque[int]] = {}
        self._since: dict[str, float] = {}
        self._refill = asyncio.Lock()

    async def take(self, partition: str) -> int:
        if not self._ready(partition):
            async with self._refill:
                if not self._ready(partition):
                    # an aged block's unused versions are given back, not left to the cleanup job
                    stale = self._free.pop(partition, ())
                    versions = await self.index.reserve_versions(partition, self.block)
                    self._free[partition] = deque(versions)
                    self._since[partition] = time.monotonic()
                    await self.index.release_versions(list(stale))
        return self._free[partition].popleft()

    async def release(self) -> None:
        """Give the unused versions back (shutdown); without this, the cleanup job abandons
        them after the upload timeout."""
        unused = [v for free in self._free.values() for v in free]
        self._free.clear()
        await self.index.release_versions(unused)

    def _ready(self, partition: str) -> bool:
        free = self._free.get(partition)
        return bool(free) and time.monotonic() - self._since[partition] < self.max_age


@dataclass(frozen=True)
class Part:
    """One part of a STOW-RS request as received: its media type and its bytes."""

    media_type: str
    body: PartBody
    last: bool = False  # known to be the request's last part (False: it may still be)


class PartOrder:
    """The place of one part among the parts of a request that are stored at once: parts take
    their version (storage order) and commit in part order, so stored order is part order, and
    of two parts with the same SOP Instance UID the earlier one is stored and the later one is a
    duplicate (45070), whichever finished parsing first."""

    def __init__(self, previous: PartOrder | None, commits: Commits, slot: asyncio.Semaphore):
        self.previous = previous
        self.commits = commits  # the request's
        self.reserved = asyncio.Event()  # this part and every earlier one have their version
        self.queued = asyncio.Event()  # ... have queued their commit, or settled without one
        self._slot: asyncio.Semaphore | None = slot  # the part's place in the pipeline

    def leave(self) -> None:
        """Free the part's place in the pipeline (once): the next part may be taken."""
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    async def before_reserve(self) -> None:
        if self.previous is not None:
            await self.previous.reserved.wait()

    async def before_commit(self) -> None:
        if self.previous is not None:
            await self.previous.queued.wait()

    async def finish(self) -> None:
        await self.before_reserve()
        self.reserved.set()
        await self.before_commit()
        self.queued.set()


class Commits:
    """The commits of one request's parts, in the order queued: those queued while the index
    writes a batch go together in the next (one index write, not one per part). An upsert's
    (``replaced_delay``: when the blob of a version it replaces may go, unless it is the
    original) commit all together once every part has queued (``write_all``): one transaction,
    so that a reader sees none of the request's instances replaced or all of them."""

    def __init__(self, index: Uploads, replaced_delay: timedelta | None = None):
        self.index = index
        self.replaced_delay = replaced_delay
        self.whole = replaced_delay is not None
        self.waiting: list[tuple[int, NewInstance, asyncio.Future]] = []
        self.writing: asyncio.Task | None = None

    def queue(self, version: int, instance: NewInstance) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((version, instance, future))
        if self.writing is None and not self.whole:
            self.writing = asyncio.create_task(self._write())
        return future

    async def write_all(self, last: PartOrder | None) -> None:
        """An upsert's commit, once every part up to ``last`` has queued (or settled without)."""
        if last is not None:
            await last.queued.wait()
        await self._write()

    async def _write(self) -> None:
        batch: list[tuple[int, NewInstance, asyncio.Future]] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                stores = [(v, i) for v, i, _ in batch]
                try:
                    if self.replaced_delay is None:
                        outcomes = await self.index.commit_each(stores)
                    else:
                        due = utcnow() + self.replaced_delay
                        outcomes = await self.index.upsert(stores, due)
                except Exception as exc:  # noqa: BLE001 - the outcome of each of the batch
                    outcomes = [exc] * len(batch)
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self.writing = None
            for _, _, future in batch + self.waiting:
                future.cancel()  # only those still waiting: the loop is going away


class StoreService:
    def __init__(
        self,
        settings: Ingest,
        index: Uploads,
        blobs: BlobStore,
        extended: ExtendedTagsService,
        replaced_delay: float = 0,
    ):
        """``replaced_delay``: seconds before the blob of a version an upsert replaced (not
        the original) is deleted, as for a deleted instance (--delete-delay): a reader that
        chose that version moments before still finds its file."""
        self.settings = settings
        self.index = index
        self.blobs = blobs
        self.extended = extended
        self.versions = Versions(index, settings.upload_timeout / 4)
        # parts up to this size are committed with their rows (the index keeps their files)
        self.keep_max = settings.index_blob_max
        self.replaced_delay = timedelta(seconds=replaced_delay)

    async def store_parts(
        self,
        parts: AsyncIterator[Part],
        study: str | None,
        strict: bool,
        upsert: bool = False,
        partition: str = DEFAULT_PARTITION,
    ) -> list[stow.PartOutcome]:
        """Store the parts of one request, each while the next ones arrive; one outcome per
        part. ``strict`` (v1): an instance with an invalid value of a searchable attribute,
        built in or an extended query tag, is refused. ``upsert`` (PUT): an instance stored
        already is replaced by the part (a new version; see Uploads.upsert), not refused.
        ``partition``: the data partition the parts are stored in.

        Up to PIPELINE parts are parsed and written at once (the next part is not taken before
        a slot is free); each commits after the one before it (those ready together in one
        index write), so stored order (the change feed, default search order) is the order of
        the parts; an upsert's parts commit together once the last has been written (one index
        write: a reader sees none of them or all). Parts already received are stored whatever
        happens to the request (a store is never cut in half): an error of ``parts`` (a
        malformed body) or a cancelled request stops taking parts, not storing those taken."""
        # v1 validates the attributes extended query tags index too: from here on, ``strict``
        # is their paths (None in v2)
        paths = await self.extended.indexed_paths() if strict else None
        stores: list[asyncio.Task] = []
        slots = asyncio.Semaphore(PIPELINE)
        order: PartOrder | None = None
        commits = Commits(self.index, self.replaced_delay if upsert else None)
        unread: list[stow.PartOutcome] = []
        try:
            async for part in parts:
                if part.last and not stores and not commits.whole:
                    # the request's only part: no order to keep, no commits to share
                    store = self._check_part(part, study, paths, None, partition)
                    stores.append(asyncio.create_task(store))
                    continue
                await slots.acquire()
                order = PartOrder(order, commits, slots)
                stores.append(
                    asyncio.create_task(self._finish_part(part, study, paths, order, partition))
                )
        except InsufficientStorage as exc:  # no space to receive a part: the rest is not read
            message = f"{exc}; the parts after this one were not read"
            unread.append(stow.PartOutcome(failure=stow.OUT_OF_RESOURCES, message=message))
        finally:
            if commits.whole:
                await asyncio.shield(commits.write_all(order))
            results = await asyncio.shield(asyncio.gather(*stores, return_exceptions=True))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results + unread

    async def _finish_part(self, part, study, strict, order, partition) -> stow.PartOutcome:
        try:
            return await self._check_part(part, study, strict, order, partition)
        finally:
            order.leave()
            await order.finish()

    async def _check_part(self, part: Part, study, strict, order, partition) -> stow.PartOutcome:
        body = part.body
        try:
            media = parse_media_type(part.media_type).type
        except InvalidRequest as exc:
            body.discard()
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message=str(exc))
        if media != DICOM:
            body.discard()
            return stow.PartOutcome(
                failure=stow.PROCESSING_FAILURE,
                message=f"part media type {media} is not supported; parts must be {DICOM}",
            )
        if body.too_large:
            body.discard()
            return stow.PartOutcome(
                failure=stow.PROCESSING_FAILURE,
                message=f"part exceeds the limit of {self.settings.max_part_size} bytes",
            )
        return await self.store_part(body, study, strict, order, partition)

    async def store_part(
        self,
        body: PartBody,
        study: str | None,
        strict: frozenset[str] | None,
        order: PartOrder | None = None,
        partition: str = DEFAULT_PARTITION,
    ) -> stow.PartOutcome:
        """Store one PS3.10 file (its body is consumed) in ``partition``, in its ``order``
        among the parts of a request."""
        try:
            return await self._store(body, study, strict, order, partition)
        finally:
            body.discard()

    async def _store(self, body: PartBody, study, strict, order, partition) -> stow.PartOutcome:
        if body.size == 0:
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message="the part is empty")
        try:
            if _short_header(body):  # parsing holds the GIL: a thread hop buys nothing
                described = self._describe(body, study, strict)
            else:
                described = await asyncio.to_thread(self._describe, body, study, strict)
        except InvalidInstance as exc:
            return stow.PartOutcome(
                exc.sop_class, exc.sop_instance, failure=stow.VALIDATION_FAILURE, message=str(exc)
            )
        except InvalidDicom as exc:
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message=str(exc))
        record = described.record.in_partition(partition)
        ident = record.id
        outcome = stow.PartOutcome(record.sop_class, ident.sop)
        if order is not None:
            await order.before_reserve()
        try:
            version = await self.versions.take(ident.partition)
        except InsufficientStorage as exc:
            return _out_of_space(outcome, exc)
        if order is not None:
            order.reserved.set()
        key = blob_key(ident.partition, version)
        try:
            if body.data is not None and body.size <= self.keep_max:
                record = dataclasses.replace(record, blob=body.data)  # synced with its rows
            else:
                await self.blobs.put(key, body.path or body.data)
            if order is None:
                await self.index.commit(version, record)
            else:
                await order.before_commit()
                committed = order.commits.queue(version, record)
                order.queued.set()
                if order.commits.whole:  # commits with the request's last part: make way
                    body.discard()
                    order.leave()
                await committed
        except BaseException as exc:
            # refused for a duplicate or for lack of space, it surely did not commit: its blob
            # goes now (the index may have no space for the abandon that queues its deletion)
            refused = isinstance(exc, AlreadyExists | InstanceMoved | InsufficientStorage)
            await asyncio.shield(self._release(version, key if refused else None))
            if isinstance(exc, InsufficientStorage):
                return _out_of_space(outcome, exc)
            if isinstance(exc, InstanceMoved):  # an upsert of it in another study or series
                outcome.failure, outcome.message = stow.VALIDATION_FAILURE, str(exc)
                return outcome
            if not isinstance(exc, AlreadyExists):
                raise
            outcome.failure, outcome.message = stow.SOP_INSTANCE_ALREADY_EXISTS, str(exc)
            return outcome
        outcome.retrieve_path = bulk_path(ident.study, ident.series, ident.sop)
        outcome.warnings = described.warnings
        outcome.implicit_vr = record.transfer_syntax == ImplicitVRLittleEndian
        outcome.multi_valued = described.multi_valued
        return outcome

    def _describe(self, body: PartBody, study: str | None, strict) -> IngestedInstance:
        settings = self.settings
        if body.data is not None:  # the common file, read in one pass; anything else: pydicom
            scanned = scan(body.data, settings.bulkdata_threshold, settings.max_elements)
            if scanned is not None:
                described = ingest_scanned(scanned, body.data, strict is not None, study)
                if described is not None:
                    return described
        with body.open() as fp:
            parsed = read_part10(
                fp, body.size, self.settings.bulkdata_threshold, self.settings.max_inflated_size
            )

            def read_at(offset: int, length: int) -> bytes:
                fp.seek(offset)
                return fp.read(length)

            return ingest(
                parsed,
                read_at,
                self.settings.bulkdata_threshold,
                strict is not None,
                study,
                also_indexed=strict or frozenset(),
                max_elements=self.settings.max_elements,
            )

    async def _release(self, version: int, blob: str | None = None) -> None:
        """Abandon a store; ``blob``: delete its blob now (else, if written, it goes with the
        cleanup job)."""
        if blob is not None:
            try:
                await self.blobs.delete(blob)
            except Exception:  # the abandon below (or the cleanup job) queues it again
                log.exception("could not delete the blob of abandoned store %s", version)
        try:
            await self.index.abandon(version)
        except Exception:  # the cleanup job abandons it after the upload timeout
            log.exception("could not abandon store %s", version)


def _short_header(body: PartBody) -> bool:
    if body.size <= INLINE_DESCRIBE:
        return True
    data = body.data
    return data is not None and PIXEL_DATA.search(data, 0, INLINE_DESCRIBE) is not None


def _out_of_space(outcome: stow.PartOutcome, exc: InsufficientStorage) -> stow.PartOutcome:
    outcome.failure, outcome.message = stow.OUT_OF_RESOURCES, str(exc)
    return outcome
