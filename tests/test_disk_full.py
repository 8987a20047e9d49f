"""A full disk (a real, small tmpfs mounted for the test): STOW answers per part (what was
stored, what was refused for lack of space: 0xA700) or 507 when nothing could be stored, never
500; a refused store leaves no blob behind; the health check names the index and blob store as
degraded; reads (a thumbnail whose cache write fails too) go on; once space is freed, stores
succeed again and health is back, without a restart."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.dicom.stow import OUT_OF_RESOURCES
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import running_server
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart
from tests.test_zerocopy import big

STUDY = "1.2.826.0.1.3680043.10.999.7"
SERIES = STUDY + ".1"
JSON = {"Accept": "application/dicom+json"}
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}


@contextlib.contextmanager
def small_disk(where: Path, megabytes: int):
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def resize(where: Path, megabytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(where)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*.dcm"))


def test_a_full_disk_refuses_what_does_not_fit_and_recovers(tmp_path):
    # 20 x 205 KB into 3 MB: the first ones (8 written at once) fit, the last ones cannot
    files = [big(STUDY, SERIES, 320) for _ in range(20)]
    with small_disk(tmp_path / "disk", 3) as disk:
        settings = Settings(data_dir=str(disk / "data"))
        with TestClient(create_app(settings, build_archive(settings))) as client:
            headers = {"Content-Type": MULTIPART, **JSON}
            r = client.post("/v2/studies", content=multipart(*files), headers=headers)
            assert r.status_code == 202, r.text
            stored = r.json().get("00081199", {}).get("Value", [])
            failed = r.json()["00081198"]["Value"]
            assert stored and failed and len(stored) + len(failed) == len(files)
            assert {f["00081197"]["Value"][0] for f in failed} == {OUT_OF_RESOURCES}
            assert all("no space left" in f["00000902"]["Value"][0] for f in failed)
            # a refused store leaves no blob: one file per stored instance, each served whole
            assert len(stored_files(disk / "data")) == len(stored)
            sent = {read(f).SOPInstanceUID: f for f in files}
            for item in stored:
                got = client.get(item["00081190"]["Value"][0], headers=AS_STORED)
                assert got.status_code == 200
                assert got.content == sent[item["00081155"]["Value"][0]]

            # the rest of the disk taken by something else: nothing fits any more, 507 with a
            # problem document, and nothing changes
            fill(disk / "other")
            r = client.post(
                "/v2/studies",
                content=files[-1],
                headers={"Content-Type": "application/dicom", **JSON},
            )
            assert r.status_code == 507, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "no space left" in r.json()["detail"]
            # a part too big to be held in memory finds no space in the spool either
            r = client.post(
                "/v2/studies",
                content=big(STUDY, SERIES, 900),  # 1.6 MB: spooled
                headers={"Content-Type": "application/dicom", **JSON},
            )
            assert r.status_code == 507, r.text
            assert list((disk / "data" / "spool").glob("*")) == []
            assert len(stored_files(disk / "data")) == len(stored)
            found = client.get(f"/v2/studies/{STUDY}/instances", headers=JSON).json()
            assert len(found) == len(stored)
            health = client.get("/health/check")
            assert health.status_code == 503
            unhealthy = {d["name"]: d["description"] for d in health.json()["details"]}
            assert set(unhealthy) == {"index", "blob store"}
            assert all("bytes and" in text for text in unhealthy.values())

            # reads go on; a thumbnail whose cache write finds no space is still served
            item = stored[0]["00081190"]["Value"][0]
            thumb = client.get(item + "/thumbnail", headers={"Accept": "image/jpeg"})
            assert thumb.status_code == 200 and thumb.content.startswith(b"\xff\xd8")
            assert not list((disk / "data" / "blobs").rglob("*.thumbnail.*"))

            # space freed: stores succeed again, no restart
            resize(disk, 64)
            assert client.get("/health/check").status_code == 200
            r = client.post("/v2/studies", content=multipart(*files), headers=headers)
            assert r.status_code in (200, 202), r.text
            sops = {i["00081155"]["Value"][0] for i in r.json()["00081199"]["Value"]}
            failed = r.json().get("00081198", {}).get("Value", [])
            assert {f["00081197"]["Value"][0] for f in failed} <= {45070}  # the ones stored
            assert len(sops) + len(failed) == len(files)
            found = client.get(f"/v2/studies/{STUDY}/instances", headers=JSON).json()
            assert len(found) == len(files)


@pytest.mark.parametrize("workers", ["2", "1"])
def test_the_server_starts_on_a_full_disk_and_serves_reads(tmp_path, workers):
    """One restart on a full disk must not take reads down: `dicomhub serve` (several
    processes, as by default, so the index writer service too; or one) starts, reads work,
    stores get 507, health says degraded; freed space is used without a restart."""
    files = [big(STUDY, SERIES, 160) for _ in range(3)]
    one = {"Content-Type": "application/dicom", **JSON}
    with small_disk(tmp_path / "disk", 16) as disk:
        data = disk / "data"
        data.mkdir()
        with running_server(data, log=tmp_path / "1.log", workers=workers) as (url, _):
            for f in files:
                assert httpx.post(url + "/v2/studies", content=f, headers=one).status_code == 200
        fill(disk / "other")
        restarted = running_server(data, False, log=tmp_path / "2.log", workers=workers)
        with restarted as (url, _):
            found = httpx.get(f"{url}/v2/studies/{STUDY}/instances", headers=JSON)
            assert found.status_code == 200 and len(found.json()) == len(files)
            sent = {read(f).SOPInstanceUID: f for f in files}
            for item in found.json():
                sop = item["00080018"]["Value"][0]
                got = httpx.get(item["00081190"]["Value"][0], headers=AS_STORED)
                assert got.status_code == 200 and got.content == sent[sop]
            metadata = httpx.get(f"{url}/v2/studies/{STUDY}/metadata", headers=JSON)
            assert metadata.status_code == 200 and len(metadata.json()) == len(files)
            other = big(STUDY, SERIES, 500)  # 500 KB: more than the index's reserve
            r = httpx.post(url + "/v2/studies", content=other, headers=one)
            assert r.status_code == 507, r.text
            health = httpx.get(url + "/health/check")
            assert health.status_code == 503
            assert {d["name"] for d in health.json()["details"]} == {"index", "blob store"}

            (disk / "other").unlink()  # space freed: no restart needed
            assert httpx.get(url + "/health/check").status_code == 200
            assert httpx.post(url + "/v2/studies", content=other, headers=one).status_code == 200
            found = httpx.get(f"{url}/v2/studies/{STUDY}/instances", headers=JSON)
            assert len(found.json()) == len(files) + 1
