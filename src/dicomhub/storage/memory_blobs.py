"""BlobStore in memory, for tests and throwaway servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import NotFound, Unavailable


class MemoryBlobStore:
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    async def start(self) -> None:
        return None

    async def put(self, key: str, body: bytes | Path) -> None:
        if key in self._objects:
            raise Unavailable("blob store", f"object {key} already exists")
        if isinstance(body, Path):
            data = await asyncio.to_thread(body.read_bytes)
            await asyncio.to_thread(body.unlink, missing_ok=True)
        else:
            data = bytes(body)
        self._objects[key] = data

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._get(key)
        return data[offset:] if length is None else data[offset : offset + length]

    async def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        data = await self.read(key, offset, length)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def local_path(self, key: str) -> Path | None:
        return None

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
        return [self._get(key) for key in keys]

    async def open_local(self, keys: Sequence[str]) -> list[BinaryIO] | None:
        return None

    async def delete(self, key: str) -> None:
        self._objects.pop(key, None)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def keys(self) -> list[str]:
        return sorted(self._objects)

    def _get(self, key: str) -> bytes:
        try:
            return self._objects[key]
        except KeyError as exc:
            raise NotFound(f"blob {key} is missing") from exc
