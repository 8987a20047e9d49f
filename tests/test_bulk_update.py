"""Bulk update (POST /v2/studies/$bulkUpdate, reference section 12), on SQLite and PostgreSQL:
every instance of the studies gets a new version with the changed attributes (an ``update``
change-feed entry, the original kept for ``msdicom-request-original``), its pixel data copied
byte for byte; the request's rules (50 studies, one operation at a time, the attributes that
may change) refuse with 400 or 409 and change nothing; a job whose runner is killed completes
on another from its checkpoint."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta

import httpx
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from starlette.testclient import TestClient

from dicomhub.archive import bulk_update as service
from dicomhub.archive.fhir_sync import FhirSync
from dicomhub.cli import build_archive
from dicomhub.clock import utcnow
from dicomhub.errors import NotFound
from dicomhub.fhir.projection import Options
from dicomhub.model import Scope
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from dicomhub.workers.background import handlers
from dicomhub.workers.jobs import JobRunner
from tests.conftest import ROOT, index_database, running_server
from tests.dicomfiles import load, read, storable_files
from tests.helpers import MULTIPART, multipart, peak_rss_mb, stow
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance, uid
from tests.test_extended_tags import kill_runner_midway
from tests.test_upsert import RecordingFhir
from tests.test_wado import parts

ORIGINAL = {"msdicom-request-original": "true"}
STUDY, OTHER = uid(80), uid(81)
SOPS = [(uid(80, s), uid(80, s, i)) for s in (1, 2) for i in (1, 2)]
CHANGE = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]},
    "00100020": {"vr": "LO", "Value": ["NEW-ID"]},
    "00080050": {"vr": "SH", "Value": ["ACC-9"]},
}


def old(series: str, sop: str, study: str = STUDY, **attributes) -> bytes:
    return instance(study, series, sop, PatientName="Old^Name", PatientID="OLD-ID", **attributes)


def store_study(client) -> None:
    r = stow(client, *(old(series, sop) for series, sop in SOPS))
    assert r.status_code == 200, r.text
    r = stow(client, old(uid(81, 1), uid(81, 1, 1), study=OTHER))
    assert r.status_code == 200, r.text


def bulk(client, studies=(STUDY,), change=CHANGE, v: int = 2) -> httpx.Response:
    return client.post(
        f"/v{v}/studies/$bulkUpdate",
        json={"studyInstanceUids": list(studies), "changeDataset": change},
    )


def run_jobs(client) -> None:
    archive = client.app.state.archive
    runner = JobRunner(archive.index, handlers(archive, Settings().dimse))
    while client.portal.call(runner.run_once):
        pass


def names(client, path: str, headers: dict | None = None) -> list[str]:
    r = client.get(f"/v2{path}/metadata", headers=headers or {})
    assert r.status_code == 200, r.text
    return sorted(item["00100010"]["Value"][0]["Alphabetic"] for item in r.json())


def operation(client, href: str) -> dict:
    r = client.get(href)
    assert r.status_code in (200, 202), r.text
    return r.json()


def test_bulk_update_of_a_study(client):
    store_study(client)
    before = client.get(f"/v2/studies/{STUDY}/metadata").headers["ETag"]
    r = bulk(client)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["href"].endswith(f"/v2/operations/{body['id']}")
    assert operation(client, body["href"])["status"] == "notStarted"
    run_jobs(client)
    done = operation(client, body["href"])
    assert done["status"] == "completed", done
    assert done["type"] == "update"
    assert done["results"] == {
        "studyUpdated": 1,
        "studyFailed": 0,
        "instanceUpdated": 4,
        "errors": [],
    }
    # search, metadata, retrieve: the new values; ETags move on
    found = client.get("/v2/studies", params={"PatientID": "NEW-ID"}).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [STUDY]
    assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "New^Name"
    assert found[0]["00080050"]["Value"] == ["ACC-9"]
    old_ids = client.get("/v2/studies", params={"PatientID": "OLD-ID"}).json()
    assert [s["0020000D"]["Value"][0] for s in old_ids] == [OTHER]  # the other study only
    assert names(client, f"/studies/{STUDY}") == ["New^Name"] * 4
    assert client.get(f"/v2/studies/{STUDY}/metadata").headers["ETag"] != before
    series, sop = SOPS[0]
    path = f"/v2/studies/{STUDY}/series/{series}/instances/{sop}"
    ds = read(client.get(path, headers={"Accept": "application/dicom"}).content)
    assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == (
        "New^Name",
        "NEW-ID",
        "ACC-9",
    )
    assert ds.file_meta.ImplementationClassUID == service.IMPLEMENTATION_CLASS_UID
    # the original stays retrievable
    assert names(client, f"/studies/{STUDY}", ORIGINAL) == ["Old^Name"] * 4
    first = read(client.get(path, headers={"Accept": "application/dicom", **ORIGINAL}).content)
    assert (str(first.PatientName), first.PatientID) == ("Old^Name", "OLD-ID")
    # the change feed: an update entry per instance, after the creates
    feed = client.get("/v2/changefeed", params={"limit": 100}).json()
    updates = [e["sopInstanceUid"] for e in feed if e["action"] == "update"]
    assert sorted(updates) == sorted(sop for _, sop in SOPS)
    assert [e["action"] for e in feed][-4:] == ["update"] * 4
    # the other study is untouched
    assert names(client, f"/studies/{OTHER}") == ["Old^Name"]


def test_a_missing_study_and_a_refused_null_fail(client):
    store_study(client)
    missing = uid(89)
    r = bulk(client, [STUDY, missing], {"00100010": {"vr": "PN"}})  # a value cannot become null
    assert r.status_code == 202, r.text
    run_jobs(client)
    results = operation(client, r.json()["href"])["results"]
    assert results["studyUpdated"] == 0 and results["studyFailed"] == 2
    assert results["instanceUpdated"] == 0
    assert any(missing in e and "not found" in e for e in results["errors"])
    assert sum("cannot be changed to null" in e for e in results["errors"]) == 4
    assert names(client, f"/studies/{STUDY}") == ["Old^Name"] * 4
    # null where the instances have no value: allowed
    r = bulk(client, [STUDY], {"00102160": {"vr": "SH"}, **CHANGE})
    assert r.status_code == 202, r.text
    run_jobs(client)
    results = operation(client, r.json()["href"])["results"]
    assert results == {"studyUpdated": 1, "studyFailed": 0, "instanceUpdated": 4, "errors": []}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"studyInstanceUids": [uid(80, n) for n in range(51)], "changeDataset": CHANGE}, "50"),
        ({"studyInstanceUids": [], "changeDataset": CHANGE}, "studyInstanceUids"),
        ({"studyInstanceUids": ["not a uid"], "changeDataset": CHANGE}, "not a valid UID"),
        ({"studyInstanceUids": [STUDY]}, "changeDataset"),
        ({"studyInstanceUids": [STUDY], "changeDataset": {}}, "changeDataset"),
        (
            {"studyInstanceUids": [STUDY], "changeDataset": {"00080060": {"vr": "CS"}}},
            "Modality (00080060) cannot be changed",
        ),
        (
            {
                "studyInstanceUids": [STUDY],
                "changeDataset": {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}},
            },
            "StudyInstanceUID (0020000D) cannot be changed",
        ),
        (
            {
                "studyInstanceUids": [STUDY],
                "changeDataset": {"00101002": {"vr": "SQ", "Value": [{}]}},
            },
            "sequences cannot be changed",
        ),
        (
            {
                "studyInstanceUids": [STUDY],
                "changeDataset": {"00100010": {"vr": "LO", "Value": ["X"]}},
            },
            "vr must be PN",
        ),
        (
            {"studyInstanceUids": [STUDY], "changeDataset": {"nothex!!": {"vr": "PN"}}},
            "not a tag",
        ),
        ([STUDY], "JSON object"),
    ],
)
def test_bad_requests_change_nothing(client, body, says):
    store_study(client)
    r = client.post("/v2/studies/$bulkUpdate", json=body)
    assert r.status_code == 400, r.text
    assert says in r.text
    r = client.post(
        "/v2/studies/$bulkUpdate",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert names(client, f"/studies/{STUDY}") == ["Old^Name"] * 4
    assert bulk(client).status_code == 202  # nothing was queued before


def test_v1_has_no_bulk_update(client):
    store_study(client)
    r = bulk(client, v=1)
    assert r.status_code == 404, r.text
    assert names(client, f"/studies/{STUDY}") == ["Old^Name"] * 4


def test_one_bulk_update_at_a_time(client):
    store_study(client)
    first = bulk(client)
    assert first.status_code == 202, first.text
    second = bulk(client, [OTHER])
    assert second.status_code == 409, second.text
    assert first.json()["id"] in second.text
    run_jobs(client)
    third = bulk(client, [OTHER])
    assert third.status_code == 202, third.text


def frame(client, series: str, sop: str, headers: dict | None = None) -> bytes:
    r = client.get(
        f"/v2/studies/{STUDY}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"', **(headers or {})},
    )
    assert r.status_code == 200, r.text
    return r.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


@pytest.fixture(params=["memory", "folder", "azurite", "seaweedfs"])
def blob_client(request, tmp_path, index_url):
    """Object stores (a file copied to a spool file first: in memory, Azure Blob in Azurite,
    S3 in SeaweedFS) or a folder (read in place)."""
    blobs = {"memory": "memory://", "folder": ""}.get(request.param)
    if blobs is None:
        blobs = request.getfixturevalue(request.param).blob_url()
    s = Settings(
        data_dir=str(tmp_path / "data"), index_url=index_url, delete_delay=0, blob_url=blobs
    )
    with TestClient(create_app(s, build_archive(s))) as c:
        yield c


def test_a_large_instance_keeps_its_pixel_data(blob_client, monkeypatch):
    client = blob_client
    monkeypatch.setattr(service, "CHUNK", 1 << 20)  # several chunks copied
    series, sop = uid(80, 9), uid(80, 9, 1)
    rows = cols = 1024
    pixels = bytes(range(256)) * (rows * cols * 2 // 256)  # 2 MiB of 16-bit samples, 3 frames
    ds = read(old(series, sop))
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.PixelData = rows, cols, 3, pixels * 3
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    big = out.getvalue()
    r = stow(client, big)
    assert r.status_code == 200, r.text
    before = frame(client, series, sop)
    r = bulk(client)
    assert r.status_code == 202, r.text
    run_jobs(client)
    results = operation(client, r.json()["href"])["results"]
    assert results["instanceUpdated"] == 1 and not results["errors"], results
    assert frame(client, series, sop) == before == pixels
    path = f"/v2/studies/{STUDY}/series/{series}/instances/{sop}"
    ds = read(client.get(path, headers={"Accept": "application/dicom"}).content)
    assert str(ds.PatientName) == "New^Name" and ds.PixelData == pixels * 3
    assert frame(client, series, sop, ORIGINAL) == pixels
    # a delete removes both versions' files (the cleanup job): nothing is left behind
    archive = client.app.state.archive
    scope = Scope(STUDY, series, sop)
    keys = [
        found.blob_key
        for original in (False, True)
        for found in client.portal.call(archive.index.instances, replace(scope, original=original))
    ]
    assert len(set(keys)) == 2
    assert client.delete(path).status_code == 204
    assert client.portal.call(archive.cleanup.delete_due_blobs) == 2
    for key in keys:
        with pytest.raises(NotFound):
            client.portal.call(archive.blobs.read, key)


def test_a_killed_runner_leaves_the_update_to_another(client, monkeypatch, clock):
    """Killed once the first study is updated and saved as done: another runner updates the
    second from that checkpoint, and only the second."""
    store_study(client)
    archive = client.app.state.archive
    written: list[str] = []
    write_version = archive.bulk_update._write_version

    async def slow(instance, changes):
        await asyncio.sleep(1.0 if instance.id.study == OTHER else 0.05)
        written.append(instance.id.sop)
        return await write_version(instance, changes)

    monkeypatch.setattr(archive.bulk_update, "_write_version", slow)
    r = bulk(client, [STUDY, OTHER])
    assert r.status_code == 202, r.text
    op = r.json()["id"]
    kill_runner_midway(
        client,
        archive,
        op,
        unfinished=lambda: len(written) == 4,
        saved=lambda found: (found.checkpoint or {}).get("study") == 1,
    )
    state = operation(client, f"/v2/operations/{op}")
    assert state["status"] == "running" and 0 < state["percentComplete"] < 100
    assert state["results"]["instanceUpdated"] == 4
    # the first study is wholly updated; the second, in progress when the runner died, not at all
    assert names(client, f"/studies/{STUDY}") == ["New^Name"] * 4
    assert names(client, f"/studies/{OTHER}") == ["Old^Name"]
    clock.advance(1)  # the killed runner's lease (0.6 s) runs out
    second = JobRunner(archive.index, handlers(archive, Settings().dimse), lease=30)
    assert client.portal.call(second.run_once) is True
    final = operation(client, f"/v2/operations/{op}")
    assert final["status"] == "completed", final
    assert final["results"] == {
        "studyUpdated": 2,
        "studyFailed": 0,
        "instanceUpdated": 5,
        "errors": [],
    }
    assert names(client, f"/studies/{STUDY}") == ["New^Name"] * 4
    assert names(client, f"/studies/{OTHER}") == ["New^Name"]
    assert names(client, f"/studies/{STUDY}", ORIGINAL) == ["Old^Name"] * 4
    assert written[4:] == [uid(81, 1, 1)]  # went on from its checkpoint, not from the start


def test_served_and_run_by_the_node(tmp_path, index_url):
    """A real ``dicomhub serve`` (the index under test, folder blobs, its own job runners)."""
    with running_server(tmp_path, index_url=index_url, job_poll_interval="0.1") as (url, _):
        body = multipart(*(old(series, sop) for series, sop in SOPS))
        r = httpx.post(f"{url}/v2/studies", content=body, headers={"Content-Type": MULTIPART})
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{url}/v2/studies/$bulkUpdate",
            json={"studyInstanceUids": [STUDY], "changeDataset": CHANGE},
        )
        assert r.status_code == 202, r.text
        href = r.json()["href"]
        deadline = time.monotonic() + 60  # a bound on waiting, not an assertion on time
        while (state := httpx.get(href).json())["status"] in ("notStarted", "running"):
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["status"] == "completed", state
        assert state["results"]["instanceUpdated"] == 4
        meta = httpx.get(f"{url}/v2/studies/{STUDY}/metadata").json()
        assert {m["00100020"]["Value"][0] for m in meta} == {"NEW-ID"}
        assert httpx.post(f"{url}/v1/studies/$bulkUpdate", json={}).status_code == 404


def test_the_write_action_is_needed_and_requests_are_audited(tmp_path):
    """A reader is refused (403, the write data action); a writer's request is audited with
    the operation and the studies, never the changed values."""
    issuer = Issuer()
    try:
        settings = Settings(
            data_dir=str(tmp_path / "data"),
            blob_url="memory://",
            auth_issuer=issuer.url,
            auth_audience=AUDIENCE,
        )
        with TestClient(create_app(settings, build_archive(settings))) as client:
            reader = {"Authorization": "Bearer " + issuer.token(roles=["globalReader"])}
            writer = {"Authorization": "Bearer " + issuer.token(roles=["globalWriter"])}
            admin = {"Authorization": "Bearer " + issuer.token(roles=["globalAdmin"])}
            body = {"studyInstanceUids": [STUDY], "changeDataset": CHANGE}
            refused = client.post("/v2/studies/$bulkUpdate", json=body, headers=reader)
            assert refused.status_code == 403 and "write" in refused.json()["detail"]
            r = client.post("/v2/studies/$bulkUpdate", json=body, headers=writer)
            assert r.status_code == 202, r.text
            entries = client.get("/v2/audit", params={"action": "write"}, headers=admin).json()
            ours = [e for e in entries if e["route"] == "v2-bulk-update"]
            assert sorted(e["status"] for e in ours) == [202, 403]
            accepted = next(e for e in ours if e["status"] == 202)
            assert accepted["detail"]["operation"] == r.json()["id"]
            assert accepted["detail"]["studies"] == [STUDY]
            assert "New^Name" not in json.dumps(entries)
    finally:
        issuer.server.shutdown()


def test_documented_in_v2_only():
    from dicomhub.web.openapi import for_version

    v2 = for_version(2)
    operation = v2["paths"]["/studies/$bulkUpdate"]["post"]
    assert {"202", "400", "403", "409"} <= set(operation["responses"])
    studies = v2["components"]["schemas"]["BulkUpdateRequest"]["properties"]["studyInstanceUids"]
    assert studies["maxItems"] == service.MAX_STUDIES
    for keyword in service.CHANGEABLE_KEYWORDS:
        assert keyword in operation["description"]
    assert "/studies/$bulkUpdate" not in for_version(1)["paths"]


def test_the_rewrite_of_every_bundled_file():
    """Every bundled file (native and compressed pixel data, implicit and explicit VR, big
    endian): the new file reads back with the change and every other attribute as before, and
    its bytes from the first attribute past the header on are the old file's."""
    changes = Dataset.from_json(CHANGE)
    tried = 0
    for test_file in storable_files():
        before = read(test_file.data)
        if before.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            with pytest.raises(service.ChangeRefused):
                service.rewrite_header(io.BytesIO(test_file.data), changes)
            continue
        header, rest = service.rewrite_header(io.BytesIO(test_file.data), changes)
        after = read(header + test_file.data[rest:])
        assert str(after.PatientName) == "New^Name", test_file.name
        assert after.AccessionNumber == "ACC-9"
        for element in before:
            # group lengths are dropped (retired; the header's would be wrong)
            if element.tag.element and element.tag not in (0x00100010, 0x00100020, 0x00080050):
                assert after[element.tag].value == element.value, (test_file.name, element.tag)
        tried += 1
    assert tried > 5


