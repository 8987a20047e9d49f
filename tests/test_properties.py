"""Property-based tests (hypothesis) of the parsers that take client input: the multipart
parser, the DICOM JSON encoder (and the PS3.10 reader before it), the QIDO-RS and media type
parsers. Each property runs a bounded number of derandomised examples, so CI time is fixed."""

from __future__ import annotations

import io
import warnings
from datetime import date, timedelta

import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomhub.dicom import json_model
from dicomhub.dicom.json_model import encode_dataset
from dicomhub.dicom.levels import Level
from dicomhub.dicom.mediatype import parse_accept, parse_media_type
from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from dicomhub.dicom.parse import read_part10
from dicomhub.dicom.query import Match, parse_query
from dicomhub.errors import InvalidDicom, InvalidRequest, NotAcceptable
from tests.hostile import element

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- multipart ------------------------------------------------------------------------------

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
boundaries = st.text(BOUNDARY_CHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
# part bodies made of the bytes that matter to a parser: CR, LF, dashes, boundary fragments
fragments = st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"x", b"\x00", b"DICM"])
bodies = st.lists(st.one_of(fragments, st.binary(max_size=40)), max_size=30).map(b"".join)


def encode(boundary: str, parts: list[tuple[dict[str, str], bytes]], preamble: bytes) -> bytes:
    out = preamble + (b"\r\n" if preamble else b"")
    for headers, body in parts:
        out += f"--{boundary}\r\n".encode()
        out += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        out += b"\r\n" + body + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue".encode()


def feed_all(parser: MultipartParser, data: bytes, cuts: list[int]) -> list:
    events = []
    at = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        events += list(parser.feed(data[at:cut]))
        at = cut
    parser.close()
    return events


@BOUNDED
@given(
    boundary=boundaries,
    parts=st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from(["content-type", "content-location", "x-note"]),
                st.text("abcdefghij/;=. -", min_size=1, max_size=30).map(str.strip).filter(bool),
                max_size=3,
            ),
            bodies,
        ),
        max_size=6,
    ),
    preamble=st.binary(max_size=30).filter(lambda p: b"--" not in p),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_multipart_round_trip_in_any_chunking(boundary, parts, preamble, cuts):
    """Whatever the part bodies hold and wherever the chunks are cut, the parser gives back
    exactly the parts that were encoded."""
    delimiter = f"\r\n--{boundary}".encode()
    assume(all(delimiter not in b"\r\n" + body for _, body in parts))
    assume(f"--{boundary}".encode() not in preamble)
    events = feed_all(MultipartParser(boundary), encode(boundary, parts, preamble), cuts)
    decoded, current = [], None
    for event in events:
        if isinstance(event, PartStart):
            current = (event.headers, bytearray())
        elif isinstance(event, PartData):
            current[1].extend(event.data)
        elif isinstance(event, PartEnd):
            decoded.append((current[0], bytes(current[1])))
    assert decoded == [(headers, body) for headers, body in parts]


@BOUNDED
@given(
    boundary=boundaries,
    bodies=st.lists(
        st.lists(st.one_of(fragments, st.binary(min_size=50, max_size=400)), max_size=12).map(
            b"".join
        ),
        min_size=1,
        max_size=4,
    ),
    step=st.integers(min_value=-2, max_value=8),
)
def test_multipart_round_trip_in_chunks_about_a_delimiter_long(boundary, bodies, step):
    """Chunks of one size, from a byte shorter than the delimiter to several times it: a
    chunk inside a body goes out as it came (not joined to the held tail), and a delimiter
    that starts in the held tail, in the chunk or across both is still found."""
    delimiter = f"\r\n--{boundary}".encode()
    assume(all(delimiter not in b"\r\n" + body for body in bodies))
    size = len(delimiter) + step if step <= 2 else len(delimiter) * step
    data = encode(boundary, [({}, body) for body in bodies], b"")
    parser = MultipartParser(boundary)
    events = [e for at in range(0, len(data), size) for e in parser.feed(data[at : at + size])]
    parser.close()
    decoded, current = [], bytearray()
    for event in events:
        if isinstance(event, PartData):
            current.extend(event.data)
        elif isinstance(event, PartEnd):
            decoded.append(bytes(current))
            current = bytearray()
    assert decoded == bodies


@BOUNDED
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_multipart_parser_rejects_junk_cleanly(data, cuts):
    """Any bytes at all: events or InvalidRequest, never another exception."""
    for prefix in (b"", b"--b\r\n", b"--b\r\nContent-Type: application/dicom\r\n\r\n"):
        try:
            feed_all(MultipartParser("b"), prefix + data, cuts)
        except InvalidRequest:
            pass


# -- DICOM JSON -----------------------------------------------------------------------------

