"""End to end: `dicomhub serve --fhir-url` syncs by itself; `dicomhub fhir-sync` alone, killed
mid-sync and started again, leaves every study in FHIR exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import ROOT, running_server
from tests.test_fhir import imaging_study, study


def wait_synced(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v2/fhir/status").json()
        if status["lag"] == 0 and status["checkpoint"] > 0:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def post(url: str, files: list[bytes]) -> None:
    for data in files:
        r = httpx.post(
            f"{url}/v2/studies", content=data, headers={"Content-Type": "application/dicom"}
        )
        assert r.status_code == 200, r.text


def test_serve_syncs_by_itself(tmp_path, fhir_server):
    with running_server(tmp_path, fhir_url=fhir_server.url, fhir_poll_interval="0.2") as (url, _):
        files = study("E2E-1", "E2E-ACC-1", 2)
        post(url, files)
        status = wait_synced(url)
        assert status["synced"] == 2 and status["failures"] == 0
        from tests.dicomfiles import read

        [found] = imaging_study(fhir_server, read(files[0]).StudyInstanceUID)
        assert found["numberOfInstances"] == 2


def test_fhir_sync_alone_killed_and_restarted(tmp_path, fhir_server):
    from tests.dicomfiles import read

    settings = dict(fhir_url=fhir_server.url, background_jobs="false", fhir_batch_size="2")
    with running_server(tmp_path, **settings) as (url, _):
        studies = [study(f"E2E-K{n}", f"E2E-K{n}", 2) for n in range(8)]
        for files in studies:
            post(url, files)
        env = dict(
            os.environ,
            **{f"DICOMHUB_{k.upper()}": v for k, v in settings.items()},
            DICOMHUB_DATA_DIR=str(tmp_path),
            DICOMHUB_FHIR_POLL_INTERVAL="0.2",
            DICOMHUB_JOB_LEASE="1",  # the killed process's lease runs out fast
        )
        command = [sys.executable, "-m", "dicomhub", "fhir-sync"]
        first = subprocess.Popen(command, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v2/fhir/status").json()["checkpoint"] == 0:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-sync: some studies are in FHIR, some not
        first.wait()
        assert httpx.get(f"{url}/v2/fhir/status").json()["lag"] > 0
        second = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            status = wait_synced(url)
        finally:
            second.terminate()
            second.wait(10)
        assert status["checkpoint"] == 16 and status["failures"] == 0
        for files in studies:
            [found] = imaging_study(fhir_server, read(files[0]).StudyInstanceUID)
            assert found["numberOfInstances"] == 2
