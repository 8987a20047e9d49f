"""Data partitions (``--data-partitions true``, reference section 10), on SQLite and
PostgreSQL: the same UIDs stored in two partitions and the default one stay apart in every
route a partition has (STOW, upsert, QIDO, WADO, rendered, delete), a store creates its
partition, ``GET /partitions`` lists them; bad names, unknown partitions and partitions while
the feature is off are 400 and change nothing; once a partition holds data the server refuses
to start with the feature off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import ROOT, free_port, running_server
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance, uid
from tests.test_dimse import _wait_for_port as wait_for_port
from tests.test_export import run_jobs
from tests.test_workitems import dataset, workitem

STUDY, SERIES, SOP = uid(90), uid(90, 1), uid(90, 1, 1)
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
NAMES = {"Microsoft.Default": "Default^Name", "clinic-a": "Alpha^Name", "clinic.b_2": "Beta^Name"}
ALL_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def prefix(partition: str, v: int = 2) -> str:
    return f"/v{v}" if partition == "Microsoft.Default" else f"/v{v}/partitions/{partition}"


def file(partition: str) -> bytes:
    return instance(STUDY, SERIES, SOP, PatientName=NAMES[partition], PatientID=partition)


def stow(client, partition: str, *parts: bytes, method: str = "POST"):
    return client.request(
        method,
        prefix(partition) + "/studies",
        content=multipart(*parts),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"},
    )


@pytest.fixture
def partitioned(tmp_path, index_url):
    s = Settings(
        data_dir=str(tmp_path / "data"),
        index_url=index_url,
        blob_url="memory://",
        delete_delay=0,
        data_partitions=True,
    )
    with TestClient(create_app(s, build_archive(s))) as c:
        yield c


def test_the_same_uids_in_three_partitions_stay_apart(partitioned):
    client = partitioned
    for partition in NAMES:
        r = stow(client, partition, file(partition))
        assert r.status_code == 200, r.text
        # the answer's URLs are the partition's
        url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        assert url.endswith(f"{prefix(partition)}{INSTANCE}"), url
    listed = client.get("/v2/partitions").json()
    assert [p["partitionName"] for p in listed] == list(NAMES)
    assert [p["partitionKey"] for p in listed] == sorted(p["partitionKey"] for p in listed)
    assert all(p["createdDate"].endswith("Z") for p in listed)
    for partition, name in NAMES.items():
        base = prefix(partition)
        found = client.get(f"{base}/studies", params={"includefield": "00100010"}).json()
        assert [s["00100010"]["Value"][0]["Alphabetic"] for s in found] == [name]
        assert found[0]["00081190"]["Value"][0].endswith(f"{base}/studies/{STUDY}")
        found = client.get(f"{base}/instances", params={"PatientID": partition}).json()
        assert len(found) == 1
        meta = client.get(f"{base}{INSTANCE}/metadata").json()
        assert meta[0]["00100010"]["Value"][0]["Alphabetic"] == name
        whole = client.get(f"{base}{INSTANCE}", headers={"Accept": ALL_INSTANCES})
        assert whole.status_code == 200 and name.encode() in whole.content
        frame = client.get(f"{base}{INSTANCE}/frames/1", headers={"Accept": OCTETS})
        assert frame.status_code == 200
        rendered = client.get(f"{base}{INSTANCE}/rendered", headers={"Accept": "image/png"})
        assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
        assert client.get(f"{base}/studies/{STUDY}/series").status_code == 200
    # the change feed names each entry's partition
    feed = client.get("/v2/changefeed").json()
    assert [(e["partitionName"], e["sopInstanceUid"]) for e in feed] == [(p, SOP) for p in NAMES]


def test_upsert_and_delete_touch_one_partition(partitioned):
    client = partitioned
    for partition in NAMES:
        assert stow(client, partition, file(partition)).status_code == 200
    again = instance(STUDY, SERIES, SOP, PatientName="Alpha^Again", PatientID="clinic-a")
    assert stow(client, "clinic-a", again, method="PUT").status_code == 200
    # the same UIDs in the default partition: refused as stored already, not replaced elsewhere
    assert stow(client, "Microsoft.Default", again).status_code == 409
    names = {
        p: client.get(f"{prefix(p)}{INSTANCE}/metadata").json()[0]["00100010"]["Value"][0]
        for p in NAMES
    }
    assert {p: n["Alphabetic"] for p, n in names.items()} == {
        **NAMES,
        "clinic-a": "Alpha^Again",
    }
    assert client.delete(f"{prefix('clinic.b_2')}/studies/{STUDY}").status_code == 204
    assert client.get(f"{prefix('clinic.b_2')}{INSTANCE}/metadata").status_code == 404
    for partition in ("Microsoft.Default", "clinic-a"):
        assert client.get(f"{prefix(partition)}{INSTANCE}/metadata").status_code == 200
    # the partition stays, empty
    assert client.get(f"{prefix('clinic.b_2')}/studies").json() == []
    assert "clinic.b_2" in [p["partitionName"] for p in client.get("/v1/partitions").json()]


@pytest.mark.parametrize(
    "method, path, says",
    [
        ("GET", "/v2/partitions/nope/studies", "does not exist"),
        ("GET", f"/v2/partitions/nope{INSTANCE}/metadata", "does not exist"),
        ("DELETE", f"/v2/partitions/nope/studies/{STUDY}", "does not exist"),
        ("GET", "/v2/partitions/bad%20name/studies", "not valid"),
        ("POST", "/v2/partitions/bad%20name/studies", "not valid"),
        ("POST", f"/v2/partitions/{'x' * 65}/studies", "not valid"),
        ("GET", "/v2/partitions/a*b/studies", "not valid"),
    ],
)
def test_bad_partitions_are_400_and_change_nothing(partitioned, method, path, says):
    client = partitioned
    body = {"content": multipart(file("clinic-a")), "headers": {"Content-Type": MULTIPART}}
    r = client.request(method, path, **(body if method == "POST" else {}))
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"]
    assert [p["partitionName"] for p in client.get("/v2/partitions").json()] == [
        "Microsoft.Default"
    ]
    assert client.get("/v2/studies").json() == []


def test_bulk_update_and_export_work_in_their_partition(tmp_path, index_url):
    """A bulk update of the partition's copy of a study changes it alone; an export of it
    writes the partition's copy; their operations are followed at the server's route."""
    root = tmp_path / "exports"
    s = Settings(
        data_dir=str(tmp_path / "data"),
        index_url=index_url,
        blob_url="memory://",
        data_partitions=True,
        export_allow=f"file://{root}",
    )
    with TestClient(create_app(s, build_archive(s))) as client:
        for partition in NAMES:
            assert stow(client, partition, file(partition)).status_code == 200
        change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Changed^Name"}]}}
        r = client.post(
            f"{prefix('clinic-a')}/studies/$bulkUpdate",
            json={"studyInstanceUids": [STUDY], "changeDataset": change},
        )
        assert r.status_code == 202, r.text
        updated = r.json()["href"]
        assert "/partitions/" not in updated
        r = client.post(
            f"{prefix('clinic.b_2')}/export",
            json={
                "source": {"type": "identifiers", "settings": {"values": [STUDY]}},
                "destination": {"type": "blob", "settings": {"url": f"file://{root}/run"}},
            },
        )
        assert r.status_code == 202, r.text
        exported = r.json()["href"]
        run_jobs(client)
        for href in (updated, exported):
            assert client.get(href).json()["status"] == "completed"
        assert client.get(updated).json()["results"]["instanceUpdated"] == 1
        got = {
            p: client.get(f"{prefix(p)}{INSTANCE}/metadata").json()[0]["00100010"]["Value"][0]
            for p in NAMES
        }
        assert {p: n["Alphabetic"] for p, n in got.items()} == {
            **NAMES,
            "clinic-a": "Changed^Name",
        }
        files = [p for p in (root / "run").rglob("*.dcm")]
        assert [str(read(p.read_bytes()).PatientName) for p in files] == ["Beta^Name"]


def test_routes_a_partition_has_not_are_404(partitioned):
    assert stow(partitioned, "clinic-a", file("clinic-a")).status_code == 200
    for path in ("/changefeed", "/extendedquerytags", "/operations/x", "/partitions"):
        assert partitioned.get(f"/v2/partitions/clinic-a{path}").status_code == 404, path


def test_workitems_of_each_partition(partitioned):
    """The same workitem UID in the default partition and in clinic-a: created, searched,
    retrieved and claimed apart; a partition that no store created has none."""
    client = partitioned
    assert stow(client, "clinic-a", file("clinic-a")).status_code == 200
    item = uid(91, 1)
    for partition, patient in (("Microsoft.Default", "P-DEF"), ("clinic-a", "P-A")):
        r = client.post(
            f"{prefix(partition)}/workitems?{item}",
            content=json.dumps([workitem(PatientID=patient)]),
            headers={"Content-Type": "application/dicom+json"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"].endswith(f"{prefix(partition)}/workitems/{item}")
    for partition, patient in (("Microsoft.Default", "P-DEF"), ("clinic-a", "P-A")):
        found = client.get(f"{prefix(partition)}/workitems").json()
        assert [w["00100020"]["Value"][0] for w in found] == [patient]
        got = client.get(f"{prefix(partition)}/workitems/{item}").json()
        assert got[0]["00100020"]["Value"][0] == patient
    claim = [dataset(ProcedureStepState="IN PROGRESS", TransactionUID=uid(91, 2))]
    r = client.put(
        f"{prefix('clinic-a')}/workitems/{item}/state",
        content=json.dumps(claim),
        headers={"Content-Type": "application/dicom+json"},
    )
    assert r.status_code == 200, r.text
    states = {
        p: client.get(f"{prefix(p)}/workitems/{item}").json()[0]["00741000"]["Value"][0]
        for p in ("Microsoft.Default", "clinic-a")
    }
    assert states == {"Microsoft.Default": "SCHEDULED", "clinic-a": "IN PROGRESS"}
    r = client.post(
        "/v2/partitions/clinic-z/workitems",
        content=json.dumps([workitem()]),
        headers={"Content-Type": "application/dicom+json"},
    )
    assert r.status_code == 400 and "does not exist" in r.json()["detail"]


def test_off_by_default_every_partition_route_is_400(client):
    for method, path in (
        ("GET", "/v2/partitions"),
        ("GET", "/v1/partitions/clinic-a/studies"),
        ("POST", "/v2/partitions/clinic-a/studies"),
    ):
        r = client.request(method, path)
        assert r.status_code == 400, (path, r.text)
        assert "Data partitions feature is disabled" in r.json()["detail"]
    with pytest.raises(WebSocketDenialResponse) as refused:  # the UPS event channel
        with client.websocket_connect("/v2/partitions/clinic-a/subscribers/AE1"):
            pass
    assert refused.value.status_code == 400
    assert "Data partitions feature is disabled" in refused.value.json()["detail"]
    assert client.get("/v2/studies").json() == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_they_cannot_be_switched_off_once_a_partition_holds_data(tmp_path, workers):
    """Started again without --data-partitions on a folder whose index has a partition: the
    server refuses to start and says why."""
    data = tmp_path / "data"
    s = Settings(data_dir=str(data), data_partitions=True)
    with TestClient(create_app(s, build_archive(s))) as c:
        assert stow(c, "clinic-a", file("clinic-a")).status_code == 200
    env = {"DICOMHUB_WORKERS": workers, "DICOMHUB_DATA_PARTITIONS": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "dicomhub", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, "DICOMHUB_DATA_DIR": str(data), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "once created they cannot be switched off" in out and "clinic-a" in out, out
    assert read(file("clinic-a")).PatientID == "clinic-a"


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


def test_roles_limited_to_a_partition(tmp_path, issuer):
    """A role scoped to /partitions/clinic-a (roles.json "scopes") grants its actions there
    only: 403 in another partition, in the default one and on the server's own routes."""
    roles = tmp_path / "roles.json"
    clinic = {
        "name": "clinicA",
        "dataActions": ["read", "write"],
        "scopes": ["/partitions/clinic-a"],
    }
    admin = {"name": "globalAdmin", "dataActions": ["*"], "scopes": ["/"]}
    roles.write_text(json.dumps({"roles": [clinic, admin]}))
    s = Settings(
        data_dir=str(tmp_path / "data"),
        blob_url="memory://",
        data_partitions=True,
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_file=str(roles),
    )
    with TestClient(create_app(s, build_archive(s))) as client:
        as_admin = {"Authorization": "Bearer " + issuer.token(roles=["globalAdmin"])}
        as_clinic = {"Authorization": "Bearer " + issuer.token(roles=["clinicA"])}
        client.headers.update(as_admin)
        for partition in NAMES:
            assert stow(client, partition, file(partition)).status_code == 200
        client.headers.update(as_clinic)
        assert client.get(f"{prefix('clinic-a')}{INSTANCE}/metadata").status_code == 200
        again = instance(STUDY, SERIES, SOP, PatientName="Alpha^Again")
        assert stow(client, "clinic-a", again, method="PUT").status_code == 200
        for path in (f"{prefix('clinic.b_2')}/studies", "/v2/studies", "/v2/changefeed"):
            r = client.get(path)
            assert r.status_code == 403, path
        assert "in partition clinic.b_2" in client.get(f"{prefix('clinic.b_2')}/studies").text
        assert stow(client, "clinic-c", file("clinic-a")).status_code == 403
        assert client.delete(f"{prefix('clinic-a')}/studies/{STUDY}").status_code == 403
        # the UPS event channel: the partition's opens, another's handshake is refused (403)
        with client.websocket_connect(f"{prefix('clinic-a')}/subscribers/AE1") as ws:
            ws.close()
        for other in ("Microsoft.Default", "clinic.b_2"):
            with pytest.raises(WebSocketDenialResponse) as refused:
                with client.websocket_connect(f"{prefix(other)}/subscribers/AE1"):
                    pass
            assert refused.value.status_code == 403, other
        client.headers.update(as_admin)
        assert [p["partitionName"] for p in client.get("/v2/partitions").json()] == list(NAMES)


