"""The one-pass reader of ingest (dicom/scan.py) describes an instance exactly as the pydicom
path does (parse.read_part10 + instance.ingest): same metadata bytes, bulk data locations,
frame index, search record and errors, for every file it takes on among pydicom's and
pydicom-data's test files and generated ones; it leaves the unusual to pydicom."""

from __future__ import annotations

import io
from dataclasses import asdict

import pytest
from bench import dataset as bench_data
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from dicomhub.dicom.instance import InvalidInstance, ingest, ingest_scanned
from dicomhub.dicom.parse import read_part10
from dicomhub.dicom.scan import scan
from dicomhub.errors import InvalidDicom
from tests.dicomfiles import every_test_file
from tests.synthetic import instance, uid

THRESHOLD = 1024


def slow(data: bytes, strict: bool = False, study: str | None = None):
    """The pydicom path: the description, or the error it raises."""
    try:
        parsed = read_part10(io.BytesIO(data), len(data), THRESHOLD)
        return asdict(ingest(parsed, lambda o, n: data[o : o + n], THRESHOLD, strict, study))
    except (InvalidDicom, InvalidInstance) as exc:
        return repr(exc)


def fast(data: bytes, strict: bool = False, study: str | None = None):
    """The scan path: None where it declines, else the description or the error it raises."""
    scanned = scan(data, THRESHOLD, 1_000_000)
    if scanned is None:
        return None
    try:
        described = ingest_scanned(scanned, data, strict, study)
    except InvalidInstance as exc:
        return repr(exc)
    return None if described is None else asdict(described)


def same(data: bytes, strict: bool = False, study: str | None = None) -> bool:
    """True when the scan took the file on (and then it must agree with pydicom's path)."""
    got = fast(data, strict, study)
    if got is not None:
        assert got == slow(data, strict, study)
    return got is not None


