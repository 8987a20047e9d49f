"""De-identified retrieval from a running `dicomhub serve`, over real sockets: WADO-URI
`anonymize=yes` (application/dicom as stored and converted, rendered images) and the ZIP
download with `deidentify=true` / `deidentifyOptions`, under a key read from
`--deidentify-key-file`. Each instance is checked against the profile table with
tests/test_deidentify.py's `check_profile`; UIDs are the key's, so instances fetched one by
one, and the instances of a ZIP, still refer to each other; the DICOMDIR describes the
de-identified instances (pydicom's FileSet and DCMTK's dcmdump read it); bad parameters are a
400; without a key file, the processes of one serve share a random key."""

from __future__ import annotations

import io
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from dicomhub.dicom import codecs
from dicomhub.dicom.deidentify import Context, Options
from tests.components import Unavailable
from tests.conftest import ran, running_server, unavailable
from tests.dicomfiles import load, read, storable_files, with_new_uids
from tests.helpers import store_files
from tests.test_deidentify import (
    _UID,
    ALL_OPTIONS,
    DCM_CODES,
    KEY,
    _no_private,
    _uids,
    a_study,
    check_profile,
)
from tests.test_zip import dcmdump_entries

ZIP = "application/zip"
NAMES = ("CT_small.dcm", "MR_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "test-SR.dcm")
FILES = {f.name: f for f in storable_files(extra=True) if f.name in NAMES}
CT = FILES["CT_small.dcm"]
CT_COPY = with_new_uids(CT.data)  # a second instance of CT_small's study and series
STUDY = a_study()  # CT, CT, SEG, RTSTRUCT, SR of one patient, referring to each other


def _burned_in() -> bytes:
    ds = read(load("MR_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.BurnedInAnnotation = "YES"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


BURNED_IN = _burned_in()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server whose key is KEY, read from a key file (with the newline an editor adds)."""
    data = tmp_path_factory.mktemp("deidweb")
    key_file = data / "deidentify.key"
    key_file.write_bytes(KEY + b"\n")
    with running_server(data, deidentify_key_file=str(key_file)) as (url, _):
        store_files(url, *(f.data for f in FILES.values()), CT_COPY, *STUDY, BURNED_IN)
        yield url


def wado(url: str, f_or_ds, accept: str | None = None, **params) -> httpx.Response:
    ds = f_or_ds if not hasattr(f_or_ds, "data") else f_or_ds.dataset()
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    headers = {"Accept": accept} if accept else {}
    return httpx.get(url + "/wado", params=query, headers=headers, timeout=60)


# --- WADO-URI anonymize=yes ------------------------------------------------------------------


def test_wado_uri_anonymize_gives_the_profile(keyed):
    context = Context(KEY)
    for f in FILES.values():
        r = wado(keyed, f, contentType="application/dicom", anonymize="yes")
        assert r.status_code == 200, (f.name, r.text)
        assert r.headers["content-type"] == "application/dicom"
        original, out = f.dataset(), read(r.content)
        assert check_profile(original, out, Options(), context, f"{f.name}: ") > 0
        assert _no_private(out), f.name
        # the server's key is the key file's: the UIDs are the ones KEY gives
        assert out.SOPInstanceUID == context.uid(f.sop) != f.sop
        assert out.StudyInstanceUID == context.uid(f.study)
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.PatientIdentityRemoved == "YES"
        assert f"{out.SOPInstanceUID}.dcm" in r.headers["content-disposition"]
        assert f.sop not in r.headers["content-disposition"]
        # what the request serves without anonymize (as stored, or converted to the default
        # syntax), de-identified: the same syntax, the same pixel data
        served = read(wado(keyed, f, contentType="application/dicom").content)
        assert out.file_meta.TransferSyntaxUID == served.file_meta.TransferSyntaxUID
        if "PixelData" in original:
            assert out.PixelData == served.PixelData, f.name
        # the same representation again: the same bytes, and its ETag confirms it
        again = httpx.get(str(r.request.url), headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    plain = wado(keyed, CT, contentType="application/dicom")
    assert plain.headers["etag"] != r.headers["etag"] and plain.content == CT.data


def test_wado_uri_anonymize_with_a_transfer_syntax(keyed):
    r = wado(
        keyed, CT, contentType="application/dicom", transferSyntax=codecs.JPEG_LS, anonymize="yes"
    )
    assert r.status_code == 200, r.text
    out = read(r.content)
    assert out.file_meta.TransferSyntaxUID == codecs.JPEG_LS
    assert np.array_equal(out.pixel_array, CT.dataset().pixel_array)
    assert check_profile(CT.dataset(), out, Options(), Context(KEY)) > 0
    assert out.SOPInstanceUID == Context(KEY).uid(CT.sop)


def test_instances_fetched_one_by_one_refer_to_each_other(keyed):
    """A viewer fetching each instance of a study: one study, one series, two instances."""
    first = read(wado(keyed, CT, contentType="application/dicom", anonymize="yes").content)
    copy = read(CT_COPY)
    second = read(wado(keyed, copy, contentType="application/dicom", anonymize="yes").content)
    assert first.StudyInstanceUID == second.StudyInstanceUID != CT.study
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != CT.series
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.PatientID == second.PatientID  # the same (empty or dummy) patient
    # a study's instances with references (SEG, RTSTRUCT, SR): each fetched alone
    originals = [read(d) for d in STUDY]
    outs = [
        read(wado(keyed, ds, contentType="application/dicom", anonymize="yes").content)
        for ds in originals
    ]
    for before, after in zip(originals, outs, strict=True):
        assert _uids(after) == {Context(KEY).uid(u) for u in _uids(before)}
    ct, seg = outs[0], outs[2]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID


def test_rendered_with_anonymize(keyed):
    """A rendered image holds no attribute; its pixels are those of the de-identified instance
    (the profile keeps pixel data and what rendering reads): the same image."""
    mr = FILES["MR_small.dcm"]
    for media in ("image/png", "image/jpeg", "image/gif"):
        plain = wado(keyed, mr, contentType=media)
        anonymized = wado(keyed, mr, contentType=media, anonymize="yes")
        assert anonymized.status_code == 200, anonymized.text
        assert anonymized.headers["content-type"] == media
        assert anonymized.content == plain.content
        assert anonymized.headers["etag"] != plain.headers["etag"]
        assert Image.open(io.BytesIO(anonymized.content)).size == (64, 64)
    default = wado(keyed, mr, anonymize="yes", rows=32)  # no contentType: a JPEG
    assert default.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(default.content)).size == (32, 32)
    assert mr.dataset().PatientName.encode() not in default.content


def test_burned_in_annotation_is_refused(keyed):
    ds = read(BURNED_IN)
    for media in ("application/dicom", "image/png"):
        r = wado(keyed, ds, contentType=media, anonymize="yes")
        assert r.status_code == 406, r.text
        assert "burned-in" in r.json()["detail"]
        assert wado(keyed, ds, contentType=media).status_code == 200


def test_anonymize_is_audited(keyed):
    mr = FILES["MR_small.dcm"]
    wado(keyed, mr, contentType="application/dicom", anonymize="yes")
    wado(keyed, mr, contentType="application/dicom")
    entries = httpx.get(keyed + "/v2/audit", params={"study": mr.study, "limit": 1000}).json()
    mine = [e for e in entries if e["route"] == "wado-uri" and e["status"] == 200]
    anonymized, plain = mine[-2], mine[-1]
    assert anonymized["detail"]["deidentified"] == ["basicProfile"]
    assert anonymized["sopInstanceUid"] == mr.sop  # the audit names what left, as stored
    assert "deidentified" not in plain["detail"]


# --- the ZIP download ----------------------------------------------------------------------


def download(url: str, path: str, **params) -> tuple[httpx.Response, zipfile.ZipFile]:
    r = httpx.get(url + path, params=params, headers={"Accept": ZIP}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ZIP
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None
    return r, archive


def study_path(ds) -> str:
    return f"/v2/studies/{ds.StudyInstanceUID}"


@pytest.mark.parametrize(
    "names, options",
    [
        ("", Options()),
        ("retainModifiedDates,retainPatientCharacteristics,cleanDescriptors", ALL_OPTIONS),
    ],
    ids=["basic", "all-options"],
)
def test_zip_every_entry_deidentified(keyed, tmp_path, names, options):
    context = Context(KEY)
    originals = {ds.SOPInstanceUID: ds for ds in map(read, STUDY)}
    params = {"deidentify": "true", **({"deidentifyOptions": names} if names else {})}
    r, archive = download(keyed, study_path(read(STUDY[0])), **params)
    new_study = context.uid(read(STUDY[0]).StudyInstanceUID)
    assert "content-length" not in r.headers  # sizes change: chunked
    assert r.headers["content-disposition"] == f'attachment; filename="{new_study}.zip"'
    names_in = archive.namelist()
    assert names_in[-1] == "DICOMDIR" and len(names_in) == len(STUDY) + 1
    outs = {}
    for name in names_in[:-1]:
        out = read(archive.read(name))
        original = next(
            ds for sop, ds in originals.items() if context.uid(sop) == out.SOPInstanceUID
        )
        assert check_profile(original, out, options, context, f"{name}: ") > 0
        assert _uids(out) == {context.uid(u) for u in _uids(original)}
        assert out.StudyInstanceUID == new_study
        codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
        assert codes == {c for c, m in DCM_CODES.items() if c == "113100" or options != Options()}
        assert archive.getinfo(name).date_time == (1980, 1, 1, 0, 0, 0)  # no stored time
        outs[original.SOPInstanceUID] = out
    # references between the instances of the study resolve within the ZIP
    ct1, ct2, seg, rtstruct, sr = (outs[read(d).SOPInstanceUID] for d in STUDY)
    segref = seg.ReferencedSeriesSequence[0]
    assert segref.SeriesInstanceUID == ct1.SeriesInstanceUID
    refs = {r.ReferencedSOPInstanceUID for r in segref.ReferencedInstanceSequence}
    assert refs == {ct1.SOPInstanceUID, ct2.SOPInstanceUID}
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct1.FrameOfReferenceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ct1.StudyInstanceUID
    # the DICOMDIR describes the de-identified instances, and nothing identifies the patient
    archive.extractall(tmp_path)
    fileset = FileSet(dcmread(tmp_path / "DICOMDIR"))
    found = {i.SOPInstanceUID: i.path for i in fileset}
    assert set(found) == {out.SOPInstanceUID for out in outs.values()}
    for sop, path in found.items():
        assert read(open(path, "rb").read()).SOPInstanceUID == sop  # noqa: SIM115
    for instance in fileset:
        assert instance.StudyInstanceUID == new_study
        assert instance.SeriesInstanceUID in {o.SeriesInstanceUID for o in outs.values()}
        # the patient as the profile leaves it: no name, a pseudonym for the ID
        assert str(instance.PatientName) == str(ct1.PatientName) != "Doe^John"
        assert instance.PatientID == ct1.PatientID != "PID-123"
    records = (tmp_path / "DICOMDIR").read_bytes()
    for text in ("Doe", "PID-123", "ACC1", read(STUDY[0]).StudyInstanceUID, *originals):
        assert text.encode() not in records, text


def test_zip_dicomdir_read_by_dcmdump(keyed, tmp_path):
    if shutil.which("dcmdump") is None:
        unavailable(Unavailable("DCMTK", "Debian dcmtk is not installed"))
    ran("DCMTK")
    _, archive = download(keyed, study_path(read(STUDY[0])), deidentify="true")
    dump = dcmdump_entries(archive, tmp_path)
    assert dump.count('"Directory Record" PATIENT') == 1
    assert "PID-123" not in dump and "Doe" not in dump
    for name in archive.namelist()[:-1]:
        assert 'refFileID="' + name.replace("/", "\\") + '"' in dump


def test_zip_of_a_series_and_an_instance_deidentified(keyed):
    context = Context(KEY)
    _, archive = download(keyed, f"/v2/studies/{CT.study}/series/{CT.series}", deidentify="true")
    outs = [read(archive.read(n)) for n in archive.namelist()[:-1]]
    assert {o.SOPInstanceUID for o in outs} == {
        context.uid(CT.sop),
        context.uid(read(CT_COPY).SOPInstanceUID),
    }
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    path = f"/v2/studies/{CT.study}/series/{CT.series}/instances/{CT.sop}"
    r, archive = download(keyed, path, deidentify="TRUE", deidentifyoptions="cleanDescriptors")
    assert f'filename="{context.uid(CT.sop)}.zip"' in r.headers["content-disposition"]
    [name, _] = archive.namelist()
    out = read(archive.read(name))
    assert out.SOPInstanceUID == context.uid(CT.sop)
    assert {i.CodeValue for i in out.DeidentificationMethodCodeSequence} == {"113100", "113105"}


def test_zip_deidentified_and_converted(keyed):
    path = f"/v2/studies/{CT.study}/series/{CT.series}"
    r = httpx.get(
        keyed + path,
        params={"deidentify": "true"},
        headers={"Accept": f"{ZIP}; transfer-syntax={codecs.JPEG_LS}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    for name in archive.namelist()[:-1]:
        out = read(archive.read(name))
        assert out.file_meta.TransferSyntaxUID == codecs.JPEG_LS
        assert np.array_equal(out.pixel_array, CT.dataset().pixel_array)
        assert _UID.match(out.SOPInstanceUID)


def test_zip_with_burned_in_annotation_is_refused(keyed):
    ds = read(BURNED_IN)
    r = httpx.get(keyed + study_path(ds), params={"deidentify": "true"}, headers={"Accept": ZIP})
    assert r.status_code == 406 and "burned-in" in r.json()["detail"]


def test_zip_deidentified_is_audited(keyed):
    ds = read(STUDY[0])
    download(keyed, study_path(ds), deidentify="true", deidentifyOptions="retainModifiedDates")
    entries = httpx.get(keyed + "/v2/audit", params={"study": ds.StudyInstanceUID}).json()
    last = [e for e in entries if e["method"] == "GET" and e["status"] == 200][-1]
    assert last["detail"]["deidentified"] == ["basicProfile", "retainModifiedDates"]


BAD = {
    "an unknown option": ({"deidentify": "true", "deidentifyOptions": "keepNames"}, ZIP),
    "an option among good ones": (
        {"deidentify": "true", "deidentifyOptions": "cleanDescriptors,retainEverything"},
        ZIP,
    ),
    "deidentify not a boolean": ({"deidentify": "yes"}, ZIP),
    "options without deidentify": ({"deidentifyOptions": "cleanDescriptors"}, ZIP),
    "options with deidentify=false": (
        {"deidentify": "false", "deidentifyOptions": "cleanDescriptors"},
        ZIP,
    ),
    "deidentify twice": ([("deidentify", "false"), ("deidentify", "true")], ZIP),
    "a multipart retrieve": ({"deidentify": "true"}, 'multipart/related; type="application/dicom"'),
    "no Accept (multipart)": ({"deidentify": "true"}, None),
    "multipart before zip": (
        {"deidentify": "true"},
        f'multipart/related; type="application/dicom", {ZIP}',
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_deidentify_parameters_are_400(keyed, case):
    params, accept = BAD[case]
    headers = {"Accept": accept} if accept else {}
    url = keyed + f"/v2/studies/{CT.study}"
    r = httpx.get(url, params=params, headers=headers, timeout=60)
    assert r.status_code == 400, (case, r.status_code, r.text[:200])
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 400 and r.json()["detail"]
    assert CT.data not in r.content
    # nothing else changed: the study is served as before, as stored
    plain = httpx.get(url, headers={"Accept": ZIP}, timeout=60)
    assert plain.status_code == 200 and CT.data in plain.content


def test_deidentify_on_a_single_instance_retrieve_is_400(keyed):
    url = keyed + f"/v2/studies/{CT.study}/series/{CT.series}/instances/{CT.sop}"
    r = httpx.get(url, params={"deidentify": "true"}, headers={"Accept": "application/dicom"})
    assert r.status_code == 400 and "application/zip" in r.json()["detail"]


# --- the key -------------------------------------------------------------------------------


def test_the_same_key_file_gives_the_same_uids_after_a_restart(keyed, tmp_path):
    first = read(wado(keyed, CT, contentType="application/dicom", anonymize="yes").content)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)  # without the newline: the same key
    (tmp_path / "data").mkdir()
    with running_server(tmp_path / "data", deidentify_key_file=str(key_file)) as (url, _):
        store_files(url, CT.data)
        again = read(wado(url, CT, contentType="application/dicom", anonymize="yes").content)
    assert _uids(again) == _uids(first)


def test_without_a_key_file_the_processes_of_one_serve_agree(tmp_path):
    """No key file: a random key drawn by serve, shared by its server processes (workers=2:
    requests on new connections land on either), so a viewer still sees one set of UIDs."""
    (tmp_path / "data").mkdir()
    with running_server(tmp_path / "data", workers="2") as (url, _):
        store_files(url, CT.data)
        with ThreadPoolExecutor(8) as pool:  # at once: both processes take some
            responses = list(
                pool.map(
                    lambda _: wado(url, CT, contentType="application/dicom", anonymize="yes"),
                    range(32),
                )
            )
        seen = {read(r.content).SOPInstanceUID for r in responses}
    assert len(seen) == 1
    assert seen != {Context(KEY).uid(CT.sop)} and _UID.match(seen.pop())


def test_a_bad_key_file_stops_serve(tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"too short\n")
    for path in (short, tmp_path / "missing.key"):
        with pytest.raises(RuntimeError) as failed:
            with running_server(tmp_path, deidentify_key_file=str(path)):
                pass
        assert "--deidentify-key-file" in str(failed.value)
