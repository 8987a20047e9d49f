"""A blob store that also finds the files the index keeps itself.

An instance up to ``--index-blob-max`` bytes is committed with its index rows
(``NewInstance.blob``, the ``kept_blob`` table, SQLite or PostgreSQL): one sync of the index
makes the store durable, where a file of its own would cost a second sync (and, on many file
systems, a sync of its folder), and an object one a PUT. Everything else lives in the wrapped
store. Reads of a blob folder look there first (nearly every byte is there, and a miss costs
one failed open), then in the index; reads of an object store ask the index first (a miss
there costs a query, not a request to the object store). A kept file goes when the index
takes its deletion off the queue (``finish_blob_deletions``), so ``delete`` here is the wrapped
store's alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import NotFound
from dicomhub.model import blob_version
from dicomhub.storage.protocols import BlobStore, KeptBlobs


class KeptBlobStore:
    def __init__(self, blobs: BlobStore, index: KeptBlobs):
        self.blobs, self.index = blobs, index
        self.index_first = False  # known at start: whether the store keeps local files

    async def start(self) -> None:
        await self.blobs.start()
        self.index_first = await self.blobs.local_path("") is None

    async def put(self, key: str, body: bytes | Path) -> None:
        await self.blobs.put(key, body)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.index_first and (kept := await self._kept(key)) is not None:
            return _range(kept, offset, length)
        try:
            return await self.blobs.read(key, offset, length)
        except NotFound:
            if self.index_first:
                raise
            return _range(await self._found(key), offset, length)

    async def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        kept = await self._kept(key) if self.index_first else None
        if kept is None:
            chunks = self.blobs.stream(key, offset, length, chunk_size)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except NotFound:
                if self.index_first:
                    raise
                kept = await self._found(key)
            else:
                try:
                    yield first
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await chunks.aclose()
                return
        if kept := _range(kept, offset, length):
            yield kept

    async def local_path(self, key: str) -> Path | None:
        path = await self.blobs.local_path(key)
        if path is not None and not await asyncio.to_thread(path.is_file):
            return None  # kept by the index (or missing): read it
        return path

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
        if not self.index_first:
            try:
                return await self.blobs.read_many(keys)
            except NotFound:
                pass
        versions = [blob_version(key) for key in keys]
        kept = await self.index.kept_blobs([v for v in versions if v is not None])
        rest = [key for key, v in zip(keys, versions, strict=True) if v not in kept]
        found = dict(zip(rest, await self.blobs.read_many(rest), strict=True))
        return [kept[v] if v in kept else found[k] for k, v in zip(keys, versions, strict=True)]

    async def open_local(self, keys: Sequence[str]) -> list[BinaryIO] | None:
        try:
            return await self.blobs.open_local(keys)
        except NotFound:
            return None  # some are kept by the index (or missing): read, not sent from files

    async def delete(self, key: str) -> None:
        await self.blobs.delete(key)

    async def check(self) -> None:
        await self.blobs.check()

    async def close(self) -> None:
        await self.blobs.close()

    async def _kept(self, key: str) -> bytes | None:
        """The file the index keeps under ``key``; None when it keeps none."""
        version = blob_version(key)
        found = await self.index.kept_blobs([version]) if version is not None else {}
        return found.get(version)

    async def _found(self, key: str) -> bytes:
        if (kept := await self._kept(key)) is None:
            raise NotFound(f"blob {key} is missing")
        return kept


def _range(data: bytes, offset: int, length: int | None) -> bytes:
    return data[offset:] if length is None else data[offset : offset + length]
