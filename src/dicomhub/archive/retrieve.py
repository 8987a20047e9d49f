"""WADO-RS use cases (PS3.18 section 10.4): instances, metadata, frames, bulk data.

Everything is served from what ingest recorded: metadata from the index, frames and bulk data as
ranged reads of the stored file. Only deflated data sets (no usable offsets) are parsed on read.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from dicomhub.dicom import bulkdata
from dicomhub.dicom.frames import FrameIndex, extract_bits
from dicomhub.dicom.json_model import with_base_url
from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model import Scope, StoredInstance
from dicomhub.storage.protocols import BlobStore, Instances

SOP_INSTANCE_UID = "00080018"
FRAME_LIST = re.compile(r"[1-9][0-9]{0,9}(,[1-9][0-9]{0,9})*")
_TAG_PATH = re.compile(r"^[0-9A-Fa-f]{8}(/\d{1,9}/[0-9A-Fa-f]{8})*$")


@dataclass(frozen=True)
class Metadata:
    body: bytes  # a DICOM JSON array
    etag: str


class RetrieveService:
    def __init__(self, index: Instances, blobs: BlobStore):
        self.index = index
        self.blobs = blobs

    async def instances(self, scope: Scope) -> list[StoredInstance]:
        found = await self.index.instances(scope)
        if not found:
            raise NotFound(_describe(scope) + " not found")
        return found

    def content(
        self, instance: StoredInstance, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The stored file (or a byte range of it), streamed."""
        return self.blobs.stream(instance.blob_key, offset, length)

    async def local_files(self, instances: list[StoredInstance]) -> list[BinaryIO] | None:
        """The stored files, open, when the blob store keeps local files: the web layer hands
        them to the kernel to send (zero-copy). None otherwise; NotFound when one is missing."""
        return await self.blobs.open_local([i.blob_key for i in instances])

    async def contents(self, instances: list[StoredInstance]) -> list[bytes]:
        """The stored files, whole, fetched together (one thread hop for local files, concurrent
        requests for object stores)."""
        return await self.blobs.read_many([i.blob_key for i in instances])

    async def metadata(self, scope: Scope, base_url: str) -> Metadata:
        items, etag = await self.index.metadata(scope)
        if not items:
            raise NotFound(_describe(scope) + " not found")
        body = b"[" + b",".join(items) + b"]"
        return Metadata(with_base_url(body, base_url), f'"{etag}"')

    async def metadata_of(self, scope: Scope, tags: frozenset[str]) -> dict[str, dict]:
        """The DICOM JSON of each instance in ``scope`` (by SOP Instance UID), only ``tags``
        of it kept: what a DICOMDIR needs of a large study, without holding all its metadata."""
        items, _ = await self.index.metadata(scope)
        out = {}
        for item in items:
            data = json.loads(item)
            sop = (data.get(SOP_INSTANCE_UID, {}).get("Value") or [""])[0]
            out[sop] = {tag: value for tag, value in data.items() if tag in tags}
        return out

    async def frames(self, instance: StoredInstance, numbers: list[int] | None) -> list[bytes]:
        """The bytes of each requested frame (1-based; None: every frame), as stored."""
        if instance.frames is None and not instance.parse_on_read:
            raise NotFound(f"SOP instance {instance.id.sop} has no pixel data")
        if instance.parse_on_read:
            data = await self.blobs.read(instance.blob_key)
            return await asyncio.to_thread(bulkdata.frames_by_parsing, data, numbers)
        index = FrameIndex.from_json(json.loads(instance.frames))
        if numbers is None:
            numbers = list(range(1, index.count + 1))
        missing = [n for n in numbers if not 1 <= n <= index.count]
        if missing:
            raise NotFound(
                f"frame {missing[0]} does not exist; the instance has {index.count} frame(s)"
            )
        out = []
        for number in numbers:
            frame = index.frame(number)
            pieces = [await self.blobs.read(instance.blob_key, o, n) for o, n in frame.ranges]
            data = b"".join(pieces)
            if frame.bit_length is not None:
                data = extract_bits(data, frame.bit_offset, frame.bit_length)
            out.append(data)
        return out

    def bulkdata_location(self, instance: StoredInstance, path: str) -> tuple[int, int] | None:
        """(offset, length) of a bulk data value in the stored file; None when not recorded
        (deflated data sets, or values whose place ingest could not vouch for)."""
        if not _TAG_PATH.match(path.strip("/")):
            raise NotFound(
                f"bulk data path {path[:80]!r} is not a tag path "
                "like 7FE00010 or 54000100/0/54001010"
            )
        if instance.parse_on_read:
            return None
        location = json.loads(instance.bulk or "{}").get(path.strip("/").upper())
        return tuple(location) if location else None

    async def bulkdata_by_parsing(self, instance: StoredInstance, path: str) -> bytes:
        data = await self.blobs.read(instance.blob_key)
        try:
            return await asyncio.to_thread(bulkdata.value_by_parsing, io.BytesIO(data), path)
        except KeyError as exc:
            raise NotFound(f"no bulk data at {path!r} in SOP instance {instance.id.sop}") from exc


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (PS3.18 section 8.3.5): positive integers (ASCII digits, at most
    10 of them: a frame count is a 32-bit number), comma-separated, as the OpenAPI document's
    FrameList pattern says."""
    if not FRAME_LIST.fullmatch(text):
        raise InvalidRequest(
            f"frame list {text[:100]!r} is invalid: frames are positive integers separated "
            "by commas"
        )
    return [int(piece) for piece in text.split(",")]


def _describe(scope: Scope) -> str:
    if scope.sop:
        return f"SOP instance {scope.sop}"
    if scope.series:
        return f"series {scope.series}"
    return f"study {scope.study}"