def test_run_by_a_worker_process(tmp_path):
    """``serve`` without background jobs queues the bulk update; ``dicomhub worker`` on the same
    index (PostgreSQL) and blob store runs it."""
    blobs = tmp_path / "blobs"
    with index_database("postgresql") as url:
        settings = dict(index_url=url, blob_url=f"file://{blobs}", job_poll_interval="0.1")
        (tmp_path / "node").mkdir()
        with running_server(tmp_path / "node", background_jobs="false", **settings) as (base, _):
            body = multipart(*(old(series, sop) for series, sop in SOPS))
            r = httpx.post(f"{base}/v2/studies", content=body, headers={"Content-Type": MULTIPART})
            assert r.status_code == 200, r.text
            r = httpx.post(
                f"{base}/v2/studies/$bulkUpdate",
                json={"studyInstanceUids": [STUDY], "changeDataset": CHANGE},
            )
            assert r.status_code == 202, r.text
            href = r.json()["href"]
            assert httpx.get(href).json()["status"] == "notStarted"  # nobody runs it
            env = {f"DICOMHUB_{k.upper()}": v for k, v in settings.items()}
            worker = subprocess.Popen(
                [sys.executable, "-m", "dicomhub", "worker", "--data-dir", str(tmp_path / "w")],
                cwd=ROOT,
                env={**os.environ, **env},
            )
            try:
                deadline = time.monotonic() + 60  # a bound on waiting, not a timed assertion
                while (state := httpx.get(href).json())["status"] in ("notStarted", "running"):
                    assert time.monotonic() < deadline, state
                    time.sleep(0.1)
            finally:
                worker.terminate()
                assert worker.wait(10) == 0
            assert state["status"] == "completed", state
            assert state["results"]["instanceUpdated"] == 4
            meta = httpx.get(f"{base}/v2/studies/{STUDY}/metadata").json()
            assert {m["00100020"]["Value"][0] for m in meta} == {"NEW-ID"}


