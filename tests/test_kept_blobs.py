"""Small instances kept by the SQLite index (--index-blob-max): committed with their rows, no
file of their own, served by every read path as files are, removed by the cleanup job, and
files again for larger instances, with the setting at 0, and on PostgreSQL."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from pathlib import Path

import httpx
from dicomweb_client import DICOMwebClient
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import index_database, running_server
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import stow
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


def kept(data_dir: Path) -> dict[int, bytes]:
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return dict(db.execute("SELECT version, data FROM kept_blob"))


def bodies(response) -> list[bytes]:
    return [body for _, body in parts(response)]


def instance_url(data: bytes) -> str:
    study, series, sop = ids(data)
    return f"/v2/studies/{study}/series/{series}/instances/{sop}"


def test_a_small_instance_is_kept_by_the_index_and_served_as_stored(file_client, tmp_path):
    data = tmp_path / "data"
    small, big = CT, large(CT)
    assert len(small) <= Settings().index_blob_max < len(big)
    with file_client() as http:
        assert stow(http, small, big).status_code == 200
        assert [p.stat().st_size for p in files(data)] == [len(big)]  # the large one only
        assert list(kept(data).values()) == [small]
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


def test_a_study_of_kept_and_filed_instances_is_served_whole(file_client, tmp_path):
    small = CT
    study, series, _ = ids(small)
    big = large(small)
    ds = read(big)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    big = out.getvalue()
    with file_client() as http:
        assert stow(http, small, big).status_code == 200
        assert len(files(tmp_path / "data")) == 1 and len(kept(tmp_path / "data")) == 1
        for accept in (DICOM, {"Accept": "multipart/related; type=application/dicom"}):
            whole = http.get(f"/v2/studies/{study}", headers=accept)
            assert whole.status_code == 200 and bodies(whole) == [small, big]
        zipped = http.get(f"/v2/studies/{study}", headers={"Accept": "application/zip"})
        assert zipped.status_code == 200
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as z:
            stored = [z.read(n) for n in z.namelist() if not n.endswith("DICOMDIR")]
            assert sorted(stored) == sorted([small, big])


def test_a_duplicate_keeps_nothing_more_and_delete_removes_the_kept_file(file_client, tmp_path):
    data = tmp_path / "data"
    with file_client(delete_delay=0) as http:
        assert stow(http, CT).status_code == 200
        again = stow(http, CT)
        assert again.status_code == 409  # refused: its row and its kept file undone
        assert len(kept(data)) == 1 and files(data) == []
        study, _, _ = ids(CT)
        assert http.delete(f"/v2/studies/{study}").status_code == 204
        assert len(kept(data)) == 1  # readers that chose it may still read it, until cleanup
        archive = http.app.state.archive
        # the study's, and the refused duplicate's blob (none was written for either)
        assert http.portal.call(archive.cleanup.delete_due_blobs) == 2
        assert kept(data) == {} and files(data) == []
        assert http.get(instance_url(CT), headers=DICOM).status_code == 404


def test_upsert_and_bulk_update_of_a_kept_instance(file_client, tmp_path):
    data = tmp_path / "data"
    url = instance_url(CT)
    study, _, _ = ids(CT)
    with file_client(delete_delay=0) as http:
        assert stow(http, CT).status_code == 200
        changed = read(CT)
        changed.PatientName = "Upserted^Name"
        out = io.BytesIO()
        changed.save_as(out, enforce_file_format=True)
        body = out.getvalue()
        put = http.put("/v2/studies", content=body, headers={"Content-Type": "application/dicom"})
        assert put.status_code == 200, put.text
        assert sorted(kept(data).values()) == sorted([CT, body])  # the original is kept
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
        assert list(kept(data).values()) == [CT]  # the upserted version replaced and gone


def test_with_the_setting_at_zero_every_instance_is_a_file(file_client, tmp_path):
    data = tmp_path / "data"
    with file_client(index_blob_max=0) as http:
        assert stow(http, CT).status_code == 200
        assert kept(data) == {} and [p.read_bytes() for p in files(data)] == [CT]
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
    assert files(data) == [] and len(kept(data)) == len(sent)


def test_postgresql_keeps_no_files(tmp_path):
    """On PostgreSQL every instance is a blob of its own (the setting is ignored)."""
    with index_database("postgresql") as index_url:
        s = Settings(data_dir=str(tmp_path / "data"), index_url=index_url)
        with TestClient(create_app(s, build_archive(s))) as http:
            assert stow(http, CT).status_code == 200
            assert [p.read_bytes() for p in files(tmp_path / "data")] == [CT]
            assert bodies(http.get(instance_url(CT), headers=DICOM)) == [CT]


def test_an_object_store_beside_the_sqlite_index(azurite, tmp_path):
    """Azure Blob storage (Azurite) with the embedded index: small instances are kept by the
    index (no object written, asked of the index first), larger ones are objects."""
    data = tmp_path / "data"
    small, big = CT, large(CT)
    s = Settings(data_dir=str(data), blob_url=azurite.blob_url())
    with TestClient(create_app(s, build_archive(s))) as http:
        assert stow(http, small, big).status_code == 200
        assert list(kept(data).values()) == [small]
        for body in (small, big):
            assert bodies(http.get(instance_url(body), headers=DICOM)) == [body]
        frame = http.get(
            instance_url(small) + "/frames/1", headers={"Accept": "multipart/related; type=*/*"}
        )
        assert bodies(frame) == [read(small).PixelData]
        assert http.get(instance_url(with_new_uids(CT)), headers=DICOM).status_code == 404
