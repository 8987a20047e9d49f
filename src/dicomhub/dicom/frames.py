"""Frame byte ranges, computed once at ingest (PS3.5 section 8.2 and annex A.4).

A frame of a stored instance is then a ranged read of the original file, not a parse:
native frames are arithmetic on the Pixel Data value offset, encapsulated frames come from the
fragment item headers and the (Extended) Basic Offset Table.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dicomhub.dicom.parse import PixelElement
from dicomhub.errors import InvalidDicom

ReadAt = Callable[[int, int], bytes]

ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f", b"\x00\x00\x00\x0cjP  ")  # JPEG/-LS, J2K, JP2


@dataclass(frozen=True)
class Frame:
    """Where one frame's bytes are: concatenated ranges, then (native 1-bit) a bit window."""

    ranges: tuple[tuple[int, int], ...]
    bit_offset: int = 0
    bit_length: int | None = None  # set only when the frame does not start on a byte


@dataclass(frozen=True)
class FrameIndex:
    count: int
    native: tuple[int, int, int] | None = None  # (value offset, value length, frame bits)
    fragments: tuple[tuple[tuple[int, int], ...], ...] | None = None  # per encapsulated frame

    def frame(self, number: int) -> Frame:
        """Frame ``number`` (1-based, PS3.18 section 8.3.5)."""
        if not 1 <= number <= self.count:
            raise IndexError(number)
        if self.fragments is not None:
            return Frame(self.fragments[number - 1])
        offset, _, frame_bits = self.native
        first_bit = (number - 1) * frame_bits
        if frame_bits % 8 == 0:
            return Frame(((offset + first_bit // 8, frame_bits // 8),))
        shift = first_bit % 8
        size = (shift + frame_bits + 7) // 8
        return Frame(((offset + first_bit // 8, size),), shift, frame_bits)

    def to_json(self) -> dict:
        if self.fragments is not None:
            return {"count": self.count, "fragments": [list(map(list, f)) for f in self.fragments]}
        return {"count": self.count, "native": list(self.native)}

    @classmethod
    def from_json(cls, data: dict) -> FrameIndex:
        if "fragments" in data:
            frags = tuple(tuple((o, n) for o, n in f) for f in data["fragments"])
            return cls(data["count"], fragments=frags)
        return cls(data["count"], native=tuple(data["native"]))


def extract_bits(data: bytes, bit_offset: int, bit_length: int) -> bytes:
    """Re-align a bit window of 1-bit packed pixel data (least significant bit first)."""
    value = int.from_bytes(data, "little") >> bit_offset
    value &= (1 << bit_length) - 1
    return value.to_bytes((bit_length + 7) // 8, "little")


def native_frame_bits(
    rows: int, columns: int, samples: int, bits_allocated: int, photometric: str
) -> int:
    bits = rows * columns * samples * bits_allocated
    if photometric == "YBR_FULL_422":  # two chroma samples are shared by each pixel pair
        bits = rows * columns * 2 * bits_allocated
    return bits


def index_frames(
    pixel: PixelElement,
    number_of_frames: int,
    frame_bits: int,
    read_at: ReadAt,
    extended_offsets: tuple[list[int], list[int]] | None = None,
) -> FrameIndex:
    """Build the frame index of a pixel data element; raises InvalidDicom when it is corrupt."""
    number_of_frames = max(1, number_of_frames)
    if not pixel.encapsulated:
        if frame_bits <= 0:
            return FrameIndex(0, native=(pixel.offset, pixel.length, 1))
        available = (pixel.length * 8) // frame_bits
        return FrameIndex(
            min(number_of_frames, available), native=(pixel.offset, pixel.length, frame_bits)
        )
    items = _items(pixel.offset, read_at)
    if not items:
        raise InvalidDicom("encapsulated pixel data has no Basic Offset Table item")
    bot_item, fragments = items[0], items[1:]
    if not fragments:
        return FrameIndex(0, fragments=())
    base = fragments[0][0] - 8  # offsets count from the first fragment's item tag
    if extended_offsets and extended_offsets[0]:
        starts, lengths = extended_offsets
        frames = tuple(((base + s + 8, n),) for s, n in zip(starts, lengths, strict=False))
        return FrameIndex(len(frames), fragments=frames)
    bot = _offset_table(bot_item, read_at)
    if bot:
        return FrameIndex(len(bot), fragments=_group_by_offsets(fragments, base, bot))
    if number_of_frames == 1:
        return FrameIndex(1, fragments=(tuple(fragments),))
    if len(fragments) == number_of_frames:
        return FrameIndex(number_of_frames, fragments=tuple((f,) for f in fragments))
    starts = [i for i, (o, n) in enumerate(fragments) if _starts_frame(read_at(o, min(n, 12)))]
    if len(starts) != number_of_frames or (starts and starts[0] != 0):
        raise InvalidDicom(
            f"cannot tell the {number_of_frames} frames apart among {len(fragments)} fragments "
            "(no offset table and no frame start markers)"
        )
    bounds = starts + [len(fragments)]
    frames = tuple(tuple(fragments[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    return FrameIndex(number_of_frames, fragments=frames)


def _items(offset: int, read_at: ReadAt) -> list[tuple[int, int]]:
    """(value offset, length) of each item of an encapsulated value, up to the delimiter."""
    items = []
    pos = offset
    while True:
        header = read_at(pos, 8)
        if len(header) < 8:
            raise InvalidDicom("encapsulated pixel data ends without a sequence delimiter")
        group, element, length = struct.unpack("<HHL", header)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            return items
        if tag != ITEM or length == 0xFFFFFFFF:
            raise InvalidDicom(f"unexpected element ({group:04X},{element:04X}) in pixel data")
        items.append((pos + 8, length))
        pos += 8 + length


def _offset_table(item: tuple[int, int], read_at: ReadAt) -> list[int]:
    offset, length = item
    if length == 0:
        return []
    if length % 4:
        raise InvalidDicom("the Basic Offset Table length is not a multiple of 4")
    data = read_at(offset, length)
    return list(struct.unpack(f"<{length // 4}L", data))


def _group_by_offsets(fragments, base: int, offsets: list[int]):
    frames: list[list[tuple[int, int]]] = [[] for _ in offsets]
    index = 0
    for value_offset, length in fragments:
        relative = value_offset - 8 - base
        while index + 1 < len(offsets) and relative >= offsets[index + 1]:
            index += 1
        frames[index].append((value_offset, length))
    return tuple(tuple(f) for f in frames)


def _starts_frame(head: bytes) -> bool:
    return any(head.startswith(marker) for marker in _FRAME_STARTS)
