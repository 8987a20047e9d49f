"""GET /metrics after a known workload: the counters equal the work done, in one process (the
real app in-process) and over the processes of `serve --workers 2` beside a DIMSE process, on
every scrape, whichever process answers it."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import free_port, running_server
from tests.helpers import MULTIPART, multipart, stow
from tests.synthetic import instance, uid

INSTANCE = "/v2/studies/{study}/series/{series}/instances/{sop}"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by name and labels (the parser checks the format)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_equal_the_work_done(client):
    before = samples(client.get("/metrics").text)
    study, series = uid(70, 1), uid(70, 1, 1)
    bodies = [instance(study, series, uid(70, 1, 1, n)) for n in range(3)]
    assert stow(client, *bodies).status_code == 200
    assert stow(client, bodies[0]).status_code == 409  # a duplicate: refused
    assert client.get("/v2/studies", params={"PatientID": "P0"}).status_code == 200
    assert client.get("/v2/series/count").status_code == 200
    path = f"/v2/studies/{study}/series/{series}/instances/{uid(70, 1, 1, 0)}"
    retrieved = client.get(path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert retrieved.status_code == 200
    assert client.get("/no/such/route").status_code == 404
    tags = [{"path": "PatientWeight", "level": "Study"}]
    assert client.post("/v2/extendedquerytags", json=tags).status_code == 202  # a job queued
    after = samples(client.get("/metrics").text)

    requests = "dicomhub_http_requests_total"
    assert delta(before, after, requests, route="/v2/studies", method="POST", status="200") == 1
    assert delta(before, after, requests, route="/v2/studies", method="POST", status="409") == 1
    assert delta(before, after, requests, route="/v2/studies", method="GET", status="200") == 1
    assert delta(before, after, requests, route=INSTANCE, method="GET", status="200") == 1
    assert delta(before, after, requests, route="unmatched", method="GET", status="404") == 1
    histogram = "dicomhub_http_request_duration_seconds_count"
    assert delta(before, after, histogram, route=INSTANCE, method="GET", status="200") == 1
    # never a raw URL: the route label holds templates only
    routes = {dict(labels)["route"] for name, labels in after if name == requests}
    assert routes <= {r.path_format for r in client.app.routes} | {"unmatched"}, routes

    stored, refused = {"outcome": "stored"}, {"outcome": "refused"}
    assert delta(before, after, "dicomhub_stow_instances_total", **stored) == 3
    assert delta(before, after, "dicomhub_stow_instances_total", **refused) == 1
    assert delta(before, after, "dicomhub_stow_bytes_total", **stored) == sum(map(len, bodies))
    assert delta(before, after, "dicomhub_stow_bytes_total", **refused) == len(bodies[0])
    sent = len(retrieved.content)
    assert delta(before, after, "dicomhub_retrieve_bytes_total", route=INSTANCE) == sent
    qido = "dicomhub_qido_duration_seconds_count"
    assert delta(before, after, qido, level="study", kind="search") == 1
    assert delta(before, after, qido, level="series", kind="count") == 1
    index = "dicomhub_index_operation_duration_seconds_count"
    assert delta(before, after, index, operation="search") == 1
    assert delta(before, after, index, operation="count") == 1
    assert delta(before, after, "dicomhub_index_operation_errors_total", operation="search") == 0
    # small instances: kept by the index with their rows (no blob put) and read from it
    blob = "dicomhub_blob_operation_duration_seconds_count"
    assert delta(before, after, blob, operation="put") == 0
    assert delta(before, after, index, operation="kept_blobs") == 1
    # read from the index when scraped: the reindex job waits (no job runner in this app)
    assert value(after, "dicomhub_job_queue_depth", type="reindex") == 1
    assert value(after, "dicomhub_job_queue_oldest_age_seconds", type="reindex") >= 0
    assert value(after, "dicomhub_jobs_running", type="reindex") == 0
    assert value(after, "process_cpu_seconds_total") > 0  # the process collector


def _dimse_work(port: int, datasets: list[bytes]) -> list[int]:
    """On one association: a C-ECHO, a C-STORE of each data set, a C-FIND of their study;
    the final statuses."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.add_requested_context(Find)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_echo().Status]
        for data in datasets:
            statuses.append(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = pydicom.dcmread(io.BytesIO(datasets[0])).StudyInstanceUID
        statuses.append([status.Status for status, _ in assoc.send_c_find(query, Find)][-1])
        return statuses
    finally:
        assoc.release()


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the DIMSE port did not open"
            time.sleep(0.1)


def _metrics_folder(proc) -> Path:
    """The folder serve's processes share their metrics in (from a server process's
    environment: the supervisor made it before starting them)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("no server process names the metrics folder")


def test_workers_sum_their_metrics(tmp_path):
    port = free_port()
    study, series = uid(71, 1), uid(71, 1, 1)
    over_http = [instance(study, series, uid(71, 1, 1, n)) for n in range(6)]
    over_dimse = [instance(study, series, uid(71, 1, 1, 100 + n)) for n in range(2)]
    with running_server(tmp_path, workers="2", dimse_port=str(port)) as (url, proc):
        folder = _metrics_folder(proc)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for body in over_http:  # each on a connection of its own: spread over the processes
            r = httpx.post(
                url + "/v2/studies",
                content=multipart(body),
                headers={"Content-Type": MULTIPART},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        _wait_for_port(port)
        assert _dimse_work(port, over_dimse) == [0, 0, 0, 0]
        assert httpx.get(url + "/v2/studies").status_code == 200
        path = f"{url}/v2/studies/{study}/series/{series}/instances/{uid(71, 1, 1, 0)}"
        retrieved = httpx.get(path, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert retrieved.status_code == 200
        for _ in range(6):  # whichever process answers, the totals of all of them
            found = samples(httpx.get(url + "/metrics").text)
            requests = dict(route="/v2/studies", method="POST", status="200")
            assert value(found, "dicomhub_http_requests_total", **requests) == 6
            assert value(found, "dicomhub_stow_instances_total", outcome="stored") == 6
            assert value(found, "dicomhub_stow_bytes_total", outcome="stored") == sum(
                map(len, over_http)
            )
            assert value(found, "dicomhub_qido_duration_seconds_count", **_study_search()) == 1
            sent = value(found, "dicomhub_retrieve_bytes_total", route=INSTANCE)
            assert sent == len(retrieved.content)
            operations = "dicomhub_dimse_operations_total"
            assert value(found, operations, command="C-STORE", status="0x0000") == 2
            assert value(found, operations, command="C-ECHO", status="0x0000") == 1
            assert value(found, operations, command="C-FIND", status="0x0000") == 1
            assert value(found, "dicomhub_dimse_associations_total", outcome="accepted") == 1
            assert value(found, "dicomhub_processes", kind="http") == 2
            assert value(found, "dicomhub_processes", kind="dimse") == 1
            assert value(found, "dicomhub_processes", kind="worker") == 1  # the background
            assert value(found, "process_cpu_seconds_total") > 0
            assert value(found, "process_resident_memory_bytes") > 0
        assert any(folder.iterdir())
    assert not folder.exists()  # removed with the server


def _study_search() -> dict[str, str]:
    return {"level": "study", "kind": "search"}


def test_one_process_keeps_its_own_metrics(tmp_path, monkeypatch):
    """One server process: its own registry; a metrics folder named in the environment by
    someone else is not used (its files would be summed in)."""
    foreign = tmp_path / "someone-elses-metrics"
    foreign.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(foreign))
    with running_server(tmp_path, workers="1") as (url, _):
        assert httpx.get(url + "/v2/studies").status_code == 200
        found = samples(httpx.get(url + "/metrics").text)
        requests = dict(route="/v2/studies", method="GET", status="200")
        assert value(found, "dicomhub_http_requests_total", **requests) == 1
        assert value(found, "dicomhub_processes", kind="http") == 1
        assert value(found, "process_cpu_seconds_total") > 0
    assert list(foreign.iterdir()) == []


def test_the_seams_count_the_stores_failures_not_the_answers():
    """A store's own failure counts as an error; an answer (not found) does not."""
    import asyncio

    from dicomhub.errors import NotFound, Unavailable
    from dicomhub.telemetry.seams import measured

    class Store:
        shared = True

        async def missing(self):
            raise NotFound("no such thing")

        async def broken(self):
            raise OSError("disk gone")

        async def down(self):
            raise Unavailable("index", "unreachable")

    timed = measured(Store(), "index")
    before = samples(_exposition())

    async def run():
        for name in ("missing", "broken", "down"):
            with pytest.raises(Exception):  # noqa: B017 - each raises its own
                await getattr(timed, name)()

    asyncio.run(run())
    after = samples(_exposition())
    errors, calls = "dicomhub_index_operation_errors_total", INDEX_CALLS
    assert delta(before, after, errors, operation="missing") == 0
    assert delta(before, after, errors, operation="broken") == 1
    assert delta(before, after, errors, operation="down") == 1
    assert delta(before, after, calls, operation="missing") == 1
    assert timed.shared is True  # anything else is the store's own


INDEX_CALLS = "dicomhub_index_operation_duration_seconds_count"


def _exposition() -> str:
    from dicomhub.telemetry import exposition

    return exposition.render([], None).decode()


def test_a_killed_process_leaves_its_counts_not_its_life(tmp_path):
    """A server process killed outright: uvicorn starts another; the scrape counts the live
    processes only, and keeps what the dead one counted."""
    import signal

    from tests.test_e2e_workers import _workers

    with running_server(tmp_path, workers="2") as (url, proc):
        for n in range(4):
            body = instance(uid(72, 1), uid(72, 1, 1), uid(72, 1, 1, n))
            r = httpx.post(
                url + "/v2/studies", content=multipart(body), headers={"Content-Type": MULTIPART}
            )
            assert r.status_code == 200
        first = _workers(proc)
        os.kill(int(first[0]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # uvicorn replaces it
            now = _workers(proc)
            if len(now) == 2 and first[0] not in now:
                try:
                    if all(httpx.get(url + "/health/check").status_code == 200 for _ in range(4)):
                        break
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, "no new server process"
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while True:  # the new process counts itself once its app has started; never the dead
            found = samples(httpx.get(url + "/metrics").text)
            alive = value(found, "dicomhub_processes", kind="http")
            assert alive <= 2
            if alive == 2:
                break
            assert time.monotonic() < deadline, "the new process is not counted"
            time.sleep(0.2)
        for _ in range(6):
            found = samples(httpx.get(url + "/metrics").text)
            assert value(found, "dicomhub_processes", kind="http") == 2
            assert value(found, "dicomhub_stow_instances_total", outcome="stored") == 4