def test_equal_to_the_pydicom_path_on_test_files():
    taken = declined = 0
    for _, data in every_test_file():
        for cut in (data, data[: len(data) * 2 // 3]):  # and truncated: declined or equal
            if same(cut):
                taken += 1
            else:
                declined += 1
    assert taken > 40 and declined > 100, (taken, declined)


def _file(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(
        out,
        enforce_file_format=True,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    return out.getvalue()


def ct(**attributes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(1), uid(1, 1), uid(1, 1, 1)
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "DOE^JANE", "CT"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * 8
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def item(**attributes) -> Dataset:
    out = Dataset()
    for keyword, value in attributes.items():
        setattr(out, keyword, value)
    return out


def test_what_modalities_send_is_taken_on():
    """The speed-up holds for the common instance: explicit and implicit VR, sequences (nested,
    with bulk data inside), private elements, encapsulated pixel data, multi-frame."""
    study = bench_data.study(1, 1, (2,))
    bench = next(bench_data.instances(study, 32))[1]
    with_sequences = ct(
        ReferencedImageSequence=Sequence(
            [item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID="1.2.3.4")] * 2
        ),
        ProcedureCodeSequence=Sequence(
            [
                item(
                    CodeValue="X",
                    CodeMeaning="Y",
                    PurposeOfReferenceCodeSequence=Sequence(
                        [item(CodeValue="Z", EncapsulatedDocument=b"")]
                    ),
                )
            ]
        ),
        IconImageSequence=Sequence(
            [item(Rows=64, Columns=64, BitsAllocated=8, PixelData=b"\x01" * 4096)]
        ),
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        WindowCenter=[40, 400.5],
        PixelSpacing=[0.5, 0.5],
        SliceThickness="1.25",
    )
    with_sequences.add_new(0x00091010, "LO", "ACME 1.0")
    with_sequences.add_new(0x00091011, "LO", "ACME")
    with_sequences.add_new(0x00091012, "OB", b"\x00\x01" * 10)
    encapsulated = ct(
        PixelData=encapsulate([b"\xff\xd8" + bytes(100) + b"\xff\xd9"] * 3),
        NumberOfFrames=3,
        PhotometricInterpretation="YBR_FULL_422",
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        SamplesPerPixel=3,
    )
    inline_pixels = ct(Rows=8, Columns=8)
    inline_pixels.PixelData = bytes(128)
    files = [
        bench,
        instance(uid(2), uid(2, 1), uid(2, 1, 1)),
        _file(with_sequences),
        _file(
            ct(ReferencedImageSequence=Sequence([item(ReferencedSOPClassUID="1.2")])),
            ImplicitVRLittleEndian,
        ),
        _file(encapsulated, JPEGBaseline8Bit),
        _file(inline_pixels),
        _file(ct(SpecificCharacterSet="ISO_IR 192", PatientName="DOE^JOHN")),
    ]
    for data in files:
        assert same(data), data[:200]
    # errors come out alike: a UID missing, the study of the URL, v1's PatientID
    assert same(_file(ct(StudyInstanceUID="")))
    assert same(_file(ct()), study=uid(9))
    assert same(_file(ct(PatientID="")), strict=True)


@pytest.mark.parametrize(
    "data",
    [
        _file(ct(PatientName="MÜLLER^JÜRGEN", SpecificCharacterSet="ISO_IR 100")),
        _file(ct(SpecificCharacterSet="ISO 2022 IR 87")),
        _file(ct(StudyDate="2024-01-01")),  # invalid: reported by pydicom's path
        _file(ct(PatientName="YAMADA^TARO=山田^太郎")),
        _file(ct(), ExplicitVRBigEndian),
        _file(ct(SOPInstanceUID="1.2.3\\1.2.4")),  # several values: pydicom's path decides
        instance(uid(3), uid(3, 1), uid(3, 1, 1))[:-3],  # truncated
        instance(uid(3), uid(3, 1), uid(3, 1, 1)) + b"\x01\x02",  # bytes after the end
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\x00",  # no data set
    ],
    ids=[
        "latin1",
        "iso2022",
        "invalid-date",
        "pn-groups",
        "big-endian",
        "multi-uid",
        "truncated",
        "tail",
        "empty",
    ],
)
def test_the_unusual_is_left_to_pydicom(data):
    assert fast(data) is None
    slow(data)  # which still answers (a description or a clear error)


_TEXT = st.text(st.sampled_from("ABCXYZ019 ^.-"), max_size=12)
_ATTRIBUTES = {  # keyword -> values hypothesis draws (valid or not: both paths must agree)
    "PatientName": _TEXT,
    "PatientID": _TEXT,
    "StudyDescription": _TEXT,
    "StudyDate": st.sampled_from(["20240101", "2024", "", "20241301", "2024010"]),
    "StudyTime": st.sampled_from(["101010", "1010", "101010.123", "25", ""]),
    "SeriesNumber": st.sampled_from(["1", "+12", "-3", "1.5", "", " 7 "]),
    "SliceThickness": st.sampled_from(["1.25", "1e3", ".5", "nan", "inf", ""]),
    "ImageType": st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "", "lower"]), max_size=3),
    "InstitutionName": _TEXT,
    "BodyPartExamined": st.sampled_from(["CHEST", "", "Chest"]),
}


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional=_ATTRIBUTES), st.booleans(), st.booleans())
def test_equal_to_the_pydicom_path_on_generated_files(attributes, implicit, nested):
    ds = ct()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if nested:
        ds.ReferencedStudySequence = Sequence([item(**attributes)] if attributes else [])
    same(_file(ds, ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))


_BENCH_FILE = next(bench_data.instances(bench_data.study(1, 2, (1,)), 32))[1]
_HEADER_END = scan(_BENCH_FILE, THRESHOLD, 1_000_000).pixel.offset  # element headers, values


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(132, _HEADER_END - 1), st.integers(0, 255)), min_size=1, max_size=3
    )
)
def test_damaged_headers_are_declined_or_read_alike(changes):
    """Bytes changed in the file meta group and the data set's elements (found this way: a VR
    the meta group reader does not know; a UID padded with other whitespace): the scan never
    fails, and what it takes on it reads as pydicom's path does."""
    data = bytearray(_BENCH_FILE)
    for at, value in changes:
        data[at] = value
    same(bytes(data))


def test_a_uid_padded_with_other_whitespace_is_read_as_pydicom_reads_it():
    data = _BENCH_FILE.replace(
        b"1.2.826.0.1.3680043.10.5433.1.2.1.1\x00", b"1.2.826.0.1.3680043.10.5433.1.2.1.1\x0b"
    )
    assert data != _BENCH_FILE and same(data)
