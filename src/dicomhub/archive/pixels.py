"""Pixel conversion use cases: instances and frames in another transfer syntax.

Decoding and encoding run in a Converter (the composition root gives a pool of worker
processes), one frame per task, so a large conversion neither stalls the event loop nor holds a
whole volume in memory.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Protocol

from dicomhub.archive.retrieve import RetrieveService
from dicomhub.dicom import codecs, render, transcode
from dicomhub.dicom.codecs import NATIVE, PixelInfo
from dicomhub.dicom.frames import FrameIndex
from dicomhub.dicom.transcode import Header
from dicomhub.errors import NotAcceptable, NotFound
from dicomhub.model import StoredInstance

_LITTLE_ENDIAN = NATIVE - {codecs.BIG_ENDIAN}
_WINDOW = 4  # frames converted ahead of the one being sent


class Converter(Protocol):
    """Runs conversions away from the event loop (workers/conversion.py: a process pool,
    built by the composition root)."""

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` elsewhere. What it raises there is the data's fault
        (ConversionFailed, 406); a failure to run it is the server's (ConversionCrashed, 500)."""


class PixelService:
    def __init__(self, retrieve: RetrieveService, converter: Converter, max_size: int):
        self.retrieve = retrieve
        self.converter = converter
        self.max_size = max_size
        self._headers: OrderedDict[str, Header] = OrderedDict()

    async def header(self, instance: StoredInstance) -> Header:
        """The stored data set up to Pixel Data (cached: instances are immutable)."""
        cached = self._headers.get(instance.blob_key)
        if cached is not None:
            self._headers.move_to_end(instance.blob_key)
            return cached
        index = _frame_index(instance)
        end = _pixel_start(index) if index else None
        prefix = await self.retrieve.blobs.read(instance.blob_key, 0, end)
        header = transcode.read_header(prefix)
        self._headers[instance.blob_key] = header
        if len(self._headers) > 256:
            self._headers.popitem(last=False)
        return header

    async def info(self, instance: StoredInstance) -> PixelInfo | None:
        """The Image Pixel module of the instance; None when it has no (integer) pixel data."""
        if not has_pixels(instance):
            return None
        header = await self.header(instance)
        info = PixelInfo.of(header.dataset)
        return info and replace(info, pixel_vr=header.pixel_vr)

    def targets(self, instance: StoredInstance, info: PixelInfo | None) -> frozenset[str]:
        """The syntaxes the instance can be converted to; with ``info`` None, judged by its
        syntax alone (before its header is read)."""
        if instance.size > self.max_size:
            return frozenset()
        source = instance.transfer_syntax
        if not has_pixels(instance):
            return frozenset(codecs.TARGETS)  # no pixels: any syntax holds the data set
        if info is None:
            return _syntax_targets(source)
        return frozenset(t for t in codecs.TARGETS if not codecs.cannot_encode(info, source, t))

    async def frames(
        self, instance: StoredInstance, numbers: list[int] | None, target: str
    ) -> list[bytes]:
        """Frames of the instance (1-based; None: all) in ``target``."""
        source = codecs.frame_syntax(instance.transfer_syntax)
        if target == source:
            return await self.retrieve.frames(instance, numbers)
        info = await self._convertible(instance, target)
        stored = await self.to_decode(instance, info, source, numbers)
        jobs = [self.converter.run(codecs.convert, info, source, target, f) for f in stored]
        return [data for data, _ in await asyncio.gather(*jobs)]

    async def to_decode(
        self, instance: StoredInstance, info: PixelInfo, source: str, numbers: list[int] | None
    ) -> list[bytes]:
        """The stored frames as the decoder needs them. 8-bit samples in big endian OW are
        swapped in 16-bit words, so the one frame of odd length has its last sample in the pad
        byte after it: that frame is read with its pad (pydicom decodes it so too)."""
        index = _frame_index(instance)
        if (
            source == codecs.BIG_ENDIAN
            and info.pixel_vr == "OW"
            and info.bits_allocated == 8
            and info.frames == 1
            and numbers in (None, [1])
            and index is not None
            and index.native is not None
            and codecs.frame_bytes(info) % 2
        ):
            offset, length, _ = index.native
            return [await self.retrieve.blobs.read(instance.blob_key, offset, length)]
        return await self.retrieve.frames(instance, numbers)

    async def instance(self, instance: StoredInstance, target: str) -> AsyncIterator[bytes]:
        """The instance as a PS3.10 file in ``target``, streamed. What can go wrong before the
        first frame is converted (size, syntax, image) is raised before this returns."""
        info = await self._convertible(instance, target) if has_pixels(instance) else None
        header = await self.header(instance)
        body = self._file(instance, header, info, target)
        head = await anext(body)
        if target == codecs.DEFLATED:
            return _deflated(head, body)
        return _prepend(head, body)

    def too_large(self, instance: StoredInstance) -> str:
        """Why the instance is not converted at all, or ""."""
        if instance.size <= self.max_size:
            return ""
        return (
            f"the instance is {instance.size} bytes, more than the {self.max_size} bytes "
            "dicomhub converts (max_conversion_size); ask for transfer-syntax=* to get it "
            "as stored"
        )

    async def _convertible(self, instance: StoredInstance, target: str) -> PixelInfo:
        if self.too_large(instance):
            raise NotAcceptable(self.too_large(instance))
        info = await self.info(instance)
        if info is None:
            raise NotAcceptable("the instance has no integer pixel data to convert")
        reason = codecs.cannot_encode(info, instance.transfer_syntax, target)
        if reason:
            raise NotAcceptable(f"cannot convert to {codecs.describe(target)}: {reason}")
        return info

    async def _file(self, instance, header, info, target) -> AsyncIterator[bytes]:
        """Header bytes first (after the first frame converted), then the pixel data."""
        dataset, source = header.dataset, instance.transfer_syntax
        was_lossy = _lossy(source) or dataset.get("LossyImageCompression") == "01"
        index = _frame_index(instance)
        if info is None:
            yield transcode.header_bytes(dataset, target, None, None, was_lossy)
            return
        if source in _LITTLE_ENDIAN - {codecs.DEFLATED} and target in NATIVE and index:
            offset, length, _ = index.native  # the same pixel bytes: copy the stored value
            yield transcode.header_bytes(dataset, target, info, None, was_lossy)
            yield transcode.native_pixels_header(length, header.pixel_vr)
            async for chunk in self.retrieve.content(instance, offset, length):
                yield chunk
            yield b"\x00" * (length % 2)
            return
        frames = self._converted(instance, info, target)
        if _lossy(target):  # the ratio goes in the header: convert every frame first
            converted = [item async for item in frames]
            size = sum(len(data) for data, _ in converted)
            ratio = round(codecs.frame_bytes(info) * len(converted) / max(1, size), 2)
            lossy = transcode.Lossy(ratio, codecs.SYNTAXES[target].method)
            yield transcode.header_bytes(dataset, target, converted[0][1], lossy, True)
            yield transcode.encapsulated_header()
            for data, _ in converted:
                yield transcode.fragment(data)
            yield transcode.SEQUENCE_END
            return
        first, out = await anext(frames)
        yield transcode.header_bytes(dataset, target, out, None, was_lossy)
        if target in NATIVE:
            length = len(first) * info.frames
            yield transcode.native_pixels_header(length, "OW" if out.bits_allocated > 8 else "OB")
            yield first
            async for data, _ in frames:
                yield data
            yield b"\x00" * (length % 2)
            return
        yield transcode.encapsulated_header()
        yield transcode.fragment(first)
        async for data, _ in frames:
            yield transcode.fragment(data)
        yield transcode.SEQUENCE_END

    async def _converted(self, instance, info, target):
        """(frame, its PixelInfo) for each frame, a few frames converted ahead."""
        source = codecs.frame_syntax(instance.transfer_syntax)
        if instance.parse_on_read:  # the file is parsed whole anyway
            stored = iter(await self.retrieve.frames(instance, None))
        pending: list[asyncio.Future] = []
        for number in range(1, info.frames + 1):
            if instance.parse_on_read:
                frame = next(stored)
            else:
                frame = (await self.to_decode(instance, info, source, [number]))[0]
            job = self.converter.run(codecs.convert, info, source, target, frame)
            pending.append(asyncio.ensure_future(job))
            if len(pending) >= _WINDOW:
                yield await pending.pop(0)
        for job in pending:
            yield await job


