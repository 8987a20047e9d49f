"""Unit tests of the pure DICOM core."""

from __future__ import annotations

import pytest

from dicomhub.dicom.frames import FrameIndex, extract_bits, index_frames
from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from dicomhub.dicom.parse import PixelElement
from dicomhub.dicom.validate import validate_string
from dicomhub.errors import InvalidDicom, InvalidRequest
from tests.helpers import BOUNDARY, multipart


def run_parser(body: bytes, chunk: int) -> list[tuple[dict, bytes]]:
    parser = MultipartParser(BOUNDARY)
    out = []
    for i in range(0, len(body), chunk):
        for event in parser.feed(body[i : i + chunk]):
            if isinstance(event, PartStart):
                out.append([event.headers, b""])
            elif isinstance(event, PartData):
                out[-1][1] += event.data
            else:
                assert isinstance(event, PartEnd)
    parser.close()
    return [tuple(p) for p in out]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_multipart_any_chunking(chunk):
    tricky = b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n--\r\n"  # almost a delimiter
    body = b"preamble\r\n" + multipart(b"first", ("application/x", tricky), (None, b""))
    parts = run_parser(body, chunk)
    assert [p[1] for p in parts] == [b"first", tricky, b""]
    assert parts[0][0] == {"content-type": "application/dicom"}
    assert parts[1][0] == {"content-type": "application/x"}
    assert parts[2][0] == {}


@pytest.mark.parametrize(
    "body",
    [b"", b"--" + BOUNDARY.encode() + b"\r\n\r\nno end", b"--" + BOUNDARY.encode() + b"XX"],
)
def test_multipart_malformed(body):
    with pytest.raises(InvalidRequest):
        run_parser(body, 5)


@pytest.mark.parametrize("chunk", [1, 3, 64 * 1024])
def test_multipart_padding_after_a_boundary_is_bounded(chunk):
    """Transport padding after a boundary is taken (a little, in any chunking) and dropped as
    it arrives; past 16 KiB the body is refused, before it is held (it was held and scanned
    again with every chunk: quadratic)."""
    dash = b"--" + BOUNDARY.encode()
    body = dash + b" \t \r\nContent-Type: application/dicom\r\n\r\nx\r\n" + dash + b"--"
    assert [p[1] for p in run_parser(body, chunk)] == [b"x"]
    parser = MultipartParser(BOUNDARY)
    list(parser.feed(dash))
    fed = 0
    with pytest.raises(InvalidRequest, match="padding"):
        while fed < 8 * 2**20:
            list(parser.feed(b" " * chunk if chunk > 1 else b" "))
            fed += chunk
            assert len(parser._buffer) < 2
    assert fed <= 16 * 1024 + chunk


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_multipart_tells_when_the_last_part_ends(chunk):
    """At each part's end the parser tells whether the closing delimiter was received
    already (STOW stores a request's only part without the pipeline); in doubt (the close
    not received yet) it says no."""
    body = multipart(b"first", b"second", b"third")
    parser = MultipartParser(BOUNDARY)
    closing = []
    for i in range(0, len(body), chunk):
        for event in parser.feed(body[i : i + chunk]):
            if isinstance(event, PartEnd):
                closing.append(parser.closing)
    parser.close()
    assert closing[:2] == [False, False]
    # the last part is known as the last when the "--" that closes the body came in the
    # chunk that completed its delimiter
    dash = b"--" + BOUNDARY.encode()
    end = body.rindex(dash + b"--") + len(dash) - 1  # the delimiter's last byte
    assert closing[2] is (end // chunk == (end + 2) // chunk)
    if chunk == 1:  # byte by byte: the close is not there yet
        assert closing[2] is False
    if chunk > len(body):  # the whole body at once, as small requests come
        assert closing[2] is True


@pytest.mark.parametrize(
    "vr, value, ok",
    [
        ("UI", "1.2.840.10008.1.2", True),
        ("UI", "1.2.abc", False),
        ("UI", "1" * 65, False),
        ("DA", "20240229", True),
        ("DA", "20230229", False),
        ("DA", "2024-01-01", False),
        ("TM", "235959.123456", True),
        ("TM", "2460", False),
        ("DT", "20240101120000.5+0100", True),
        ("DT", "20241301", False),
        ("AS", "045Y", True),
        ("AS", "45Y", False),
        ("IS", " -12 ", True),
        ("IS", "1A", False),
        ("IS", "99999999999", False),
        ("DS", "1.5e3", True),
        ("DS", "nan", False),
        ("CS", "ORIGINAL_1", True),
        ("CS", "lower", False),
        ("SH", "x" * 17, False),
        ("LO", "x" * 64, True),
        ("LO", "bad\x01char", False),
        ("PN", "Doe^John=ドウ^ジョン", True),
        ("PN", "x" * 65, False),
        ("LO", "padded\x00", True),
    ],
)
def test_validate(vr, value, ok):
    assert (validate_string(vr, value) is None) is ok


def test_one_bit_frames_are_realigned():
    # 3 frames of 2x2 one-bit pixels (4 bits each), packed least significant bit first.
    packed = bytes([0b10100110, 0b00001001])
    index = index_frames(PixelElement(0x7FE00010, 100, 2, False), 3, 4, lambda o, n: b"")
    assert index.count == 3
    frames = []
    for n in (1, 2, 3):
        frame = index.frame(n)
        ((offset, size),) = frame.ranges
        data = packed[offset - 100 : offset - 100 + size]
        frames.append(extract_bits(data, frame.bit_offset, frame.bit_length))
    assert frames == [bytes([0b0110]), bytes([0b1010]), bytes([0b1001])]
    assert FrameIndex.from_json(index.to_json()) == index


def encapsulated(fragments: list[bytes], offsets: list[int] | None = None) -> bytes:
    import struct

    bot = b"".join(struct.pack("<L", o) for o in offsets or [])
    out = struct.pack("<HHL", 0xFFFE, 0xE000, len(bot)) + bot
    for f in fragments:
        out += struct.pack("<HHL", 0xFFFE, 0xE000, len(f)) + f
    return out + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def frames_of(data: bytes, count: int) -> list[bytes]:
    index = index_frames(
        PixelElement(0x7FE00010, 0, 0xFFFFFFFF, True), count, 0, lambda o, n: data[o : o + n]
    )
    return [
        b"".join(data[o : o + n] for o, n in index.frame(i).ranges)
        for i in range(1, index.count + 1)
    ]


def test_encapsulated_frames_by_offset_table_and_markers():
    a1, a2, b1 = b"\xff\xd8aa", b"a2", b"\xff\xd8bb"
    with_bot = encapsulated([a1, a2, b1], [0, 8 + len(a1) + 8 + len(a2)])
    assert frames_of(with_bot, 2) == [a1 + a2, b1]
    assert frames_of(encapsulated([a1, a2, b1]), 2) == [a1 + a2, b1]  # by JPEG start markers
    assert frames_of(encapsulated([a1, b1]), 2) == [a1, b1]  # one fragment per frame
    assert frames_of(encapsulated([a1, a2]), 1) == [a1 + a2]
    with pytest.raises(InvalidDicom):
        frames_of(encapsulated([b"x1", b"x2", b"x3"]), 2)
    with pytest.raises(InvalidDicom):
        frames_of(encapsulated([a1])[:-8], 1)  # no sequence delimiter