def test_the_fhir_projection_follows(client):
    """The FHIR sync reads the update entries: the study is projected again from the latest."""
    fhir = RecordingFhir()
    sync = FhirSync(client.app.state.archive.index, fhir, Options("http://a/v2"), 10, 30)

    def described() -> list[str]:
        while client.portal.call(sync.step, "node").changes:
            pass
        studies = [
            e["resource"]
            for bundle in fhir.bundles
            for e in bundle["entry"]
            if e.get("resource", {}).get("resourceType") == "ImagingStudy"
        ]
        fhir.bundles.clear()
        return [s.get("description") for s in studies]

    assert stow(client, old(*SOPS[0], StudyDescription="BEFORE")).status_code == 200
    assert described() == ["BEFORE"]
    change = {"00081030": {"vr": "LO", "Value": ["AFTER"]}}
    assert bulk(client, change=change).status_code == 202
    run_jobs(client)
    assert set(described()) == {"AFTER"}


def test_an_instance_deleted_meanwhile_is_not_brought_back(client):
    """An instance deleted while its new version was written: that version is abandoned
    (InstanceChanged rolls its index write back), the instance stays deleted, the others are
    updated."""
    store_study(client)
    archive = client.app.state.archive
    series, sop = SOPS[0]
    rewrite = archive.bulk_update._rewrite

    async def deleted_meanwhile(instance, changes):
        body = await rewrite(instance, changes)
        if instance.id.sop == sop:
            await archive.index.delete(Scope(STUDY, series, sop), utcnow())
        return body

    archive.bulk_update._rewrite = deleted_meanwhile
    later = utcnow() + timedelta(days=1)
    uploads = client.portal.call(archive.index.stale_uploads, later)  # STOW's unused versions
    r = bulk(client)
    assert r.status_code == 202, r.text
    run_jobs(client)
    results = operation(client, r.json()["href"])["results"]
    assert results["studyUpdated"] == 0 and results["studyFailed"] == 1
    assert results["instanceUpdated"] == 3
    assert len(results["errors"]) == 1 and "deleted during the bulk update" in results["errors"][0]
    path = f"/v2/studies/{STUDY}/series/{series}/instances/{sop}/metadata"
    assert client.get(path).status_code == 404
    assert names(client, f"/studies/{STUDY}") == ["New^Name"] * 3
    # the abandoned version's upload was ended (its blob deleted), the others' too
    assert client.portal.call(archive.index.stale_uploads, later) == uploads


