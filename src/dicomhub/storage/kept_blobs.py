"""A blob store that also finds the files the index keeps itself.

On an SQLite index, an instance up to ``--index-blob-max`` bytes is committed with its index
rows (``NewInstance.blob``, the ``kept_blob`` table): one sync of the index makes the store
durable, where a file of its own would cost a second sync (and, on many file systems, a sync of
its folder). Everything else lives in the wrapped store. Reads look there first (nearly every
byte is there, and a miss costs one failed open), then in the index. A kept file goes when the
index takes its deletion off the queue (``finish_blob_deletions``), so ``delete`` here is the
wrapped store's alone.
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

    async def start(self) -> None:
        await self.blobs.start()

    async def put(self, key: str, body: bytes | Path) -> None:
        await self.blobs.put(key, body)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            return await self.blobs.read(key, offset, length)
        except NotFound:
            return _range(await self._kept(key), offset, length)

    async def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        chunks = self.blobs.stream(key, offset, length, chunk_size)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return
        except NotFound:
            kept = _range(await self._kept(key), offset, length)
            if kept:
                yield kept
            return
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def local_path(self, key: str) -> Path | None:
        path = await self.blobs.local_path(key)
        if path is not None and not await asyncio.to_thread(path.is_file):
            return None  # kept by the index (or missing): read it
        return path

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
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

    async def _kept(self, key: str) -> bytes:
        version = blob_version(key)
        found = await self.index.kept_blobs([version]) if version is not None else {}
        if version not in found:
            raise NotFound(f"blob {key} is missing")
        return found[version]


def _range(data: bytes, offset: int, length: int | None) -> bytes:
    return data[offset:] if length is None else data[offset : offset + length]
