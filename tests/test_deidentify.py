"""De-identification (dicom/deidentify.py, PS3.15 Annex E) on pydicom's and pydicom-data's test
files and on a data set holding every attribute of Table E.1-1: each attribute removed, emptied
or replaced as the table says; UIDs replaced consistently (references between the instances of
a study still resolve); dates shifted by one offset; pixel data untouched; private attributes
gone unless whitelisted; the method recorded; bad input refused as invalid DICOM."""

from __future__ import annotations

import io
import re
import warnings
from datetime import date, timedelta

import pydicom
import pytest
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary, generate_uid

from dicomhub.dicom.deidentify import (
    Context,
    Options,
    deidentify,
    deidentify_dataset,
    profile_table,
)
from dicomhub.errors import InvalidDicom
from tests.dicomfiles import load, read, storable_files

KEY = b"project key for the tests"
ALL_OPTIONS = Options(
    retain_modified_dates=True, retain_patient_characteristics=True, clean_descriptors=True
)
OPTION_SETS = [Options(), ALL_OPTIONS]
DCM_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113105": "Clean Descriptors Option",
}
_UID = re.compile(r"^2\.25\.[1-9][0-9]{0,38}$")


def _empty(value) -> bool:
    return value is None or value == "" or value == b"" or value == []