@functools.cache
def _syntax_targets(source: str) -> frozenset[str]:
    """What pixels stored in ``source`` can be converted to, before the image is known."""
    ok = codecs.decodable(source)
    return frozenset(t for t in codecs.TARGETS if ok or t in NATIVE)


def _lossy(uid: str) -> bool:
    syntax = codecs.SYNTAXES.get(uid)
    return bool(syntax and syntax.lossy)


def has_pixels(instance: StoredInstance) -> bool:
    return instance.frames is not None or instance.parse_on_read


def _frame_index(instance: StoredInstance) -> FrameIndex | None:
    return FrameIndex.from_json(json.loads(instance.frames)) if instance.frames else None


def _pixel_start(index: FrameIndex) -> int | None:
    """Where the pixel value starts: the stored bytes before it hold the whole header."""
    if index.native is not None:
        return index.native[0]
    if index.fragments:
        return index.fragments[0][0][0]
    return None


async def _prepend(head: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in body:
        yield chunk


async def _deflated(head: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    deflater = transcode.Deflater(transcode.meta_length(head))
    yield deflater.feed(head)
    async for chunk in body:
        yield deflater.feed(chunk)
    yield deflater.flush()


class RenderService:
    """Rendered images of frames, instances, series and studies (PS3.18 10.4.1.1.3)."""

    def __init__(self, pixels: PixelService):
        self.pixels = pixels

    async def frames(
        self, instance: StoredInstance, numbers: list[int], params: render.Params
    ) -> bytes:
        """The frames as one image (several: an animated GIF)."""
        pixels = self.pixels
        if pixels.too_large(instance):
            raise NotAcceptable(pixels.too_large(instance))
        info = await pixels.info(instance)
        if info is None and has_pixels(instance):
            defect = PixelInfo.defect((await pixels.header(instance)).dataset)
            raise NotAcceptable(
                f"SOP instance {instance.id.sop} cannot be rendered: its Image "
                f"Pixel module is invalid ({defect})"
            )
        if info is None:
            raise NotFound(f"SOP instance {instance.id.sop} has no pixel data to render")
        source = codecs.frame_syntax(instance.transfer_syntax)
        if not codecs.decodable(source):
            raise NotAcceptable(f"pixel data in {codecs.describe(source)} cannot be rendered")
        stored = await pixels.to_decode(instance, info, source, numbers)
        dataset = (await pixels.header(instance)).dataset
        looks = [render.presentation(dataset, n) for n in numbers]
        return await pixels.converter.run(render.render, info, source, stored, looks, params)

    async def instance(self, instance: StoredInstance, params: render.Params) -> bytes:
        """A single-frame image, or the first frame; as GIF, every frame, animated."""
        info = await self.pixels.info(instance)
        count = info.frames if info else 1
        numbers = list(range(1, count + 1)) if params.media == "image/gif" else [1]
        return await self.frames(instance, numbers, params)
