"""Study and series download as a ZIP file-set (Accept: application/zip) from a running
`dicomhub serve`, over real sockets: every entry byte-identical to WADO-RS's instance, the
DICOMDIR read by pydicom's FileSet and DCMTK's dcmdump (which also reads every entry),
transfer-syntax conversion, negotiation beside multipart, and memory flat while a 192 MB study
streams, as stored and de-identified (the client reads the first bytes while the server holds
a fraction of the study). test_deidentify_web.py checks the de-identified ZIP's content."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
from datetime import datetime

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from dicomhub.dicom import codecs
from dicomhub.dicom.zipstream import ZipWriter
from tests.components import Unavailable
from tests.conftest import ran, running_server, unavailable
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import peak_rss_mb
from tests.synthetic import instance, uid

CT = load("CT_small.dcm")
STUDY = read(CT).StudyInstanceUID
SECOND_SERIES = uid(91, 2)
ZIP = "application/zip"


@pytest.fixture(scope="module")
def study(server):
    """CT_small and two copies in its series, and an MR_small in a second series, one study."""
    base = server["url"]
    files = [CT, with_new_uids(CT), with_new_uids(CT)]
    files.append(with_new_uids(load("MR_small.dcm"), study=STUDY, series=SECOND_SERIES))
    for data in files:
        r = httpx.post(
            base + "/v2/studies", content=data, headers={"Content-Type": "application/dicom"}
        )
        assert r.status_code in (200, 202, 409), r.text
    return base, files


def instance_url(base: str, data: bytes) -> str:
    ds = read(data)
    return (
        f"{base}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def download(url: str, accept: str = ZIP) -> tuple[httpx.Response, zipfile.ZipFile]:
    r = httpx.get(url, headers={"Accept": accept}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ZIP
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None  # every CRC right
    return r, archive


def test_study_zip_holds_every_instance_as_stored(study, tmp_path):
    base, files = study
    r, archive = download(f"{base}/v2/studies/{STUDY}")
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["content-disposition"] == f'attachment; filename="{STUDY}.zip"'
    names = archive.namelist()
    assert names[-1] == "DICOMDIR"
    assert names[:-1] == [
        "DICOM/ST000001/SE000001/IM000001",
        "DICOM/ST000001/SE000001/IM000002",
        "DICOM/ST000001/SE000001/IM000003",
        "DICOM/ST000001/SE000002/IM000001",
    ]
    stored = {}
    for data in files:
        rs = httpx.get(
            instance_url(base, data), headers={"Accept": "application/dicom; transfer-syntax=*"}
        )
        stored[read(data).SOPInstanceUID] = rs.content
    by_sop = {read(archive.read(n)).SOPInstanceUID: archive.read(n) for n in names[:-1]}
    assert by_sop == stored  # byte for byte WADO-RS's
    archive.extractall(tmp_path)
    fileset = FileSet(dcmread(tmp_path / "DICOMDIR"))
    assert fileset.ID == "DICOMHUB"
    found = {i.SOPInstanceUID: i.path for i in fileset}
    assert set(found) == set(stored)
    for sop, path in found.items():  # every record leads to its file
        assert read(open(path, "rb").read()).SOPInstanceUID == sop  # noqa: SIM115
    patients = {read(d).PatientID for d in files}  # the MR kept its own patient
    assert {i.PatientID for i in fileset} == patients


def dcmdump_entries(archive: zipfile.ZipFile, folder) -> str:
    """DCMTK's dcmdump reads every entry of ``archive`` (extracted into ``folder``) cleanly;
    its dump of the DICOMDIR."""
    archive.extractall(folder)
    for name in archive.namelist():
        out = subprocess.run(
            ["dcmdump", "-q", str(folder / name)], capture_output=True, text=True, check=True
        )
        assert "Dicom-Data-Set" in out.stdout and not out.stderr, (name, out.stderr)
    return subprocess.run(
        ["dcmdump", str(folder / "DICOMDIR")], capture_output=True, text=True, check=True
    ).stdout


def test_dcmdump_reads_every_entry_and_the_dicomdir(study, tmp_path):
    if shutil.which("dcmdump") is None:
        unavailable(Unavailable("DCMTK", "Debian dcmtk is not installed"))
    ran("DCMTK")
    base, files = study
    _, archive = download(f"{base}/v2/studies/{STUDY}")
    dump = dcmdump_entries(archive, tmp_path)
    assert dump.count('"Directory Record" IMAGE') == len(files)
    for name in archive.namelist()[:-1]:
        assert 'refFileID="' + name.replace("/", "\\") + '"' in dump


def test_series_zip_holds_the_series(study):
    base, files = study
    _, archive = download(f"{base}/v2/studies/{STUDY}/series/{SECOND_SERIES}")
    assert archive.namelist() == ["DICOM/ST000001/SE000001/IM000001", "DICOMDIR"]
    assert archive.read(archive.namelist()[0]) == files[-1]


def test_zip_converted_to_a_transfer_syntax(study, tmp_path):
    base, files = study
    _, archive = download(f"{base}/v2/studies/{STUDY}", f"{ZIP}; transfer-syntax={codecs.JPEG_LS}")
    originals = {read(d).SOPInstanceUID: d for d in files}
    for name in archive.namelist()[:-1]:
        ds = read(archive.read(name))
        assert ds.file_meta.TransferSyntaxUID == codecs.JPEG_LS
        original = originals[ds.SOPInstanceUID]
        assert np.array_equal(ds.pixel_array, read(original).pixel_array)
        rs = httpx.get(
            instance_url(base, original),
            headers={"Accept": f"application/dicom; transfer-syntax={codecs.JPEG_LS}"},
        )
        assert archive.read(name) == rs.content  # WADO-RS's conversion, byte for byte
    archive.extractall(tmp_path)
    syntaxes = {
        i.ReferencedTransferSyntaxUIDInFile for i in FileSet(dcmread(tmp_path / "DICOMDIR"))
    }
    assert syntaxes == {codecs.JPEG_LS}


def test_negotiation_beside_multipart(study):
    base, _ = study
    url = f"{base}/v2/studies/{STUDY}"
    multipart = 'multipart/related; type="application/dicom"'
    r = httpx.get(url, headers={"Accept": f"{multipart}, {ZIP}"})
    assert r.headers["content-type"].startswith("multipart/related")
    r = httpx.get(url, headers={"Accept": f"{ZIP}, {multipart}"})
    assert r.headers["content-type"] == ZIP
    r = httpx.get(url, headers={"Accept": f"{multipart}; q=0.5, {ZIP}"})
    assert r.headers["content-type"] == ZIP
    r = httpx.get(url, headers={"Accept": f"image/jpeg, {ZIP}"})  # a study is no single JPEG
    assert r.headers["content-type"] == ZIP
    r = httpx.get(url)  # no Accept: multipart, as before
    assert r.headers["content-type"].startswith("multipart/related")


def test_zip_errors(study):
    base, _ = study
    r = httpx.get(f"{base}/v2/studies/{uid(91, 99)}", headers={"Accept": ZIP})
    assert r.status_code == 404 and r.json()["status"] == 404
    r = httpx.get(
        f"{base}/v2/studies/{STUDY}", headers={"Accept": f"{ZIP}; transfer-syntax=1.2.3.4"}
    )
    assert r.status_code == 406 and r.json()["status"] == 406


def test_zip64_end_records_for_many_entries():
    """More than 65,535 entries: the ZIP64 end of central directory (and its locator)."""
    writer, out = ZipWriter(), io.BytesIO()
    when = datetime(2024, 5, 3)
    for n in range(70_000):
        out.write(writer.whole(f"F{n:06d}", when, b"x"))
    out.write(writer.finish())
    archive = zipfile.ZipFile(out)
    assert len(archive.namelist()) == 70_000 and archive.read("F069999") == b"x"


def test_zip64_central_record_past_4_gib():
    """An entry starting past 4 GiB is found through its ZIP64 extra field (offset)."""
    writer = ZipWriter()
    writer.position = 5 << 30  # as if 5 GiB of entries came before
    writer.begin("LATE", datetime(2024, 5, 3), 3)
    writer.feed(b"abc")
    writer.end()
    central = writer.finish()
    (offset,) = struct.unpack_from("<I", central, 42)
    assert offset == 0xFFFFFFFF
    header, size = struct.unpack_from("<HH", central, 46 + 4)
    assert (header, size) == (0x0001, 8)
    assert struct.unpack_from("<Q", central, 46 + 4 + 4)[0] == 5 << 30
    assert b"PK\x06\x06" in central and b"PK\x06\x07" in central  # ZIP64 end records


# A study larger than the server should ever hold: 24 instances of 8 MiB of pixel data.
COUNT, PIXELS = 24, 8 * 1024 * 1024
BIG_STUDY, BIG_SERIES = uid(92, 1), uid(92, 2)


def _big_instance(n: int) -> bytes:
    small = instance(BIG_STUDY, BIG_SERIES, uid(92, 3, n), Rows=2048, Columns=2048)
    cut = small.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data element
    return small[:cut] + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, PIXELS) + bytes(PIXELS)


def test_a_large_study_streams_in_flat_memory(tmp_path):
    with running_server(tmp_path) as (url, proc):
        for n in range(COUNT):
            r = httpx.post(
                url + "/v2/studies",
                content=_big_instance(n),
                headers={"Content-Type": "application/dicom"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
        baseline = peak_rss_mb(proc.pid)
        target = tmp_path / "study.zip"
        with (
            httpx.stream(
                "GET", f"{url}/v2/studies/{BIG_STUDY}", headers={"Accept": ZIP}, timeout=300
            ) as s,
            open(target, "wb") as out,
        ):
            assert s.status_code == 200
            expected = int(s.headers["content-length"])
            chunks = s.iter_raw(64 * 1024)
            out.write(next(chunks))
            # The first bytes are here; the server holds a fraction of the study, not all of
            # it (it reads each file as the socket takes it).
            early = peak_rss_mb(proc.pid) - baseline
            for chunk in chunks:
                out.write(chunk)
        grown = peak_rss_mb(proc.pid) - baseline
        # de-identified: each instance read whole, de-identified and sent, one at a time
        baseline = peak_rss_mb(proc.pid)
        deidentified = tmp_path / "deidentified.zip"
        with (
            httpx.stream(
                "GET",
                f"{url}/v2/studies/{BIG_STUDY}",
                params={"deidentify": "true"},
                headers={"Accept": ZIP},
                timeout=300,
            ) as s,
            open(deidentified, "wb") as out,
        ):
            assert s.status_code == 200 and "content-length" not in s.headers
            for chunk in s.iter_raw(64 * 1024):
                out.write(chunk)
        grown_deidentified = peak_rss_mb(proc.pid) - baseline
    study_mb = COUNT * PIXELS >> 20
    assert early < 100, f"the server grew by {early:.0f} MB before sending a {study_mb} MB study"
    assert grown < 100, f"the server grew by {grown:.0f} MB sending a {study_mb} MB study"
    assert grown_deidentified < 100, (
        f"the server grew by {grown_deidentified:.0f} MB de-identifying a {study_mb} MB study"
    )
    archive = zipfile.ZipFile(deidentified)
    assert len(archive.namelist()) == COUNT + 1 and archive.testzip() is None
    last = dcmread(archive.open("DICOM/ST000001/SE000001/IM000024"), stop_before_pixels=True)
    assert last.PatientIdentityRemoved == "YES" and last.StudyInstanceUID != BIG_STUDY
    assert target.stat().st_size == expected
    archive = zipfile.ZipFile(target)
    assert len(archive.namelist()) == COUNT + 1
    assert archive.testzip() is None
    assert archive.getinfo("DICOM/ST000001/SE000001/IM000024").file_size > PIXELS
