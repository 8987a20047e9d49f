"""The bytes of one received part: kept in memory while small (most instances), spooled to a
local temporary file past ``memory_limit``, so parsing never needs a large body in memory."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import DicomhubError, storage_error

MEMORY_LIMIT = 1024 * 1024  # parts up to this size never touch the disk before their blob


class PartBody:
    """A part being received chunk by chunk, with a size limit (``too_large`` once past it:
    the rest is dropped, the part fails)."""

    def __init__(self, folder: Path, limit: int, memory_limit: int = MEMORY_LIMIT):
        self.folder, self.limit, self.memory_limit = folder, limit, memory_limit
        self.size = 0
        self.too_large = False
        self.path: Path | None = None  # set once spooled
        self._chunks: list[bytes | memoryview] = []
        self._file: BinaryIO | None = None

    @classmethod
    def of(cls, data: bytes) -> PartBody:
        """A body received whole (e.g. by the DIMSE service)."""
        body = cls(Path(), len(data), len(data))
        body.size = len(data)
        body._chunks.append(data)
        return body

    async def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
            self._chunks.clear()
            return
        if self.path is None and self.size <= self.memory_limit:
            self._chunks.append(chunk)
            return
        try:
            if self.path is None:
                await asyncio.to_thread(self._spill)
            if len(chunk) > 256 * 1024:
                await asyncio.to_thread(self._file.write, chunk)
            else:
                self._file.write(chunk)
        except OSError as exc:
            raise storage_error("spool", exc) from exc

    def _spill(self) -> None:
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._file.write(b"".join(self._chunks))
        self._chunks.clear()

    @property
    def data(self) -> bytes | None:
        """The bytes, when kept in memory (else None: read ``path``)."""
        if self.path is not None:
            return None
        chunks = self._chunks
        if len(chunks) > 1 or (chunks and not isinstance(chunks[0], bytes)):  # or one view
            chunks[:] = [b"".join(chunks)]
        return chunks[0] if chunks else b""

    def open(self) -> BinaryIO:
        """A file object over the bytes (closed by the caller)."""
        data = self.data
        return io.BytesIO(data) if data is not None else open(self.path, "rb")  # noqa: SIM115

    def close(self) -> None:
        """The part is complete."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()  # flushes what is buffered: may find no space left
            except OSError as exc:
                raise storage_error("spool", exc) from exc

    def discard(self) -> None:
        try:
            self.close()
        except DicomhubError:
            pass  # its file goes anyway
        finally:
            self._chunks.clear()
            if self.path is not None:
                self.path.unlink(missing_ok=True)


def clear_spool(folder: Path) -> int:
    """Remove files left by requests that were cut off (start-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in folder.glob("*.part"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed
