"""Export (POST /v2/export): 3 studies (one whole, one as a series, one as an instance) and a
missing instance, to a folder, to SeaweedFS (S3) and to Azurite (Microsoft's azureblob type);
every file byte for byte what WADO-RS serves, errors.log, the operation's counts; the allow
list, bad bodies, de-identification, and a job killed mid-way that another runner finishes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub.archive import export as export_module
from dicomhub.archive import export_request
from dicomhub.cli import build_archive, parse_command_line
from dicomhub.dicom.deidentify import Context, Options
from dicomhub.settings import Settings
from dicomhub.storage.object_blobs import ObjectBlobStore
from dicomhub.web.app import create_app
from dicomhub.workers.background import handlers
from dicomhub.workers.jobs import JobRunner
from tests.components import AZURITE_ACCOUNT, AZURITE_KEY
from tests.conftest import running_server
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart, stow
from tests.synthetic import instance, uid
from tests.test_deidentify import check_profile
from tests.test_extended_tags import kill_runner_midway

A, B, C = uid(70, 1), uid(70, 2), uid(70, 3)
MISSING = f"{uid(70, 9)}/{uid(70, 9, 1)}/{uid(70, 9, 1, 1)}"


def _files() -> dict[tuple[str, str, str], bytes]:
    out: dict[tuple[str, str, str], bytes] = {}
    for study, series_count in ((A, 2), (B, 2), (C, 1)):
        for se in range(1, series_count + 1):
            for i in range(1, 3):
                ids = (study, f"{study}.{se}", f"{study}.{se}.{i}")
                out[ids] = instance(
                    *ids,
                    PatientName="Doe^Jane",
                    PatientID="PID-" + study[-1],
                    PatientBirthDate="19610203",
                    InstitutionName="St Elsewhere",
                    InstanceNumber=len(out) + 1,  # kept by the profile: finds the original
                )
    return out


FILES = _files()
REQUESTED = [A, f"{B}/{B}.1", f"{C}/{C}.1/{C}.1.2", MISSING, f"{A}/{A}.2"]  # the last: inside A
EXPORTED = {k for k in FILES if k[0] == A or k[1] == f"{B}.1" or k[2] == f"{C}.1.2"}


def body(destination: dict, values=None, **extra) -> dict:
    values = REQUESTED if values is None else values
    return {
        "source": {"type": "identifiers", "settings": {"values": values}},
        "destination": destination,
        **extra,
    }


def blob(url: str) -> dict:
    return {"type": "blob", "settings": {"url": url}}


@pytest.fixture
def make_client(tmp_path):
    made = []

    def make(**settings) -> TestClient:
        s = Settings(data_dir=str(tmp_path / f"data{len(made)}"), blob_url="memory://", **settings)
        c = TestClient(create_app(s, build_archive(s)))
        c.__enter__()
        made.append(c)
        assert stow(c, *FILES.values()).status_code == 200
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)


def run_jobs(client) -> None:
    archive = client.app.state.archive
    runner = JobRunner(archive.index, handlers(archive, Settings().dimse))
    while client.portal.call(runner.run_once):
        pass


def export(client, request: dict) -> dict:
    r = client.post("/v2/export", json=request)
    assert r.status_code == 202, r.text
    operation = r.json()["id"]
    assert r.json()["href"].endswith(f"/v2/operations/{operation}")
    assert client.get(f"/v2/operations/{operation}").json()["status"] == "notStarted"
    run_jobs(client)
    done = client.get(f"/v2/operations/{operation}")
    assert done.status_code == 200
    return done.json()


def wado(client, ids) -> bytes:
    study, series, sop = ids
    r = client.get(
        f"/v2/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert r.status_code == 200
    return r.content


def check_export(client, state: dict, read_file, where: str) -> None:
    """Counts, files (byte-identical to WADO-RS) and errors.log of a completed export."""
    operation = state["operationId"]
    assert state["type"] == "export" and state["status"] == "completed", state
    assert state["percentComplete"] == 100
    assert state["results"] == {
        "exported": len(EXPORTED),
        "skipped": 1,
        "errorHref": f"{where}/{operation}/errors.log",
    }
    for ids in FILES:
        got = read_file(f"{operation}/results/{'/'.join(ids)}.dcm")
        if ids in EXPORTED:
            assert got == wado(client, ids) == FILES[ids]
        else:
            assert got is None, ids
    lines = read_file(f"{operation}/errors.log").decode().splitlines()
    (error,) = [json.loads(line) for line in lines]
    assert error["Identifier"] == MISSING and error["Error"] == "not found"
    assert error["Timestamp"].endswith("Z")


def folder_reader(root: Path):
    def read_file(key: str) -> bytes | None:
        path = root / key
        return path.read_bytes() if path.exists() else None

    return read_file


def store_reader(url: str):
    store = ObjectBlobStore(url)

    def read_file(key: str) -> bytes | None:
        async def get() -> bytes | None:
            try:
                return await store.read(key)
            except Exception:  # noqa: BLE001 - missing
                return None

        return asyncio.run(get())

    return read_file


def test_export_to_a_folder(make_client, tmp_path):
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    state = export(client, body(blob(f"file://{root}/run")))
    check_export(client, state, folder_reader(root / "run"), f"file://{root}/run")
    written = [p for p in root.rglob("*") if p.is_file()]
    assert len(written) == len(EXPORTED) + 1  # the files and errors.log, nothing else


def test_export_to_s3(make_client, seaweedfs):
    allowed = seaweedfs.blob_url("exports")
    client = make_client(export_allow=allowed)
    target = f"{seaweedfs.base_url}/exports/run"
    state = export(client, body(blob(target)))
    check_export(client, state, store_reader(f"{target}?{seaweedfs.query}"), target)


def test_export_to_azurite_as_microsoft_azureblob(make_client, azurite):
    endpoint = urlparse(azurite.query.split("endpoint=")[1].split("&")[0])
    container = f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path}/{azurite.base_url[5:]}"
    client = make_client(export_allow=container)
    destination = {"type": "azureblob", "settings": {"blobContainerUri": container}}
    state = export(client, body(destination))  # credentials: the environment's
    check_export(client, state, store_reader(f"{azurite.base_url}?{azurite.query}"), container)

    # a connection string carries a key: only with export_request_credentials
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint.scheme}://{endpoint.netloc}{endpoint.path};"
    )
    destination = {
        "type": "azureblob",
        "settings": {"connectionString": connection, "blobContainerName": azurite.base_url[5:]},
    }
    r = client.post("/v2/export", json=body(destination))
    assert r.status_code == 403 and "export_request_credentials" in r.json()["detail"]
    trusting = make_client(export_allow=container, export_request_credentials=True)
    state = export(trusting, body(destination))
    check_export(trusting, state, store_reader(f"{azurite.base_url}?{azurite.query}"), container)


def test_destinations_outside_the_allow_list_are_refused(make_client, tmp_path):
    root = tmp_path / "exports"
    for client, url in (
        (make_client(), f"file://{root}"),  # nothing allowed by default
        (make_client(export_allow=f"file://{root}/a"), f"file://{root}/ab"),  # not a prefix
        (make_client(export_allow=f"file://{root}/a"), f"file://{tmp_path}"),
        (make_client(export_allow=f"file://{root}/a"), "s3://dicom/a"),
    ):
        r = client.post("/v2/export", json=body(blob(url)))
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "export_allow" in r.json()["detail"] and "--export-allow" in r.json()["detail"]
        run_jobs(client)
    assert not root.exists()  # nothing written


@pytest.mark.parametrize(
    "request_body",
    [
        b"not json",
        [],
        {},
        {"destination": blob("file:///x/a")},
        body(blob("file:///x/a"), values=[]),
        body(blob("file:///x/a"), values=["not-a-uid"]),
        body(blob("file:///x/a"), values=[f"{A}/{A}.1/{A}.1.1/1"]),
        body(blob("file:///x/a"), values=[12]),
        {**body(blob("file:///x/a")), "source": {"type": "query", "settings": {}}},
        body({"type": "ftp", "settings": {"url": "ftp://x"}}),
        body(blob("http://example.com/x")),
        body(blob("file:///x/a/../../etc")),
        body(blob("file:///x/a?mkdir=false")),
        body(blob("file://x/a")),
        body({"type": "blob", "settings": {}}),
        body({"type": "azureblob", "settings": {}}),
        body(blob("file:///x/a"), deidentify={"options": ["keepEverything"]}),
        body(blob("file:///x/a"), deidentify="yes"),
        body(blob("file:///x/a"), deidentify={"options": [[1]]}),
        body(blob("file:///x/%2e%2e/srv")),  # a '..' the store would decode
        body(blob("s3://[x/a")),
        body({"type": "azureblob", "settings": {"blobContainerUri": "https://[x/c"}}),
        body(blob("file:///x/a"), extra=1),
    ],
)
def test_bad_bodies_are_400_problems(make_client, request_body):
    client = make_client(export_allow="file:///x")
    if isinstance(request_body, bytes):
        r = client.post("/v2/export", content=request_body)
    else:
        r = client.post("/v2/export", json=request_body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 400 and r.json()["detail"]


def test_export_allow_flag_is_repeatable():
    _, s = parse_command_line(["serve", "--export-allow", "file:///a", "--export-allow", "s3://b"])
    assert s.export_allow == "file:///a,s3://b"
    assert Settings.load(environ={"DICOMHUB_EXPORT_ALLOW": "az://c"}).export_allow == "az://c"


def test_deidentified_export(make_client, tmp_path):
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    request = body(blob(f"file://{root}"), deidentify={"options": ["retainPatientCharacteristics"]})
    state = export(client, request)
    assert state["results"]["exported"] == len(EXPORTED) and state["results"]["skipped"] == 1
    written = sorted((root / state["operationId"] / "results").rglob("*.dcm"))
    assert len(written) == len(EXPORTED)
    options = Options(retain_patient_characteristics=True)
    originals = [read(FILES[k]) for k in EXPORTED]
    new_studies: dict[str, set[str]] = {}
    for path in written:
        out = read(path.read_bytes())
        study, series, sop = path.relative_to(root / state["operationId"] / "results").parts
        assert (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID + ".dcm") == (
            study,
            series,
            sop,
        )  # named by the new UIDs: the originals may carry PHI
        (original,) = [o for o in originals if o.InstanceNumber == out.InstanceNumber]
        assert check_profile(original, out, options, Context()) > 0
        assert out.PatientIdentityRemoved == "YES" and "Doe" not in str(out.PatientName)
        assert out.PixelData == original.PixelData
        new_studies.setdefault(original.StudyInstanceUID, set()).add(out.StudyInstanceUID)
    assert all(len(v) == 1 for v in new_studies.values())  # one new UID per study
    assert len(new_studies) == 3


def test_a_killed_export_finishes_on_another_runner_without_duplicates(
    make_client, tmp_path, monkeypatch, clock
):
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    archive = client.app.state.archive
    monkeypatch.setattr(export_module, "BATCH", 1)  # a checkpoint after every instance
    reads: list[str] = []
    original = archive.blobs.read

    async def slow_read(key, *args):
        reads.append(key)
        await asyncio.sleep(0.15)
        return await original(key, *args)

    monkeypatch.setattr(archive.blobs, "read", slow_read)
    operation = client.post("/v2/export", json=body(blob(f"file://{root}"))).json()["id"]
    # killed once its progress is saved, mid-export; its lease is left to run out
    kill_runner_midway(client, archive, operation, unfinished=lambda: len(reads) < len(EXPORTED))
    state = client.get(f"/v2/operations/{operation}").json()
    assert state["status"] == "running" and 0 < state["percentComplete"] < 100
    assert 0 < state["results"]["exported"] < len(EXPORTED)  # progress while it runs
    before = len(reads)
    clock.advance(1)
    second = JobRunner(archive.index, handlers(archive, Settings().dimse), lease=0.6)
    assert client.portal.call(second.run_once) is True
    resumed = len(reads) - before
    done = client.get(f"/v2/operations/{operation}").json()
    check_export(client, done, folder_reader(root), f"file://{root}")
    assert resumed < len(EXPORTED)  # went on from its checkpoint, not from the start
    files = list((root / operation / "results").rglob("*.dcm"))
    assert len(files) == len(EXPORTED)


def test_export_over_a_real_socket(tmp_path):
    """`dicomhub serve` runs the job itself; the operation is followed to its end."""
    root = tmp_path / "exports"
    data = tmp_path / "served"
    data.mkdir()
    with running_server(data, export_allow=f"file://{root}", job_poll_interval="0.1") as (
        url,
        _,
    ):
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post(
                "/v2/studies",
                content=multipart(*FILES.values()),
                headers={"Content-Type": MULTIPART},
            )
            assert r.status_code == 200
            r = http.post("/v2/export", json=body(blob(f"file://{root}/net")))
            assert r.status_code == 202
            href = r.json()["href"]
            deadline = time.monotonic() + 30
            while (state := http.get(href)).status_code == 202:
                assert time.monotonic() < deadline, state.text
                time.sleep(0.1)
            check_export(http, state.json(), folder_reader(root / "net"), f"file://{root}/net")


def test_export_requests_are_audited_without_their_body(make_client, tmp_path):
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    secret = "AccountKey=c2VjcmV0"
    azure = {"connectionString": f"BlobEndpoint=http://h/a;{secret}", "blobContainerName": "c"}
    refused = client.post("/v2/export", json=body({"type": "azureblob", "settings": azure}))
    assert refused.status_code == 403
    assert client.post("/v2/export", json=body(blob(f"file://{root}"))).status_code == 202
    entries = client.get("/v2/audit", params={"action": "export"}).json()
    assert sorted(e["status"] for e in entries) == [202, 403]
    assert all(e["route"] == "v2-export" and e["method"] == "POST" for e in entries)
    assert secret not in json.dumps(entries)


def test_with_a_project_key_two_exports_give_the_same_uids(make_client, tmp_path):
    """--deidentify-key-file: every export (and download) maps a UID to the same new one; the
    key itself is never written into the job. Without it, each export has a key of its own."""
    root = tmp_path / "exports"
    key_file = tmp_path / "project.key"
    key_file.write_bytes(b"k" * 32)

    def exported(client) -> tuple[set[str], dict]:
        state = export(client, body(blob(f"file://{root}"), deidentify=True))
        index = client.app.state.archive.index
        job = client.portal.call(index.operation, state["operationId"])
        folder = root / state["operationId"] / "results"
        return {p.parts[-3] for p in folder.rglob("*.dcm")}, job.payload

    keyed = make_client(export_allow=f"file://{root}", deidentify_key_file=str(key_file))
    (first, payload), (second, _) = exported(keyed), exported(keyed)
    assert first == second and len(first) == 3 and "key" not in payload
    other, payload = exported(make_client(export_allow=f"file://{root}"))
    assert other.isdisjoint(first) and len(payload["key"]) == 64


def test_a_de_identified_export_skips_instances_with_burned_in_annotation(make_client, tmp_path):
    """Text in pixel data is not removed: such an instance is skipped (an errors.log line), as
    de-identified downloads refuse it; exported as stored, it goes like any other."""
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    ids = (uid(71, 1), uid(71, 1, 1), uid(71, 1, 1, 1))
    assert stow(client, instance(*ids, BurnedInAnnotation="YES")).status_code == 200
    request = body(blob(f"file://{root}"), values=[ids[0]], deidentify=True)
    state = export(client, request)
    assert state["results"] == {**state["results"], "exported": 0, "skipped": 1}
    log = (root / state["operationId"] / "errors.log").read_text()
    [line] = log.splitlines()
    named = json.loads(line)["Identifier"].split("/")  # by new UIDs: the originals may be PHI
    assert len(named) == 3 and all(u.startswith("2.25.") for u in named)
    assert not any(u in log for u in ids) and "burned-in" in json.loads(line)["Error"]
    state = export(client, body(blob(f"file://{root}"), values=[ids[0]]))
    assert state["results"]["exported"] == 1


def query_source(text) -> dict:
    return {"type": "query", "settings": {"query": text}}


def test_export_by_query_exports_the_studies_it_matched_at_the_request(make_client, tmp_path):
    """A QIDO-RS study query, matched when the request arrives: a study stored afterwards
    that matches too is not exported by the job."""
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    request = {
        "source": query_source("PatientID=PID-1\\PID-3&ModalitiesInStudy=CT&StudyDate=*"),
        "destination": blob(f"file://{root}"),
    }
    r = client.post("/v2/export", json=request)
    assert r.status_code == 202, r.text
    operation = r.json()["id"]
    late = (uid(70, 4), uid(70, 4, 1), uid(70, 4, 1, 1))
    assert stow(client, instance(*late, PatientID="PID-1")).status_code == 200
    job = client.portal.call(client.app.state.archive.index.operation, operation)
    assert job.payload["sources"] == [[A], [C]] and job.payload["query"].startswith("PatientID")
    run_jobs(client)
    state = client.get(f"/v2/operations/{operation}").json()
    wanted = {k for k in FILES if k[0] in (A, C)}
    assert state["status"] == "completed" and state["percentComplete"] == 100
    assert state["results"]["exported"] == len(wanted) and state["results"]["skipped"] == 0
    read_file = folder_reader(root)
    for ids in [*FILES, late]:
        got = read_file(f"{operation}/results/{'/'.join(ids)}.dcm")
        assert got == (wado(client, ids) if ids in wanted else None), ids
    assert read_file(f"{operation}/errors.log") == b""


def test_export_by_a_query_matching_nothing(make_client, tmp_path):
    root = tmp_path / "exports"
    client = make_client(export_allow=f"file://{root}")
    request = {"source": query_source("PatientName=Nobody*"), "destination": blob(f"file://{root}")}
    state = export(client, request)
    assert state["status"] == "completed" and state["percentComplete"] == 100
    assert state["results"]["exported"] == 0 and state["results"]["skipped"] == 0
    assert not (root / state["operationId"] / "results").exists()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("StudyDate=2020-01-01x", "StudyDate"),  # as QIDO-RS answers it
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("PatientIDD=P1", "PatientIDD"),  # a search ignores it; an export would take too much
        ("SOPInstanceUID=1.2.3", "SOPInstanceUID"),  # not a key at the study level
        ("PatientID=P1&limit=5", "limit"),
        ("PatientID=P1&PatientID=P2", "PatientID"),
        ("", "settings.query"),
        (["PatientID=P1"], "settings.query"),
    ],
)
def test_a_bad_query_is_a_400_problem(make_client, tmp_path, query, named):
    client = make_client(export_allow=f"file://{tmp_path}")
    request = {"source": query_source(query), "destination": blob(f"file://{tmp_path}/x")}
    r = client.post("/v2/export", json=request)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert named in r.json()["detail"]


def test_a_query_matching_more_studies_than_an_export_takes_is_refused(
    make_client, tmp_path, monkeypatch
):
    monkeypatch.setattr(export_request, "MAX_VALUES", 2)
    client = make_client(export_allow=f"file://{tmp_path}")
    request = {
        "source": query_source("ModalitiesInStudy=CT"),
        "destination": blob(f"file://{tmp_path}"),
    }
    r = client.post("/v2/export", json=request)
    assert r.status_code == 400 and "more than 2 studies" in r.json()["detail"], r.text
    request["source"] = query_source("PatientID=PID-1\\PID-2")
    assert client.post("/v2/export", json=request).status_code == 202