def _texts(value) -> list[str]:
    if _empty(value):
        return []
    if isinstance(value, pydicom.multival.MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def _row(tag: int):
    exact, masked = profile_table()
    if tag in exact:
        return exact[tag]
    for mask, value, row in masked:
        if tag & mask == value and not (tag >> 16) & 1:
            return row
    return None


def _option_action(row, options: Options) -> str | None:
    fields = {
        "retain_patient_characteristics": options.retain_patient_characteristics,
        "retain_modified_dates": options.retain_modified_dates,
        "clean_descriptors": options.clean_descriptors,
    }
    chosen = {a for o, a in row.by_option if fields[o]}
    return ("C" if "C" in chosen else "K") if chosen else None


def check_profile(original: Dataset, out: Dataset, options: Options, context: Context, where=""):
    """Every attribute of ``original`` (and of the items of the sequences kept) is in ``out``
    as Table E.1-1 says for ``options``; returns how many listed attributes were checked."""
    checked = 0
    for elem in original:
        tag = int(elem.tag)
        name = f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if elem.tag.is_private:
            assert tag not in out, f"private attribute kept: {name}"
            continue
        if tag & 0xFFFF == 0:
            continue
        row = _row(tag)
        got = out.get(tag)
        if row is None:  # not listed: kept (UIDs replaced, dates shifted)
            assert got is not None, f"unlisted attribute dropped: {name}"
            if elem.VR == "SQ":
                assert len(got.value) == len(elem.value), name
                for i, (a, b) in enumerate(zip(elem.value, got.value, strict=True)):
                    checked += check_profile(a, b, options, context, f"{name}[{i}]>")
            continue
        checked += 1
        by_option = _option_action(row, options)
        code = row.basic
        if by_option == "K":
            assert got is not None and got.value == elem.value, f"{name} should be kept"
            continue
        if by_option == "C" and elem.VR == "TM" and options.retain_modified_dates:
            assert got is not None and got.value == elem.value, name  # a whole-day shift
            continue
        if by_option == "C" and elem.VR in ("DA", "DT") and options.retain_modified_dates:
            assert got is not None, name
            for before, after in zip(_texts(elem.value), _texts(got.value), strict=True):
                if re.fullmatch(r"\d{8}.*", before):
                    shifted = _date(before[:8]) + context.date_offset
                    assert after[:8] == shifted.strftime("%Y%m%d"), (name, before, after)
                    assert after[8:] == before[8:], name
            continue
        text_option = any(
            a == "C" and o != "retain_modified_dates" and getattr(options, o)
            for o, a in row.by_option
        )
        if text_option and elem.VR in ("LO", "SH", "ST", "LT", "UT", "UC"):
            assert got is not None, f"{name} should be cleaned, not removed"
            continue
        allowed = set(code.replace("*", "").split("/"))
        if got is None:
            assert "X" in allowed or _empty(elem.value), f"{name} ({code}) removed"
            continue
        if _empty(got.value):
            assert allowed & {"Z", "U"} or _empty(elem.value), f"{name} ({code}) emptied"
            continue
        assert allowed & {"D", "U"} or by_option == "C", f"{name} ({code}) kept a value"
        if elem.VR == "SQ":
            assert len(got.value) == len(elem.value), name
            for i, (a, b) in enumerate(zip(elem.value, got.value, strict=True)):
                checked += check_profile(a, b, options, context, f"{name}[{i}]>")
        elif elem.VR == "UI":
            for before, after in zip(_texts(elem.value), _texts(got.value), strict=True):
                assert after == before if before in UID_dictionary else _UID.match(after), name
        elif "D" in allowed:  # a dummy: nothing of the original
            for before in _texts(elem.value):
                if len(before) > 2 and not before.startswith(("ANON", "1900", "0000")):
                    assert before not in str(got.value), (name, before, got.value)
    return checked


def _date(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _no_private(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if elem.tag.is_private:
            return False
    return True


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "all-options"])
def test_the_profile_on_every_test_file(options):
    context = Context(KEY)
    files = storable_files(extra=True)
    checked = 0
    for f in files:
        original = f.dataset()
        data = deidentify(f.data, context, options)
        out = read(data)
        checked += check_profile(original, out, options, context, f"{f.name}: ")
        assert _no_private(out), f.name
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID, f.name
        assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, f.name
        assert _UID.match(out.SOPInstanceUID) and out.SOPInstanceUID != f.sop, f.name
        assert out.SOPClassUID == original.SOPClassUID, f.name
        for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # pixel data byte for byte
            if tag in original:
                assert out[tag].value == original[tag].value, f.name
        assert out.PatientIdentityRemoved == "YES", f.name
    assert len(files) > 150 and checked > 3000, (len(files), checked)


def every_attribute() -> Dataset:
    """A data set holding every attribute of Table E.1-1 that pydicom's dictionary knows, each
    with a value of its VR (sequences with one item holding a name and a UID)."""
    ds = Dataset()
    exact, _ = profile_table()
    for tag in exact:
        if tag >> 16 == 0x0002 or tag not in DicomDictionary:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        ds.add_new(tag, vr, _value(vr, tag))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data (60xx,3000)
    ds.add_new(0x60024000, "LT", "overlay comment")  # overlay comments, another group
    ds.add_new(0x50000005, "US", 1)  # curve data (50xx,xxxx)
    return ds


def _value(vr: str, tag: int):
    if vr == "SQ":
        item = Dataset()
        item.PersonName = "Doe^Jane"
        item.ReferencedSOPInstanceUID = f"1.2.3.{tag}"
        item.TextValue = "Jane Doe's report"
        return Sequence([item])
    text = {
        "PN": "Doe^John",
        "DA": "20210305",
        "DT": "20210305101112",
        "TM": "101112",
        "UI": f"1.2.3.4.{tag}",
        "AS": "042Y",
        "DS": "1.5",
        "IS": "7",
        "CS": "SECRET",
        "AE": "STATION7",
        "UR": "http://hospital.example/patient/7",
    }
    if vr in text:
        return text[vr]
    if vr in ("LO", "SH", "ST", "LT", "UT", "UC"):
        return f"John Doe {tag:08X}"[:16]
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"
    if vr == "AT":
        return 0x00100010
    return 7  # US, SS, UL, SL, UV, SV, FL, FD


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "all-options"])
def test_every_attribute_of_the_table(options):
    original = every_attribute()
    context = Context(KEY)
    out = deidentify_dataset(original, context, options)
    checked = check_profile(original, out, options, context)
    assert checked > 550, checked
    assert 0x60003000 not in out and 0x60024000 not in out and 0x50000005 not in out
    assert out.PatientName == "" and out.PatientID.startswith("ANON")
    assert "ReferencedImageSequence" in out  # X/Z/U*: references kept, UIDs replaced
    ref = out.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert ref == context.uid(original.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
    assert "PersonName" not in original or out.PersonName != original.PersonName
    # D on a sequence: the items stay, but their unlisted text is a dummy too
    assert out.ContentSequence[0].TextValue == "ANONYMIZED"
    assert original.ContentSequence[0].TextValue == "Jane Doe's report"  # not changed


def test_options_change_what_is_kept():
    original = every_attribute()
    basic = deidentify_dataset(original, Context(KEY))
    kept = deidentify_dataset(original, Context(KEY), ALL_OPTIONS)
    for keyword in ("PatientAge", "PatientSex", "PatientWeight", "PatientSize", "EthnicGroup"):
        assert keyword not in basic or _empty(basic[keyword].value), keyword
        assert kept[keyword].value == original[keyword].value, keyword
    assert basic.StudyDate == "" and "SeriesDate" in basic and basic.SeriesDate == "19000101"
    assert kept.StudyDate not in ("", original.StudyDate)
    assert "StudyDescription" not in basic and "StudyDescription" in kept
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert kept.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors_removes_identifying_text():
    ds = read(load("CT_small.dcm"))
    ds.PatientName = "Smith^Anna"
    ds.PatientID = "MRN4711"
    ds.StudyDescription = "CT head for anna smith MRN4711 on 2021-03-05"
    ds.SeriesDescription = "axial 5mm"
    ds.ImageComments = "follow-up of 05.03.2021 scan"
    out = deidentify_dataset(ds, Context(KEY), Options(clean_descriptors=True))
    assert out.StudyDescription == "CT head for * * * on *"
    assert out.SeriesDescription == "axial 5mm"
    assert out.ImageComments == "follow-up of * scan"
    basic = deidentify_dataset(ds, Context(KEY))
    assert "StudyDescription" not in basic and "SeriesDescription" not in basic


def _instance(**attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ref(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def a_study() -> list[bytes]:
    """Two CT images, a SEG, an RTSTRUCT and an SR of one patient, referencing each other by
    SOP Instance, Series, Study and Frame of Reference UIDs."""
    study, ct_series, frame = generate_uid(), generate_uid(), generate_uid()
    patient = {
        "PatientName": "Doe^John",
        "PatientID": "PID-123",
        "PatientBirthDate": "19600101",
        "StudyInstanceUID": study,
        "StudyDate": "20210305",
        "StudyTime": "101112",
        "AccessionNumber": "ACC1",
    }
    cts = []
    for number in (1, 2):
        ct = read(load("CT_small.dcm"))
        ct.SOPInstanceUID = generate_uid()
        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
        ct.SeriesInstanceUID, ct.FrameOfReferenceUID, ct.InstanceNumber = ct_series, frame, number
        for keyword, value in patient.items():
            setattr(ct, keyword, value)
        cts.append(ct)
    ct_refs = [
        _ref(ReferencedSOPClassUID=ct.SOPClassUID, ReferencedSOPInstanceUID=ct.SOPInstanceUID)
        for ct in cts
    ]
    seg = _instance(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4",
        SOPInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        FrameOfReferenceUID=frame,
        ReferencedSeriesSequence=[
            _ref(SeriesInstanceUID=ct_series, ReferencedInstanceSequence=ct_refs)
        ],
        PerFrameFunctionalGroupsSequence=[
            _ref(DerivationImageSequence=[_ref(SourceImageSequence=[ct_refs[0]])])
        ],
        **patient,
    )
    rtstruct = _instance(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.481.3",
        SOPInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        ReferencedFrameOfReferenceSequence=[
            _ref(
                FrameOfReferenceUID=frame,
                RTReferencedStudySequence=[
                    _ref(
                        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                        ReferencedSOPInstanceUID=study,
                        RTReferencedSeriesSequence=[
                            _ref(SeriesInstanceUID=ct_series, ContourImageSequence=ct_refs)
                        ],
                    )
                ],
            )
        ],
        StructureSetROISequence=[_ref(ROINumber=1, ReferencedFrameOfReferenceUID=frame)],
        **patient,
    )
    image_item = _ref(RelationshipType="CONTAINS", ValueType="IMAGE")
    image_item.ReferencedSOPSequence = [ct_refs[1]]
    sr = _instance(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.88.33",
        SOPInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        ContentDate="20210306",
        CurrentRequestedProcedureEvidenceSequence=[
            _ref(
                StudyInstanceUID=study,
                ReferencedSeriesSequence=[
                    _ref(SeriesInstanceUID=ct_series, ReferencedSOPSequence=ct_refs)
                ],
            )
        ],
        ContentSequence=[image_item],
        **patient,
    )
    return [_part10(ds) for ds in (*cts, seg, rtstruct, sr)]


def _uids(ds: Dataset) -> set[str]:
    return {
        v
        for elem in ds.iterall()
        if elem.VR == "UI" and int(elem.tag) >> 16 != 2
        for v in _texts(elem.value)
        if v not in UID_dictionary
    }


def test_references_between_the_instances_of_a_study_still_resolve():
    originals = [read(data) for data in a_study()]
    context = Context()  # one download, no project key
    outs = [read(deidentify(_part10(ds), context, Options())) for ds in originals]
    ct1, ct2, seg, rtstruct, sr = outs
    cts = {ct1.SOPInstanceUID, ct2.SOPInstanceUID}
    assert ct1.StudyInstanceUID == seg.StudyInstanceUID == sr.StudyInstanceUID
    assert ct1.SeriesInstanceUID == ct2.SeriesInstanceUID != seg.SeriesInstanceUID
    assert ct1.FrameOfReferenceUID == seg.FrameOfReferenceUID
    segref = seg.ReferencedSeriesSequence[0]
    assert segref.SeriesInstanceUID == ct1.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in segref.ReferencedInstanceSequence} == cts
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert source.SourceImageSequence[0].ReferencedSOPInstanceUID == ct1.SOPInstanceUID
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct1.FrameOfReferenceUID
    rt_study = frame.RTReferencedStudySequence[0]
    assert rt_study.ReferencedSOPInstanceUID == ct1.StudyInstanceUID
    rt_series = rt_study.RTReferencedSeriesSequence[0]
    assert rt_series.SeriesInstanceUID == ct1.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in rt_series.ContourImageSequence} == cts
    roi = rtstruct.StructureSetROISequence[0]
    assert roi.ReferencedFrameOfReferenceUID == ct1.FrameOfReferenceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ct1.StudyInstanceUID
    assert {
        r.ReferencedSOPInstanceUID
        for r in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    } == cts
    assert sr.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        ct2.SOPInstanceUID
    )
    before = set().union(*map(_uids, originals))
    after = set().union(*map(_uids, outs))
    assert not before & after  # no original instance UID left anywhere
    assert all(_UID.match(uid) for uid in after)
    assert len(after) == len(before)  # one new UID for each original, none merged
    assert len({ds.PatientID for ds in outs}) == 1 and outs[0].PatientID != "PID-123"


