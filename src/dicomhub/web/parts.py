"""The parts of a WADO-RS retrieve response: each instance as stored or converted, and the
multipart body of many, sent in fewer, larger writes and, when the server offers it, by the
kernel (zero-copy, see web/zerocopy.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from dicomhub.dicom.multipart import PART_END, closing, part_header
from dicomhub.errors import ConversionCrashed, NotAcceptable
from dicomhub.model import StoredInstance
from dicomhub.web.common import Body, FileRange, close_stream

log = logging.getLogger(__name__)

DICOM = "application/dicom"
# Pieces this small (part headers and ends, small instances) go out joined, up to this many
# bytes a write; a stored file this small is read with its neighbours, not sent on its own.
SMALL = 64 * 1024
# Multipart retrieval: stored instances opened (zero-copy) or read (not) per thread hop. Reads
# stay small: larger batches of buffers in flight made glibc give their memory back to the
# kernel and fault it in again each time (2 MiB: 12,500 page faults per 268 MB study; 1 MiB: 0).
BATCH_FILES = 16
BATCH_BYTES = 1024 * 1024


class Part:
    """One instance of a retrieve response, as stored or converted."""

    def __init__(self, the_archive, instance: StoredInstance, syntax: str):
        self.archive, self.instance, self.syntax = the_archive, instance, syntax
        self.converted = syntax != instance.transfer_syntax
        self.size = None if self.converted else instance.size

    @property
    def media(self) -> str:
        return f"{DICOM}; transfer-syntax={self.syntax}"

    async def open(self, fallback: bool = False, local: bool = False) -> Body:
        """The part's bytes; with ``fallback``, an instance that cannot be converted (known only
        once its header is read) goes as stored, and its part's Content-Type says so. With
        ``local`` (the server sends files itself), a stored file comes as a ``FileRange``."""
        if self.converted:
            try:
                return await self.archive.pixels.instance(self.instance, self.syntax)
            except (NotAcceptable, ConversionCrashed) as exc:
                if not fallback:
                    raise
                if isinstance(exc, ConversionCrashed):  # the server's failure: logged
                    log.error("converting %s failed: %s", self.instance.id.sop, exc)
                self.syntax, self.converted = self.instance.transfer_syntax, False
                self.size = self.instance.size
        if local:
            files = await self.archive.retrieve.local_files([self.instance])
            if files is not None:
                return FileRange(files[0], 0, self.instance.size)
        return await primed(self.archive.retrieve.content(self.instance))


class MultipartBody:
    """The parts of a multipart retrieve, each after its header. Stored instances go in batches:
    several files opened (``local``: the server sends them) or read per thread hop, the next batch
    fetched while this one is sent, so the socket never waits for a hop."""

    def __init__(self, retrieve, parts: list[Part], boundary: str, local: bool):
        self.retrieve, self.parts, self.boundary, self.local = retrieve, parts, boundary, local
        self.batches: list[list[Part]] = []
        self.first: list = []

    async def prime(self) -> None:
        if self.local:  # does the blob store keep local files?
            self.local = await self.retrieve.local_files([]) is not None
        self.batches = _batches(self.parts, self.local)
        self.first = await self._fetch(self.batches[0])

    async def _fetch(self, batch: list[Part]) -> list[Body | bytes]:
        if len(batch) == 1 and _alone(batch[0], self.local):
            return [await batch[0].open(fallback=True, local=self.local)]
        if not self.local:
            return await self.retrieve.contents([p.instance for p in batch])
        # Small files are read (and joined with their neighbours into larger writes): a send of
        # its own would cost more than their bytes.
        small = [p.instance for p in batch if p.size <= SMALL]
        large = [p.instance for p in batch if p.size > SMALL]
        data, files = await asyncio.gather(
            self.retrieve.contents(small) if small else _nothing(),
            self.retrieve.local_files(large) if large else _nothing(),
            return_exceptions=True,
        )
        if isinstance(data, BaseException):
            for file in files if isinstance(files, list) else []:
                file.close()
            raise data
        if isinstance(files, BaseException):
            raise files
        if files is None:  # not all of them are files (the index keeps small ones): read them
            return await self.retrieve.contents([p.instance for p in batch])
        data, files = iter(data), iter(files)
        return [next(data) if p.size <= SMALL else FileRange(next(files), 0, p.size) for p in batch]

    async def pieces(self) -> AsyncIterator[bytes | FileRange]:
        joined = Joined()
        sources, ahead = self.first, None
        try:
            for n, batch in enumerate(self.batches):
                if n:
                    sources, ahead = await ahead, None
                if n + 1 < len(self.batches):
                    ahead = asyncio.ensure_future(self._fetch(self.batches[n + 1]))
                for part, source in zip(batch, sources, strict=True):
                    joined.hold(part_header(self.boundary, part.media))
                    if isinstance(source, bytes | FileRange):
                        for piece in joined.add(source):
                            yield piece
                    else:
                        async for chunk in source:
                            for piece in joined.add(chunk):
                                yield piece
                    joined.hold(PART_END)
            joined.hold(closing(self.boundary))
            for piece in joined.flush():
                yield piece
        finally:
            _close(sources)
            if ahead is not None:  # not cancelled: its thread would open files nobody closes
                ahead.add_done_callback(
                    lambda f: f.cancelled() or f.exception() or _close(f.result())
                )


async def _nothing() -> list:
    return []


class Joined:
    """Fewer, larger writes: small pieces (part headers and ends, small instances) are held and
    go out joined, up to SMALL bytes a write; a large piece goes as it is, after them."""

    def __init__(self):
        self.held: list[bytes] = []
        self.size = 0

    def hold(self, piece: bytes) -> None:
        """A piece that goes out with what follows it (a part header, a part's end)."""
        self.held.append(piece)
        self.size += len(piece)

    def add(self, piece: bytes | FileRange) -> list[bytes | FileRange]:
        """Content: what to send now."""
        if isinstance(piece, bytes) and len(piece) <= SMALL:
            self.hold(piece)
            return self.flush() if self.size >= SMALL else []
        return [*self.flush(), piece]

    def flush(self) -> list[bytes]:
        if not self.held:
            return []
        out = b"".join(self.held)
        self.held, self.size = [], 0
        return [out]


def _batches(parts: list[Part], local: bool) -> list[list[Part]]:
    """Consecutive stored parts, at most BATCH_FILES (and BATCH_BYTES read into memory) a batch;
    a part converted, or too large to read whole, is a batch of its own."""
    out: list[list[Part]] = []
    size = 0
    for part in parts:
        last = out[-1] if out else None
        if (
            last
            and not _alone(part, local)
            and not _alone(last[0], local)
            and len(last) < BATCH_FILES
            and (local or size + part.size <= BATCH_BYTES)
        ):
            last.append(part)
            size += part.size
        else:
            out.append([part])
            size = part.size or 0
    return out


def _alone(part: Part, local: bool) -> bool:
    return part.converted or (not local and part.size > BATCH_BYTES)


def _close(sources) -> None:
    """Close the files of sources not (or not wholly) sent; a stream's generator closes its
    own, soon (a task of its own: this may run where nothing can be awaited)."""
    for source in sources or []:
        if isinstance(source, FileRange):
            source.file.close()
        elif hasattr(source, "aclose"):
            asyncio.ensure_future(source.aclose())


async def primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream`` with its first chunk read already: a missing blob or an unavailable store
    fails the request with its proper status before the response starts."""
    first = await anext(stream, None)

    async def whole() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first
            async for chunk in stream:
                yield chunk
        finally:
            await close_stream(stream)

    return whole()
