"""Spool request bodies to local temporary files so parsing never needs the body in memory."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path


class SpoolFile:
    """A temporary file being written chunk by chunk, with a size limit."""

    def __init__(self, folder: Path, limit: int):
        fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.size = 0
        self.limit = limit
        self.too_large = False

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
            return
        if len(chunk) > 256 * 1024:
            await asyncio.to_thread(self._file.write, chunk)
        else:
            self._file.write(chunk)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def clear_spool(folder: Path) -> int:
    """Remove files left by requests that were cut off (start-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in folder.glob("*.part"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed
