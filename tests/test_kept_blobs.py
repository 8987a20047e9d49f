"""Small instances kept by the index (--index-blob-max), on SQLite and on PostgreSQL:
committed with their rows, no file of their own, served by every read path as files are,
removed by the cleanup job, and files again for larger instances and with the setting at 0."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import index_database, running_server
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import kept_blobs, stow
from tests.test_bulk_update import run_jobs
from tests.test_wado import parts

CT = load("CT_small.dcm")  # 39 KB: under the default 64 KiB
DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def large(data: bytes, side: int = 256) -> bytes:
    """``data`` with new UIDs and a side x side 16-bit image: over 64 KiB."""
    ds = read(with_new_uids(data))
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ids(data: bytes) -> tuple[str, str, str]:
    ds = read(data)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "blobs").rglob("*.dcm"))


class Engine:
    """The real app on a blob folder, its index the embedded SQLite file or PostgreSQL."""

    def __init__(self, data: Path, index_url: str | None):
        self.data, self.index_url = data, index_url

    def client(self, **overrides) -> TestClient:
        if self.index_url:
            overrides["index_url"] = self.index_url
        s = Settings(data_dir=str(self.data), **overrides)
        return TestClient(create_app(s, build_archive(s)))

    def kept(self) -> dict[int, bytes]:
        """{version: file} of the files the index keeps."""
        return kept_blobs(self.data, self.index_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    data = tmp_path / "data"
    if request.param == "sqlite":
        yield Engine(data, None)
        return
    with index_database("postgresql") as url:
        yield Engine(data, url)


def bodies(response) -> list[bytes]:
    return [body for _, body in parts(response)]


def instance_url(data: bytes) -> str:
    study, series, sop = ids(data)
    return f"/v2/studies/{study}/series/{series}/instances/{sop}"


def test_a_small_instance_is_kept_by_the_index_and_served_as_stored(engine):
    data = engine.data
    small, big = CT, large(CT)
    assert len(small) <= Settings().index_blob_max < len(big)
    with engine.client() as http:
        assert stow(http, small, big).status_code == 200
        assert [p.stat().st_size for p in files(data)] == [len(big)]  # the large one only
        assert list(engine.kept().values()) == [small]
        url = instance_url(small)
        got = http.get(url, headers=DICOM)
        assert got.status_code == 200 and bodies(got) == [small]
        frame = http.get(url + "/frames/1", headers={"Accept": "multipart/related; type=*/*"})
        assert frame.status_code == 200
        assert bodies(frame)[0] == read(small).PixelData
        rendered = http.get(url + "/rendered", headers={"Accept": "image/png"})
        assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
        thumbnail = http.get(url + "/thumbnail", headers={"Accept": "image/jpeg"})
        assert thumbnail.status_code == 200


def test_a_study_of_kept_and_filed_instances_is_served_whole(engine):
    small = CT
    study, series, _ = ids(small)
    big = large(small)
    ds = read(big)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    big = out.getvalue()
    with engine.client() as http:
        assert stow(http, small, big).status_code == 200
        assert len(files(engine.data)) == 1 and len(engine.kept()) == 1
        for accept in (DICOM, {"Accept": "multipart/related; type=application/dicom"}):
            whole = http.get(f"/v2/studies/{study}", headers=accept)
            assert whole.status_code == 200 and bodies(whole) == [small, big]
        zipped = http.get(f"/v2/studies/{study}", headers={"Accept": "application/zip"})
        assert zipped.status_code == 200
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as z:
            stored = [z.read(n) for n in z.namelist() if not n.endswith("DICOMDIR")]
            assert sorted(stored) == sorted([small, big])


def test_a_duplicate_keeps_nothing_more_and_delete_removes_the_kept_file(engine):
    data, kept = engine.data, engine.kept
    with engine.client(delete_delay=0) as http:
        assert stow(http, CT).status_code == 200
        again = stow(http, CT)
        assert again.status_code == 409  # refused: its row and its kept file undone
        assert len(kept()) == 1 and files(data) == []
        study, _, _ = ids(CT)
        assert http.delete(f"/v2/studies/{study}").status_code == 204
        assert len(kept()) == 1  # readers that chose it may still read it, until cleanup
        archive = http.app.state.archive
        # the study's, and the refused duplicate's blob (none was written for either)
        assert http.portal.call(archive.cleanup.delete_due_blobs) == 2
        assert kept() == {} and files(data) == []
        assert http.get(instance_url(CT), headers=DICOM).status_code == 404


def test_the_stores_of_one_request_commit_with_their_files(engine):
    """Parts ready together commit in one index write (on PostgreSQL one statement), each
    with its file; a duplicate among them keeps nothing and leaves the others stored."""
    sent = [with_new_uids(CT) for _ in range(8)]
    with engine.client() as http:
        assert stow(http, sent[0]).status_code == 200
        answer = stow(http, *sent)
        assert answer.status_code == 202  # the first one refused as a duplicate
        assert sorted(engine.kept().values()) == sorted(sent)
        for body in sent:
            assert bodies(http.get(instance_url(body), headers=DICOM)) == [body]
    assert files(engine.data) == []


def test_upsert_and_bulk_update_of_a_kept_instance(engine):
    data, kept = engine.data, engine.kept
    url = instance_url(CT)
    study, _, _ = ids(CT)
    with engine.client(delete_delay=0) as http:
        assert stow(http, CT).status_code == 200
        changed = read(CT)
        changed.PatientName = "Upserted^Name"
        out = io.BytesIO()
        changed.save_as(out, enforce_file_format=True)
        body = out.getvalue()
        put = http.put("/v2/studies", content=body, headers={"Content-Type": "application/dicom"})
        assert put.status_code == 200, put.text
        assert sorted(kept().values()) == sorted([CT, body])  # the original is kept
        assert bodies(http.get(url, headers=DICOM)) == [body]
        original = {**DICOM, "msdicom-request-original": "true"}
        assert bodies(http.get(url, headers=original)) == [CT]
        # bulk update rewrites the latest version's header into a file of its own
        change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Bulk^Updated"}]}}
        job = http.post(
            "/v2/studies/$bulkUpdate", json={"studyInstanceUids": [study], "changeDataset": change}
        )
        assert job.status_code == 202, job.text
        run_jobs(http)
        assert http.get(job.json()["href"]).json()["status"] == "completed"
        latest = bodies(http.get(url, headers=DICOM))[0]
        assert len(files(data)) == 1
        assert read(latest).PatientName == "Bulk^Updated"
        assert read(latest).PixelData == read(CT).PixelData
        assert bodies(http.get(url, headers=original)) == [CT]
        assert http.portal.call(http.app.state.archive.cleanup.delete_due_blobs) >= 1
        assert list(kept().values()) == [CT]  # the upserted version replaced and gone


def test_with_the_setting_at_zero_every_instance_is_a_file(file_client, tmp_path):
    data = tmp_path / "data"
    with file_client(index_blob_max=0) as http:
        assert stow(http, CT).status_code == 200
        assert kept_blobs(data) == {} and [p.read_bytes() for p in files(data)] == [CT]
    # kept ones stay readable whatever the setting says later
    with file_client() as http:
        other = with_new_uids(CT)
        assert stow(http, other).status_code == 200
    with file_client(index_blob_max=0) as http:
        assert bodies(http.get(instance_url(other), headers=DICOM)) == [other]
        assert bodies(http.get(instance_url(CT), headers=DICOM)) == [CT]


def test_several_server_processes_keep_through_the_one_writer(tmp_path):
    """``serve --workers 2``: the file travels to the supervisor's writer with its rows."""
    data = tmp_path / "data"
    sent = [with_new_uids(CT) for _ in range(6)]
    data.mkdir()
    with running_server(data, workers="2") as (url, _):
        client = DICOMwebClient(url + "/v2")
        client.store_instances([read(b) for b in sent])
        for body in sent:
            study, series, sop = ids(body)
            got = client.retrieve_instance(study, series, sop)
            assert got.SOPInstanceUID == sop and got.PixelData == read(body).PixelData
        r = httpx.get(url + "/v2" + instance_url(sent[0])[3:], headers=DICOM)
        assert r.status_code == 200 and bodies(r) == [sent[0]]
    assert files(data) == [] and len(kept_blobs(data)) == len(sent)


def test_an_object_store_beside_the_index(azurite, engine):
    """Azure Blob storage (Azurite) with either index: small instances are kept by the index
    (no object written, asked of the index first), larger ones are objects."""
    small, big = CT, large(CT)
    with engine.client(blob_url=azurite.blob_url()) as http:
        assert stow(http, small, big).status_code == 200
        assert list(engine.kept().values()) == [small]
        for body in (small, big):
            assert bodies(http.get(instance_url(body), headers=DICOM)) == [body]
        frame = http.get(
            instance_url(small) + "/frames/1", headers={"Accept": "multipart/related; type=*/*"}
        )
        assert bodies(frame) == [read(small).PixelData]
        assert http.get(instance_url(with_new_uids(CT)), headers=DICOM).status_code == 404