LARGE = 256 * 1024 * 1024  # pixel data bytes of the large instance


def test_a_large_instance_updates_in_constant_memory(tmp_path):
    """A 256 MB instance in a real server: its update grows the server's peak memory by far less
    than the instance (the header rewritten, the rest copied in chunks), and its frames are the
    same bytes after."""
    ds = read(load("CT_small.dcm"))
    del ds.PixelData
    ds.StudyInstanceUID, ds.PatientName = STUDY, "Old^Name"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 1024, 16, 16, 15
    frame_size = 1024 * 1024 * 2
    ds.NumberOfFrames = LARGE // frame_size
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    header = out.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, LARGE)
    chunk = bytes(range(256)) * (frame_size // 256)  # one frame's bytes, each frame alike

    def body():
        yield header
        for n in range(LARGE // frame_size):
            yield chunk[n % 256 :] + chunk[: n % 256]  # frames differ from one another

    inst = f"{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    frames = LARGE // frame_size

    def frame_bytes(url: str, n: int) -> bytes:
        r = httpx.get(
            f"{url}/v2/studies/{inst}/frames/{n}",
            headers={"Accept": "application/octet-stream"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.content

    with running_server(tmp_path, job_poll_interval="0.1") as (url, proc):
        r = httpx.post(
            url + "/v2/studies",
            content=body(),
            headers={"Content-Type": "application/dicom"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        first, last = frame_bytes(url, 1), frame_bytes(url, frames)
        assert first == chunk and last == chunk[(frames - 1) % 256 :] + chunk[: (frames - 1) % 256]
        baseline = peak_rss_mb(proc.pid)
        r = httpx.post(
            f"{url}/v2/studies/$bulkUpdate",
            json={"studyInstanceUids": [ds.StudyInstanceUID], "changeDataset": CHANGE},
        )
        assert r.status_code == 202, r.text
        href = r.json()["href"]
        deadline = time.monotonic() + 120  # a bound on waiting, not a timed assertion
        while (state := httpx.get(href).json())["status"] in ("notStarted", "running"):
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["status"] == "completed" and state["results"]["instanceUpdated"] == 1, state
        grown = peak_rss_mb(proc.pid) - baseline
        assert grown < 100, f"server grew by {grown:.0f} MB for a {LARGE >> 20} MB instance"
        assert frame_bytes(url, 1) == first and frame_bytes(url, frames) == last
        meta = httpx.get(f"{url}/v2/studies/{inst}/metadata").json()
        assert meta[0]["00100010"]["Value"][0]["Alphabetic"] == "New^Name"


def test_values_the_character_set_cannot_hold_fail(client):
    """No Specific Character Set: only ASCII may be written (the instance is not re-encoded);
    UTF-8 (ISO_IR 192): anything."""
    store_study(client)
    utf8 = uid(82)
    r = stow(client, old(uid(82, 1), uid(82, 1, 1), study=utf8, SpecificCharacterSet="ISO_IR 192"))
    assert r.status_code == 200, r.text
    change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}}
    r = bulk(client, [STUDY, utf8], change)
    assert r.status_code == 202, r.text
    run_jobs(client)
    results = operation(client, r.json()["href"])["results"]
    assert results["studyUpdated"] == 1 and results["studyFailed"] == 1, results
    assert results["instanceUpdated"] == 1
    assert sum("cannot be encoded" in e for e in results["errors"]) == 4
    assert names(client, f"/studies/{utf8}") == ["Müller^Jürgen"]
    assert names(client, f"/studies/{STUDY}") == ["Old^Name"] * 4


def test_readers_see_a_study_before_or_after_its_update_never_between(tmp_path, index_url):
    """A real ``dicomhub serve`` updates a 500-instance study while a client reads it: every
    search, metadata and retrieval answer holds the old patient ID for all 500 instances or
    the new one for all, never a mix, never an error."""
    count, series = 500, uid(82, 1)
    files = [
        instance(uid(82), series, uid(82, 1, n), PatientName="Old^Name", PatientID="OLD-ID")
        for n in range(count)
    ]
    with running_server(tmp_path, index_url=index_url, job_poll_interval="0.1") as (url, _):
        with httpx.Client(base_url=f"{url}/v2", timeout=60) as http:
            for start in range(0, count, 100):
                body = multipart(*files[start : start + 100])
                r = http.post("/studies", content=body, headers={"Content-Type": MULTIPART})
                assert r.status_code == 200, r.text
            r = http.post(
                "/studies/$bulkUpdate",
                json={"studyInstanceUids": [uid(82)], "changeDataset": CHANGE},
            )
            assert r.status_code == 202, r.text
            href = r.json()["href"]
            seen: list[set[str]] = []
            deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on time
            while (state := httpx.get(href).json())["status"] in ("notStarted", "running"):
                assert time.monotonic() < deadline, state
                r = http.get(f"/studies/{uid(82)}/metadata")
                assert r.status_code == 200, r.text
                ids = [item["00100020"]["Value"][0] for item in r.json()]
                r = http.get(
                    f"/studies/{uid(82)}/instances",
                    params={"includefield": "00100020", "limit": count},
                )
                assert r.status_code == 200, r.text
                found = [item["00100020"]["Value"][0] for item in r.json()]
                assert len(ids) == len(found) == count
                seen += [set(ids), set(found)]
                if len(seen) % 10 == 2:  # now and then the files themselves
                    r = http.get(
                        f"/studies/{uid(82)}",
                        headers={"Accept": 'multipart/related; type="application/dicom"'},
                    )
                    assert r.status_code == 200
                    got = [pydicom.dcmread(io.BytesIO(body)).PatientID for _, body in parts(r)]
                    assert len(got) == count
                    seen.append(set(got))
            assert state["status"] == "completed" and state["results"]["instanceUpdated"] == count
            assert seen, "no read happened while the update ran"
            assert all(len(ids) == 1 for ids in seen), [sorted(ids) for ids in seen if len(ids) > 1]
            r = http.get(f"/studies/{uid(82)}/metadata")
            assert {item["00100020"]["Value"][0] for item in r.json()} == {"NEW-ID"}