def test_same_key_same_uids_other_key_other_uids():
    study = a_study()

    def run(context):
        return [read(deidentify(data, context)) for data in study]

    first, again, other = run(Context(KEY)), run(Context(KEY)), run(Context(b"another key"))
    random_a, random_b = run(Context()), run(Context())
    for i in range(len(study)):
        assert _uids(first[i]) == _uids(again[i])
        assert first[i].PatientID == again[i].PatientID
        assert not _uids(first[i]) & _uids(other[i])
        assert not _uids(random_a[i]) & _uids(random_b[i])
    assert Context(KEY).date_offset == Context(KEY).date_offset


def test_dates_shift_by_one_offset_under_the_temporal_option():
    context = Context(KEY)
    offset = context.date_offset
    assert timedelta(days=-3653) <= offset <= timedelta(days=-365)
    assert offset.seconds == 0 and offset.microseconds == 0
    originals = [read(data) for data in a_study()]
    outs = [
        read(deidentify(_part10(ds), context, Options(retain_modified_dates=True)))
        for ds in originals
    ]
    for before, after in zip(originals, outs, strict=True):
        assert after.StudyDate == (_date(before.StudyDate) + offset).strftime("%Y%m%d")
        assert after.StudyTime == before.StudyTime  # a whole-day shift keeps the time of day
        assert after.PatientBirthDate == ""  # Z: the option does not retain it
    sr_before, sr_after = originals[-1], outs[-1]
    assert _date(sr_after.ContentDate) - _date(outs[0].StudyDate) == (
        _date(sr_before.ContentDate) - _date(sr_before.StudyDate)
    )
    assert (_date(outs[0].StudyDate) - offset).strftime("%Y%m%d") == "20210305"


