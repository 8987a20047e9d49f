"""A ZIP archive written as a stream (PKWARE APPNOTE 6.3): entries stored (not compressed),
each followed by a data descriptor, so an entry's bytes go out as they arrive and nothing but
the central directory (a few dozen bytes per entry) is held until the end. ZIP64 records are
written when an entry or the archive passes 4 GiB.

DICOM files are mostly compressed pixel data already; storing them keeps the CPU free and the
archive's size known in advance (``archive_size``) when every entry's size is.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from datetime import datetime

_LOCAL, _DESCRIPTOR, _CENTRAL = 0x04034B50, 0x08074B50, 0x02014B50
_END, _END64, _LOCATOR64 = 0x06054B50, 0x06064B50, 0x07064B50
_FLAGS = 0x0008  # bit 3: CRC and sizes follow the data, in the data descriptor
_MAX32, _MAX16 = 0xFFFFFFFF, 0xFFFF
_VERSION, _VERSION64 = 20, 45
_EXTRA64_LOCAL = struct.pack("<HHQQ", 0x0001, 16, 0, 0)  # says the descriptor has 8-byte sizes


@dataclass
class _Entry:
    name: bytes
    offset: int
    dos: tuple[int, int]
    zip64: bool
    crc: int = 0
    size: int = 0


def _dos(when: datetime) -> tuple[int, int]:
    """MS-DOS date and time (2-second resolution, from 1980)."""
    year = min(max(when.year, 1980), 2107)
    return (
        ((year - 1980) << 9) | (when.month << 5) | when.day,
        (when.hour << 11) | (when.minute << 5) | (when.second // 2),
    )


class ZipWriter:
    """Produces the bytes of an archive piece by piece: ``begin`` an entry, ``feed`` its data,
    ``end`` it; ``finish`` writes the central directory."""

    def __init__(self):
        self.entries: list[_Entry] = []
        self.position = 0
        self._current: _Entry | None = None

    def begin(self, name: str, when: datetime, size: int | None = None) -> bytes:
        """The local header of an entry of ``size`` bytes (None: not known yet; then the
        entry is written as ZIP64, which any size fits)."""
        zip64 = size is None or size >= _MAX32
        entry = _Entry(name.encode("ascii"), self.position, _dos(when), zip64)
        extra = _EXTRA64_LOCAL if zip64 else b""
        head = struct.pack(
            "<IHHHHHIIIHH",
            _LOCAL,
            _VERSION64 if zip64 else _VERSION,
            _FLAGS,
            0,  # stored
            entry.dos[1],
            entry.dos[0],
            0,  # CRC and sizes: in the data descriptor (ZIP64: the sizes say see the extra)
            _MAX32 if zip64 else 0,
            _MAX32 if zip64 else 0,
            len(entry.name),
            len(extra),
        )
        self._current = entry
        return self._out(head + entry.name + extra)

    def feed(self, data: bytes) -> bytes:
        entry = self._current
        entry.crc = zlib.crc32(data, entry.crc)
        entry.size += len(data)
        self.position += len(data)
        return data

    def end(self) -> bytes:
        entry, self._current = self._current, None
        self.entries.append(entry)
        if entry.zip64:
            return self._out(struct.pack("<IIQQ", _DESCRIPTOR, entry.crc, entry.size, entry.size))
        return self._out(struct.pack("<IIII", _DESCRIPTOR, entry.crc, entry.size, entry.size))

    def whole(self, name: str, when: datetime, data: bytes) -> bytes:
        """An entry whose bytes are all at hand."""
        return self.begin(name, when, len(data)) + self.feed(data) + self.end()

    def finish(self) -> bytes:
        start = self.position
        central = b"".join(self._central(e) for e in self.entries)
        self._out(central)
        count, size = len(self.entries), len(central)
        tail = b""
        if count >= _MAX16 or start >= _MAX32 or size >= _MAX32:
            end64 = self.position
            tail += struct.pack(
                "<IQHHIIQQQQ", _END64, 44, _VERSION64, _VERSION64, 0, 0, count, count, size, start
            )
            tail += struct.pack("<IIQI", _LOCATOR64, 0, end64, 1)
        tail += struct.pack(
            "<IHHHHIIH",
            _END,
            0,
            0,
            min(count, _MAX16),
            min(count, _MAX16),
            min(size, _MAX32),
            min(start, _MAX32),
            0,
        )
        return central + self._out(tail)

    def _central(self, e: _Entry) -> bytes:
        big = e.size >= _MAX32, e.size >= _MAX32, e.offset >= _MAX32
        extra = b""
        if any(big):
            values = [v for v, b in zip((e.size, e.size, e.offset), big, strict=True) if b]
            extra = struct.pack(f"<HH{len(values)}Q", 0x0001, 8 * len(values), *values)
        return (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                _CENTRAL,
                _VERSION64 if e.zip64 or extra else _VERSION,  # made by (MS-DOS)
                _VERSION64 if e.zip64 or extra else _VERSION,
                _FLAGS,
                0,
                e.dos[1],
                e.dos[0],
                e.crc,
                min(e.size, _MAX32),
                min(e.size, _MAX32),
                len(e.name),
                len(extra),
                0,
                0,
                0,
                0,
                min(e.offset, _MAX32),
            )
            + e.name
            + extra
        )

    def _out(self, data: bytes) -> bytes:
        self.position += len(data)
        return data


def archive_size(entries: list[tuple[str, int]]) -> int:
    """The size of the archive ``ZipWriter`` writes for these (name, size) entries, all sizes
    known in advance: what a response's Content-Length says before the first byte."""
    writer = ZipWriter()
    epoch = datetime(1980, 1, 1)
    for name, size in entries:
        writer.begin(name, epoch, size)
        writer.position += size
        writer._current.size = size
        writer.end()
    writer.finish()
    return writer.position