@pytest.mark.parametrize("scope", ["/x", "/partitions/", "/partitions/a b", 3])
def test_a_role_scope_names_everywhere_or_one_partition(tmp_path, issuer, scope):
    roles = tmp_path / "roles.json"
    roles.write_text(
        json.dumps({"roles": [{"name": "r", "dataActions": ["read"], "scopes": [scope]}]})
    )
    s = Settings(
        data_dir=str(tmp_path),
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_file=str(roles),
    )
    with pytest.raises(ValueError, match="a scope is"):
        create_app(s, build_archive(s))


def test_dimse_callers_address_their_partition(tmp_path):
    """--dimse-partitions: what CLINICA stores over DIMSE goes to clinic-a (created by it),
    what another caller stores to the default partition, the same UIDs in both; each one's
    C-FIND sees its own partition only, and so does DICOMweb."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    port = free_port()
    settings = {
        "data_partitions": "true",
        "dimse_port": str(port),
        "dimse_partitions": "CLINICA=clinic-a",
    }
    with running_server(tmp_path, **settings) as (url, _):
        wait_for_port(port)

        def associate(calling: str, context):
            ae = AE(ae_title=calling)
            ae.add_requested_context(context)
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
            assert assoc.is_established
            return assoc

        for calling, partition in (("CLINICA", "clinic-a"), ("OTHER", "Microsoft.Default")):
            assoc = associate(calling, CTImageStorage)
            try:
                assert assoc.send_c_store(read(file(partition))).Status == 0
            finally:
                assoc.release()
        for calling, name in (("CLINICA", "Alpha^Name"), ("OTHER", "Default^Name")):
            assoc = associate(calling, Find)
            identifier = Dataset()
            identifier.QueryRetrieveLevel, identifier.PatientName = "STUDY", ""
            try:
                found = [str(ds.PatientName) for _, ds in assoc.send_c_find(identifier, Find) if ds]
            finally:
                assoc.release()
            assert found == [name], calling
        for partition, name in (("clinic-a", "Alpha^Name"), ("Microsoft.Default", "Default^Name")):
            r = httpx.get(f"{url}{prefix(partition)}/studies", params={"includefield": "00100010"})
            assert [s["00100010"]["Value"][0]["Alphabetic"] for s in r.json()] == [name]


def test_dimse_partitions_need_data_partitions(tmp_path):
    env = {"DICOMHUB_DIMSE_PORT": str(free_port()), "DICOMHUB_DIMSE_PARTITIONS": "CT1=clinic-a"}
    done = subprocess.run(
        [sys.executable, "-m", "dicomhub", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "--dimse-partitions needs --data-partitions true" in done.stderr


def test_the_log_line_of_a_request_names_its_partition(tmp_path):
    log = tmp_path / "server.log"
    settings = {"data_partitions": "true", "log_format": "json", "access_log": "true"}
    with running_server(tmp_path / "data", log=log, **settings) as (url, _):
        body = multipart(file("clinic-a"))
        r = httpx.post(
            f"{url}/v2/partitions/clinic-a/studies",
            content=body,
            headers={"Content-Type": MULTIPART, "X-Request-Id": "stow-in-a"},
        )
        assert r.status_code == 200, r.text
        r = httpx.get(f"{url}/v2/studies", headers={"X-Request-Id": "search-default"})
        assert r.status_code == 200
        deadline = time.monotonic() + 20  # the line is written just after the answer
        while True:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            mine = {
                x["request_id"]: x
                for x in lines
                if x.get("request_id") in ("stow-in-a", "search-default")
            }
            if len(mine) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert mine["stow-in-a"]["partition"] == "clinic-a"
    assert mine["stow-in-a"]["route"] == "/v2/partitions/{partition}/studies"
    assert mine["search-default"]["partition"] is None


def test_extended_query_tags_search_within_a_partition(partitioned):
    """An extended query tag indexes every partition's instances (tags are the server's); a
    search by it finds only the partition's own."""
    client = partitioned
    r = client.post("/v2/extendedquerytags", json=[{"path": "PatientWeight", "level": "Study"}])
    assert r.status_code == 202, r.text
    run_jobs(client)
    assert client.get("/v2/extendedquerytags/PatientWeight").json()["status"] == "Ready"
    for partition, weight in (("Microsoft.Default", "70"), ("clinic-a", "80")):
        body = instance(STUDY, SERIES, SOP, PatientWeight=weight, PatientName=NAMES[partition])
        assert stow(client, partition, body).status_code == 200
    for partition, weight in (("Microsoft.Default", "70"), ("clinic-a", "80")):
        for asked, found in ((weight, 1), ("75", 0)):
            r = client.get(f"{prefix(partition)}/studies", params={"PatientWeight": asked})
            assert r.status_code in (200, 204), r.text
            got = r.json() if r.status_code == 200 else []
            assert len(got) == found, (partition, asked)
            if found:
                assert got[0]["00100010"]["Value"][0]["Alphabetic"] == NAMES[partition]
    other = client.get(f"{prefix('clinic-a')}/studies", params={"PatientWeight": "70"})
    assert other.status_code == 204 or other.json() == []
