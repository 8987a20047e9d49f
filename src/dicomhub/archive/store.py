"""STOW-RS use case (PS3.18 section 10.5): spool, parse once, validate, store, index.

An instance becomes visible only when both its blob and its index rows are durable: the index
claims the instance (invisible) first, the blob is written, then one transaction makes the row
visible and writes the change-feed entry. A crash in between leaves a claim that start-up removes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from dicomhub.archive.extended_tags import ExtendedTagsService
from dicomhub.archive.spool import SpoolFile
from dicomhub.dicom import stow
from dicomhub.dicom.instance import InvalidInstance, bulk_path, ingest
from dicomhub.dicom.mediatype import parse_media_type
from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from dicomhub.dicom.parse import read_part10
from dicomhub.errors import (
    AlreadyExists,
    InvalidDicom,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dicomhub.model import InstanceId, NewInstance, blob_key
from dicomhub.settings import Settings
from dicomhub.storage.protocols import BlobStore, IndexStore

log = logging.getLogger(__name__)
DICOM = "application/dicom"
PIPELINE = 8  # parts of one STOW request in flight at once


class PartOrder:
    """The place of one part among the parts of a request that are stored at once: parts take
    their version (storage order) and commit in part order, so stored order is part order, and
    of two parts with the same SOP Instance UID the earlier one is stored and the later one is a
    duplicate (45070), whichever finished parsing first."""

    def __init__(self, previous: PartOrder | None):
        self.previous = previous
        self.reserved = asyncio.Event()  # this part and every earlier one have their version
        self.done = asyncio.Event()  # this part and every earlier one have settled

    async def before_reserve(self) -> None:
        if self.previous is not None:
            await self.previous.reserved.wait()

    async def before_commit(self) -> None:
        if self.previous is not None:
            await self.previous.done.wait()

    async def finish(self) -> None:
        await self.before_reserve()
        self.reserved.set()
        await self.before_commit()
        self.done.set()


class StoreService:
    def __init__(
        self,
        settings: Settings,
        index: IndexStore,
        blobs: BlobStore,
        extended: ExtendedTagsService,
    ):
        self.settings = settings
        self.index = index
        self.blobs = blobs
        self.extended = extended

    async def store_body(
        self,
        chunks: AsyncIterator[bytes],
        content_type: str | None,
        study: str | None,
        strict: bool,
    ) -> list[stow.PartOutcome]:
        """Store every DICOM part of a request body; one outcome per part. ``strict`` (v1):
        an instance with an invalid value of a searchable attribute, built in or an extended
        query tag, is refused."""
        if not content_type:
            raise UnsupportedMediaType("STOW-RS needs a Content-Type header")
        # v1 validates the attributes extended query tags index too: from here on, ``strict``
        # is their paths (None in v2)
        strict = await self.extended.indexed_paths() if strict else None
        media = parse_media_type(content_type)
        if media.type == DICOM:
            spool = await self._spool(chunks)
            if spool.too_large:
                spool.discard()
                raise PayloadTooLarge(
                    f"the DICOM file exceeds the limit of {self.settings.max_part_size} bytes"
                )
            return [await self._store_spooled(spool, study, strict)]
        if media.type != "multipart/related":
            raise UnsupportedMediaType(
                f'STOW-RS takes multipart/related; type="application/dicom" or '
                f"application/dicom, not {media.type}"
            )
        root_type = media.params.get("type", DICOM).lower()
        if root_type != DICOM:
            raise UnsupportedMediaType(
                f'multipart type {root_type!r} is not supported; use type="application/dicom"'
            )
        boundary = media.params.get("boundary")
        if not boundary:
            raise InvalidRequest("multipart/related needs a boundary parameter")
        return await self._store_multipart(chunks, boundary, root_type, study, strict)

    async def _store_multipart(self, chunks, boundary, root_type, study, strict):
        """Parts are stored while the next ones arrive: up to PIPELINE parts of one request are
        parsed and written at once; each commits after the one before it, so stored order (the
        change feed, default search order) is the order of the parts."""
        parser = MultipartParser(boundary)
        stores: list[asyncio.Task] = []
        slots = asyncio.Semaphore(PIPELINE)
        spool: SpoolFile | None = None
        order: PartOrder | None = None
        part_type = root_type
        try:
            async for chunk in chunks:
                for event in parser.feed(chunk):
                    if isinstance(event, PartStart):
                        if len(stores) == self.settings.max_parts:
                            raise PayloadTooLarge(
                                f"the request has more than {self.settings.max_parts} parts "
                                "(max_parts); the parts before stop here are stored"
                            )
                        part_type = event.headers.get("content-type", root_type)
                        spool = SpoolFile(self.settings.spool_dir, self.settings.max_part_size)
                    elif isinstance(event, PartData):
                        await spool.write(event.data)
                    elif isinstance(event, PartEnd):
                        spool.close()
                        await slots.acquire()
                        order = PartOrder(order)
                        stores.append(
                            asyncio.create_task(
                                self._finish_part(spool, part_type, study, strict, slots, order)
                            )
                        )
                        spool = None
                if parser.finished:
                    break
            parser.close()
        finally:
            if spool is not None:
                spool.discard()
            # Parts already received are stored whatever happens to the request (a store is
            # never cut in half); a cancelled request stops waiting, not storing.
            results = await asyncio.shield(asyncio.gather(*stores, return_exceptions=True))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _finish_part(self, spool, part_type, study, strict, slots, order) -> stow.PartOutcome:
        try:
            return await self._check_part(spool, part_type, study, strict, order)
        finally:
            slots.release()
            await order.finish()

    async def _check_part(self, spool, part_type, study, strict, order) -> stow.PartOutcome:
        try:
            media = parse_media_type(part_type).type
        except InvalidRequest as exc:
            spool.discard()
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message=str(exc))
        if media != DICOM:
            spool.discard()
            return stow.PartOutcome(
                failure=stow.PROCESSING_FAILURE,
                message=f"part media type {media} is not supported; parts must be {DICOM}",
            )
        if spool.too_large:
            spool.discard()
            return stow.PartOutcome(
                failure=stow.PROCESSING_FAILURE,
                message=f"part exceeds the limit of {self.settings.max_part_size} bytes",
            )
        return await self._store_spooled(spool, study, strict, order)

    async def _spool(self, chunks: AsyncIterator[bytes]) -> SpoolFile:
        spool = SpoolFile(self.settings.spool_dir, self.settings.max_part_size)  # made at start
        try:
            async for chunk in chunks:
                await spool.write(chunk)
        except BaseException:
            spool.discard()
            raise
        spool.close()
        return spool

    async def _store_spooled(self, spool: SpoolFile, study, strict, order=None):
        try:
            return await self.store_file(spool.path, spool.size, study, strict, order)
        finally:
            spool.path.unlink(missing_ok=True)

    async def store_file(
        self,
        path: Path,
        size: int,
        study: str | None,
        strict: frozenset[str] | None,
        order: PartOrder | None = None,
    ) -> stow.PartOutcome:
        """Store one PS3.10 file (the file may be moved into the blob store), in its ``order``
        among the parts of a request."""
        if size == 0:
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message="the part is empty")
        try:
            instance = await asyncio.to_thread(self._describe, path, size, study, strict)
        except InvalidInstance as exc:
            return stow.PartOutcome(
                exc.sop_class, exc.sop_instance, failure=stow.VALIDATION_FAILURE, message=str(exc)
            )
        except InvalidDicom as exc:
            return stow.PartOutcome(failure=stow.PROCESSING_FAILURE, message=str(exc))
        ident = InstanceId(instance.study, instance.series, instance.sop)
        outcome = stow.PartOutcome(instance.sop_class, instance.sop)
        try:
            if order is not None:
                await order.before_reserve()
            version = await self.index.reserve(ident)
            if order is not None:
                order.reserved.set()
            try:
                await self.blobs.put_file(blob_key(ident.partition, version), path)
                if order is not None:
                    await order.before_commit()
                await self.index.commit(version, _new_instance(ident, instance, size))
            except BaseException:
                await asyncio.shield(self._release(version))
                raise
        except AlreadyExists as exc:
            outcome.failure, outcome.message = stow.SOP_INSTANCE_ALREADY_EXISTS, str(exc)
            return outcome
        outcome.retrieve_path = bulk_path(ident.study, ident.series, ident.sop)
        outcome.warnings = instance.warnings
        return outcome

    def _describe(self, path: Path, size: int, study: str | None, strict):
        with open(path, "rb") as fp:
            parsed = read_part10(
                fp, size, self.settings.bulkdata_threshold, self.settings.max_inflated_size
            )

            def read_at(offset: int, length: int) -> bytes:
                fp.seek(offset)
                return fp.read(length)

            return ingest(
                parsed, read_at, self.settings.bulkdata_threshold, strict is not None, study,
                also_indexed=strict or frozenset(), max_elements=self.settings.max_elements,
            )  # fmt: skip

    async def _release(self, version: int) -> None:
        try:
            await self.index.abandon(version)  # its blob, if written, goes with the cleanup job
        except Exception:  # the cleanup job abandons it after the upload timeout
            log.exception("could not abandon store %s", version)


def _new_instance(ident: InstanceId, instance, size: int) -> NewInstance:
    return NewInstance(
        id=ident,
        sop_class=instance.sop_class,
        transfer_syntax=instance.transfer_syntax,
        size=size,
        metadata=instance.metadata,
        frames=instance.frames,
        bulk=instance.bulk,
        parse_on_read=instance.parse_on_read,
        search=instance.search,
        invalid=instance.invalid,
    )