STRING_VRS = sorted(json_model.STRING_VRS)
BINARY_VRS = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}
# raw value bytes close to what trips encoders: separators, padding, signs, dots, exponents
value_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"\\", b" ", b"\x00", b"^", b"=", b".", b"-", b"+", b"e", b"E", b"*"]),
        st.binary(min_size=1, max_size=6).filter(lambda b: b.isascii()),
        st.sampled_from([b"1", b"12", b"1.5", b"20200101", b"101530", b"DOE^JOHN", b"\xe9"]),
    ),
    max_size=12,
).map(b"".join)


@st.composite
def datasets(draw) -> bytes:
    """A PS3.10 file (Explicit VR Little Endian) of random private elements of every common
    VR, with raw values that may well be invalid."""
    ds = Dataset()
    ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192", "ISO_IR 6"]))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.write(element(0x0099, 0x0010, b"LO", b"PROPERTY"))
    for n in range(draw(st.integers(1, 12))):
        vr = draw(st.sampled_from(STRING_VRS + list(BINARY_VRS)))
        if vr in BINARY_VRS:
            raw = draw(st.binary(max_size=3 * BINARY_VRS[vr]))
            raw = raw[: len(raw) - len(raw) % BINARY_VRS[vr]]
        else:
            raw = draw(value_bytes)
            raw += b" " * (len(raw) % 2)
        out.write(element(0x0099, 0x1000 + n, vr.encode(), raw))
    return out.getvalue()


@BOUNDED
@given(data=datasets())
def test_dicom_json_equals_pydicom_or_reports_the_element(data):
    """Every element either comes out exactly as pydicom's own DICOM JSON encoder writes it, or
    is reported as invalid (and left out): the fast path never writes something else."""
    parsed = read_part10(io.BytesIO(data), len(data), 1024)
    encoded = encode_dataset(parsed.dataset, 1024, lambda path: path)
    reference = pydicom.dcmread(io.BytesIO(data))
    invalid = {path for path, _ in encoded.errors}
    for elem in reference:
        key = f"{elem.tag:08X}"
        if key in invalid:
            assert key not in encoded.json
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = elem.to_json_dict(1024, lambda *_: None)
        assert encoded.json[key] == expected, (elem.VR, elem.value)


@BOUNDED
@given(
    data=datasets(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 10_000),
)
def test_a_damaged_file_is_refused_cleanly(data, edits, cut):
    """Bytes overwritten and the file cut anywhere: the reader and the encoder either work or
    raise InvalidDicom, never anything else."""
    damaged = bytearray(data)
    for at, value in edits:
        damaged[at % len(damaged)] = value
    damaged = bytes(damaged[: max(1, len(damaged) - cut % len(damaged))])
    try:
        parsed = read_part10(io.BytesIO(damaged), len(damaged), 1024)
        encode_dataset(parsed.dataset, 1024, lambda path: path)
    except InvalidDicom:
        pass


# -- QIDO-RS and media types ----------------------------------------------------------------

KEYS = [
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "ModalitiesInStudy",
    "StudyInstanceUID",
    "SeriesNumber",
    "AcquisitionDateTime",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
    "orderby",
    "00100020",
    "0020000D",
    "00081032.00080100",
    "Unknown",
]
values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@BOUNDED
@given(
    params=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), values), values), max_size=6),
    level=st.sampled_from(list(Level)),
    strict=st.booleans(),
)
def test_qido_parser_takes_anything_or_says_why(params, level, strict):
    try:
        query = parse_query(params, level, strict=strict)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert 1 <= query.limit <= 1000 and query.offset >= 0


@BOUNDED
@given(value=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._-^", min_size=1, max_size=30))
def test_qido_exact_values_are_kept(value):
    assume(value.strip(" ") and value.strip(" ") == value)
    condition = parse_query([("PatientID", value)], Level.STUDY).conditions[0]
    assert condition.alternatives == (Match("eq", value),)


@BOUNDED
@given(first=st.dates(date(1900, 1, 1), date(2100, 1, 1)), days=st.integers(0, 40_000))
def test_qido_date_ranges(first, days):
    a, b = first.strftime("%Y%m%d"), (first + timedelta(days=days)).strftime("%Y%m%d")
    for value, expected in ((f"{a}-{b}", (a, b)), (f"{a}-", (a, None)), (f"-{b}", (None, b))):
        condition = parse_query([("StudyDate", value)], Level.STUDY).conditions[0]
        assert condition.alternatives == (Match("range", expected),)


@BOUNDED
@given(text=values)
def test_media_type_and_accept_parsers_take_anything_or_say_why(text):
    for parse in (parse_media_type, parse_accept):
        try:
            parse(text)
        except (InvalidRequest, NotAcceptable):
            pass


@pytest.mark.parametrize("boundary", ["b", "x" * 70, "x" * 73, "x" * 256])
def test_the_multipart_property_helpers_hold(boundary):
    """The encoder the properties rely on makes what the parser expects."""
    data = encode(boundary, [({"content-type": "application/dicom"}, b"\r\n--x")], b"")
    events = feed_all(MultipartParser(boundary), data, [])
    assert [type(e) for e in events] == [PartStart, PartData, PartEnd]
