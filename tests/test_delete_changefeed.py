"""Delete, change feed, cleanup and crash safety on the embedded default (SQLite + folder)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dicomhub.cli import build_archive
from dicomhub.clock import utcnow
from dicomhub.model import InstanceId, Scope, blob_key
from dicomhub.settings import Settings
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import stored_blobs, stow

CT = load("CT_small.dcm")


def ids(data: bytes):
    ds = read(data)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def blobs(tmp_path: Path) -> list[bytes]:
    return stored_blobs(tmp_path / "data")


def test_delete_levels(file_client, tmp_path):
    with file_client(delete_delay=0) as client:
        a, b = CT, with_new_uids(CT)
        other_series = with_new_uids(CT, series="1.2.3.4.5")
        stow(client, a, b, other_series)
        study, series, sop = ids(a)
        inst = f"/v2/studies/{study}/series/{series}/instances/{sop}"
        assert client.delete(inst).status_code == 204
        assert client.delete(inst).status_code == 404
        assert client.get(inst + "/metadata").status_code == 404
        assert len(client.get(f"/v2/studies/{study}/metadata").json()) == 2
        assert client.delete(f"/v2/studies/{study}/series/{series}").status_code == 204
        assert len(client.get(f"/v2/studies/{study}/metadata").json()) == 1
        assert client.delete(f"/v2/studies/{study}").status_code == 204
        assert client.get(f"/v2/studies/{study}/metadata").status_code == 404
        assert client.delete(f"/v2/studies/{study}").status_code == 404
        assert client.delete("/v2/studies/1.2.x").status_code == 400
        assert len(blobs(tmp_path)) == 3  # removed later, by the cleanup job
        archive = client.app.state.archive
        removed = client.portal.call(archive.cleanup.delete_due_blobs)
        assert removed == 3 and blobs(tmp_path) == []


def test_cleanup_queue_survives_restart(file_client, tmp_path, clock):
    with file_client(delete_delay=1) as client:
        stow(client, CT)
        study, _, _ = ids(CT)
        client.delete(f"/v2/studies/{study}")
        archive = client.app.state.archive
        assert client.portal.call(archive.cleanup.delete_due_blobs) == 0  # not due yet
    assert len(blobs(tmp_path)) == 1
    clock.advance(1.1)  # the deletion is due
    with file_client() as client:  # a new process: the queue is in the index
        archive = client.app.state.archive
        assert client.portal.call(archive.cleanup.delete_due_blobs) == 1
    assert blobs(tmp_path) == []


def test_purge_removes_deleted_files_now(file_client, tmp_path):
    """POST /v2/deleted/$purge: an operator short of space need not wait for --delete-delay;
    only deleted instances' files go, and the purge is audited."""
    kept = with_new_uids(CT, study="1.2.826.0.1.3680043.10.999.55")
    with file_client(audit_log="index") as client:
        stow(client, CT, kept)
        client.delete(f"/v2/studies/{ids(CT)[0]}")
        assert len(blobs(tmp_path)) == 2  # the default delay is days
        r = client.post("/v2/deleted/$purge")
        assert r.status_code == 200 and r.json() == {"deletedBlobs": 1}
        assert len(blobs(tmp_path)) == 1
        study, series, sop = ids(kept)
        got = client.get(
            f"/v2/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
        )
        assert got.content == kept
        assert client.post("/v2/deleted/$purge").json() == {"deletedBlobs": 0}
        client.portal.call(client.app.state.archive.audit.flush)
        entries = client.get("/v2/audit", params={"action": "admin"}).json()
        assert [e["detail"]["deletedBlobs"] for e in entries if "purge" in e["path"]] == [1, 0]


def test_interrupted_store_is_undone_at_start(tmp_path):
    """A crash between claim and commit: the claim and the blob go at the next start."""
    settings = Settings(data_dir=str(tmp_path / "data"))

    async def crash():
        archive = build_archive(settings)
        await archive.start()
        [version] = await archive.index.reserve_versions(InstanceId(*ids(CT)).partition, 1)
        key = blob_key("Microsoft.Default", version)
        await archive.blobs.put(key, CT)
        (settings.spool_dir / "left.part").write_bytes(b"half a request")
        await archive.index.close()  # no commit: the process "dies" here

    asyncio.run(crash())
    assert len(blobs(tmp_path)) == 1

    async def restart():
        archive = build_archive(settings)
        await archive.start()
        found = await archive.index.instances(Scope(ids(CT)[0]))
        claims = await archive.index.stale_uploads(utcnow() + timedelta(days=1))
        await archive.close()
        return found, claims

    found, claims = asyncio.run(restart())
    assert found == [] and claims == []
    assert blobs(tmp_path) == []
    assert list(settings.spool_dir.glob("*.part")) == []


def test_change_feed_states(client):
    stow(client, CT)
    study, series, sop = ids(CT)
    client.delete(f"/v2/studies/{study}")
    stow(client, CT)
    feed = client.get("/v1/changefeed").json()
    assert [(e["action"], e["state"]) for e in feed] == [
        ("create", "replaced"),
        ("delete", "replaced"),
        ("create", "current"),
    ]
    assert feed[1]["metadata"] is None
    assert feed[2]["metadata"]["00080018"]["Value"] == [sop]
    assert "BulkDataURI" not in str(feed[2]["metadata"])
    assert [e["sequence"] for e in feed] == [1, 2, 3]
    assert feed[0]["partitionName"] == "Microsoft.Default"
    latest = client.get("/v1/changefeed/latest?includeMetadata=false").json()
    assert latest["sequence"] == 3 and "metadata" not in latest


def test_change_feed_v1_paging(client):
    for _ in range(5):
        stow(client, with_new_uids(CT))
    page = client.get("/v1/changefeed?offset=1&limit=2").json()
    assert [e["sequence"] for e in page] == [2, 3]
    assert client.get("/v1/changefeed?limit=101").status_code == 400
    assert client.get("/v1/changefeed?limit=0").status_code == 400
    assert client.get("/v1/changefeed?offset=-1").status_code == 400
    assert client.get("/v1/changefeed?limit=abc").status_code == 400
    assert len(client.get("/v1/changefeed").json()) == 5


def test_change_feed_v2_time_window(client):
    before = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(3):
        stow(client, with_new_uids(CT))
    after = datetime.now(UTC) + timedelta(seconds=1)
    params = {"startTime": before.isoformat(), "endTime": after.isoformat()}
    assert len(client.get("/v2/changefeed", params=params).json()) == 3
    page = client.get("/v2/changefeed", params=params | {"offset": 1, "limit": 1}).json()
    assert [e["sequence"] for e in page] == [2]
    empty = {"startTime": after.isoformat()}
    assert client.get("/v2/changefeed", params=empty).json() == []
    assert client.get("/v2/changefeed?limit=201").status_code == 400
    assert len(client.get("/v2/changefeed?limit=200").json()) == 3


@pytest.mark.parametrize(
    "query",
    [
        "startTime=2023-05-03T10:58:00",  # no offset
        "startTime=yesterday",
        "startTime=2023-05-03T10:58:00Z&endTime=2023-05-03T10:58:00Z",
        "includeMetadata=maybe",
    ],
)
def test_change_feed_v2_bad_parameters(client, query):
    r = client.get("/v2/changefeed?" + query)
    assert r.status_code == 400
    assert r.json()["detail"]


def test_latest_on_empty_feed(client):
    assert client.get("/v2/changefeed/latest").json() is None