def test_private_attributes_go_unless_whitelisted():
    ds = read(load("CT_small.dcm"))
    acme = ds.private_block(0x0029, "ACME 1.0", create=True)
    acme.add_new(0x10, "LO", "keep me")
    acme.add_new(0x11, "LO", "patient John Doe")
    other = ds.private_block(0x0031, "OTHER", create=True)
    other.add_new(0x01, "LO", "by tag")
    other.add_new(0x02, "LO", "drop")
    inner = Dataset()
    inner.add_new(0x00091001, "LO", "inside a sequence")
    ds.ReferencedImageSequence = [inner]
    data = _part10(ds)

    dropped = read(deidentify(data, Context(KEY)))
    assert _no_private(dropped)

    keep = frozenset({("ACME 1.0", 0x10), 0x00311001})
    kept = read(deidentify(data, Context(KEY), Options(keep_private=keep)))
    assert kept.private_block(0x0029, "ACME 1.0")[0x10].value == "keep me"
    assert (0x0029, 0x1011) not in kept
    assert kept[0x00311001].value == "by tag" and kept[0x00310010].value == "OTHER"
    assert (0x0031, 0x1002) not in kept
    assert not any(elem.tag.is_private for elem in kept.ReferencedImageSequence[0])


@pytest.mark.parametrize(
    ("options", "codes"),
    [
        (Options(), ["113100"]),
        (Options(retain_modified_dates=True), ["113100", "113107"]),
        (Options(retain_patient_characteristics=True), ["113100", "113108"]),
        (Options(clean_descriptors=True), ["113100", "113105"]),
        (ALL_OPTIONS, ["113100", "113107", "113108", "113105"]),
    ],
)
def test_the_method_code_sequence_names_the_profile_and_options(options, codes):
    out = read(deidentify(load("MR_small.dcm"), Context(KEY), options))
    items = out.DeidentificationMethodCodeSequence
    assert [item.CodeValue for item in items] == codes
    for item in items:
        assert item.CodingSchemeDesignator == "DCM"
        assert item.CodeMeaning == DCM_CODES[item.CodeValue]
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod and len(out.DeidentificationMethod) <= 64


def test_bad_input_is_invalid_dicom():
    data = load("CT_small.dcm")
    cases = [
        b"",
        b"not DICOM at all",
        b"\x00" * 128 + b"DICM",
        b"\x00" * 128 + b"DICM" + b"\xff" * 40,
        data[: len(data) // 2],
        data[:200],
        data[:-3],
    ]
    for f in storable_files()[:20]:
        cases.append(f.data[: len(f.data) * 2 // 3])
    for case in cases:
        with pytest.raises(InvalidDicom):
            deidentify(case, Context(KEY))


def test_the_dataset_given_is_not_changed():
    ds = read(load("CT_small.dcm"))
    before = _part10(ds)
    deidentify_dataset(ds, Context(KEY), ALL_OPTIONS)
    assert _part10(ds) == before
