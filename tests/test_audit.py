"""The audit log: an entry for every kind of request (denied ones too) with who, from where,
which action, which UIDs, the outcome and the bytes; never the token; caller audit headers
within limits; the admin-only read API and its filters; the index (SQLite and PostgreSQL) and
the append-only file; retention; and a real server flushing its entries when stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from datetime import timedelta

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub.archive.audit import AuditLog
from dicomhub.cli import build_archive
from dicomhub.clock import utcnow
from dicomhub.model import AuditEntry, AuditQuery, JobType
from dicomhub.settings import Settings
from dicomhub.storage.audit_file import FileAuditLog
from dicomhub.web.app import create_app
from dicomhub.workers.background import handlers
from tests.conftest import running_server
from tests.helpers import MULTIPART, multipart, stow
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance, uid

STUDY, SERIES = uid(70, 1), uid(70, 2)
SOPS = [uid(70, 3, n) for n in range(3)]
TAG = b'[{"path": "PatientWeight", "level": "Study"}]'


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


def bearer(issuer: Issuer, *roles: str, **claims) -> dict[str, str]:
    return {"Authorization": "Bearer " + issuer.token(roles=list(roles), **claims)}


@pytest.fixture
def client(issuer, tmp_path, index_url):
    settings = Settings(
        data_dir=str(tmp_path),
        index_url=index_url,
        blob_url="memory://",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        delete_delay=0,
    )
    with TestClient(create_app(settings, build_archive(settings))) as c:
        yield c


def audit(client, issuer, **params) -> list[dict]:
    r = client.get("/v2/audit", params=params, headers=bearer(issuer, "globalAdmin", sub="root"))
    assert r.status_code == 200, r.text
    return r.json()


def test_every_kind_of_request_is_audited(client, issuer):
    writer = bearer(issuer, "globalWriter", sub="modality", azp="ct-scanner")
    reader = bearer(issuer, "globalReader", sub="viewer")
    admin = bearer(issuer, "globalAdmin", sub="admin")
    body = multipart(*(instance(STUDY, SERIES, s) for s in SOPS))
    instance_path = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{SOPS[0]}"
    calls = [  # (method, path, headers, expected status, action, principal)
        ("POST", "/v2/studies", writer, 200, "write", "modality"),
        ("GET", f"/v2/studies?StudyInstanceUID={STUDY}", reader, 200, "read", "viewer"),
        ("GET", f"/v2/studies/{STUDY}/series", reader, 200, "read", "viewer"),
        ("GET", instance_path, reader, 200, "read", "viewer"),
        ("GET", instance_path + "/metadata", reader, 200, "read", "viewer"),
        ("GET", instance_path + "/frames/1", reader, 200, "read", "viewer"),
        ("GET", instance_path + "/rendered", reader, 200, "read", "viewer"),
        ("GET", instance_path + "/thumbnail", reader, 200, "read", "viewer"),
        ("GET", "/v2/changefeed", reader, 200, "read", "viewer"),
        ("GET", "/v2/extendedquerytags", reader, 200, "read", "viewer"),
        ("DELETE", instance_path, reader, 403, "delete", "viewer"),
        ("DELETE", instance_path, None, 401, "delete", None),
        (
            "GET",
            f"/v2/studies/{STUDY}/metadata",
            {"Authorization": "Bearer x.y.z"},
            401,
            "read",
            None,
        ),
        ("DELETE", instance_path, admin, 204, "delete", "admin"),
        ("GET", instance_path + "/bulkdata/7FE00010", reader, 404, "read", "viewer"),
        ("POST", "/v2/extendedquerytags", admin, 202, "manageExtendedQueryTags", "admin"),
        (
            "DELETE",
            "/v2/extendedquerytags/PatientWeight",
            reader,
            403,
            "manageExtendedQueryTags",
            "viewer",
        ),
        ("GET", "/v2/operations/" + "0" * 32, reader, 404, "read", "viewer"),
        ("GET", "/v2/fhir/status", reader, 403, "admin", "viewer"),
        ("GET", "/metrics", admin, 200, "admin", "admin"),
    ]
    sizes = []  # (sent, received) of each call
    for method, path, headers, status, _, _ in calls:
        headers = dict(headers or {})
        content = b""
        if method == "POST" and path == "/v2/studies":
            content, headers["Content-Type"] = body, MULTIPART
        elif method == "POST":
            content, headers["Content-Type"] = TAG, "application/json"
        r = client.request(method, path, headers=headers, content=content)
        assert r.status_code == status, (method, path, r.text)
        sizes.append((len(content), len(r.content)))
    long_url = "/v2/studies?PatientName=" + "A" * 9000
    assert client.get(long_url, headers=reader).status_code == 414
    entries = audit(client, issuer, limit=1000)
    assert len(entries) == len(calls) + 1
    for entry, (method, path, _, status, action, principal), (sent, received) in zip(
        entries, calls, sizes, strict=False
    ):
        assert (entry["method"], entry["path"], entry["status"]) == (
            method,
            path.split("?")[0],
            status,
        )
        assert entry["action"] == action, entry
        assert entry["principal"] == principal, entry
        assert entry["protocol"] == "http" and entry["address"] == "testclient"
        assert entry["bytesIn"] == sent and entry["bytesOut"] == received, entry
        assert entry["durationMs"] >= 0 and entry["time"].endswith("Z")
        in_study = path == "/v2/studies" or f"/studies/{STUDY}" in path
        assert entry["studyInstanceUid"] == (STUDY if in_study else None), entry
        assert entry["detail"].get("query") == (path.split("?")[1] if "?" in path else None)
        if "/instances/" in path:
            assert (entry["seriesInstanceUid"], entry["sopInstanceUid"]) == (SERIES, SOPS[0])
    store = entries[0]
    assert store["client"] == "ct-scanner" and store["route"] == "v2-stow"
    assert store["detail"]["stored"] == [[STUDY, SERIES, s] for s in SOPS]
    assert store["detail"]["failed"] == 0
    too_long = entries[len(calls)]
    assert (too_long["status"], too_long["action"], too_long["principal"]) == (414, "read", None)
    assert len(too_long["detail"]["query"]) == 2048  # kept, cut short


def test_no_token_ever_reaches_the_log(client, issuer):
    token = issuer.token(roles=["globalReader"])
    forged = issuer.token(roles=["globalAdmin"], aud="someone-else")
    for value in (token, forged):
        client.get("/v2/studies", headers={"Authorization": f"Bearer {value}"})
    client.get("/v2/studies", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    text = json.dumps(audit(client, issuer))
    for secret in (token, forged, token.split(".")[2], "YWxpY2U6c2VjcmV0"):
        assert secret not in text
    assert "authorization" not in text.lower()


def test_caller_audit_headers_are_kept_within_limits(client, issuer):
    reader = bearer(issuer, "globalReader")
    headers = {
        **reader,
        "X-Dicomhub-Audit-Purpose": "second opinion",
        "X-MS-AZUREDICOM-AUDIT-Ticket": "INC-1234",
    }
    assert client.get("/v2/studies", headers=headers).status_code == 200
    many = {**reader, **{f"X-Dicomhub-Audit-H{i}": "x" for i in range(11)}}
    r = client.get("/v2/studies", headers=many)
    assert r.status_code == 400 and "audit headers" in r.json()["detail"]
    long = {**reader, "X-Dicomhub-Audit-Note": "x" * 2049}
    r = client.get("/v2/studies", headers=long)
    assert r.status_code == 400 and "2048" in r.json()["detail"]
    first, too_many, too_long = audit(client, issuer)[:3]
    assert first["detail"]["caller"] == {"purpose": "second opinion", "ticket": "INC-1234"}
    assert too_many["status"] == too_long["status"] == 400
    assert "caller" not in too_many["detail"] and "caller" not in too_long["detail"]


def test_the_audit_api_is_admin_only_and_filters(client, issuer):
    assert client.get("/v2/audit", headers=bearer(issuer, "globalReader")).status_code == 403
    assert client.get("/v2/audit").status_code == 401
    assert (
        stow(
            client,
            instance(STUDY, SERIES, SOPS[0]),
            headers=bearer(issuer, "globalWriter", sub="w"),
        ).status_code
        == 200
    )
    other = uid(71, 1)
    for sub in ("r1", "r2"):
        client.get(f"/v2/studies/{other}/metadata", headers=bearer(issuer, "globalReader", sub=sub))
    everything = audit(client, issuer)
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert [e["principal"] for e in audit(client, issuer, study=other)] == ["r1", "r2"]
    assert [e["status"] for e in audit(client, issuer, principal="r2")] == [404]
    assert [e["principal"] for e in audit(client, issuer, action="write")] == ["w"]
    denied = audit(client, issuer, status=403)
    assert [(e["principal"], e["path"]) for e in denied] == [("alice", "/v2/audit")]
    assert [e["principal"] for e in audit(client, issuer, status=404)] == ["r1", "r2"]
    page = audit(client, issuer, offset=1, limit=2)
    assert [e["id"] for e in page] == [e["id"] for e in everything[1:3]]
    later = utcnow() + timedelta(hours=1)
    assert audit(client, issuer, since=later.isoformat()) == []
    assert len(audit(client, issuer, until=later.isoformat())) > len(everything)
    admin = bearer(issuer, "globalAdmin")
    for bad in (
        {"limit": "0"},
        {"limit": "1001"},
        {"since": "yesterday"},
        {"until": "2024-01-01T00:00:00"},
        {"action": "fly"},
        {"status": "4041"},
        {"study": "not-a-uid"},
        {"offset": "-1"},
    ):
        r = client.get("/v2/audit", params=bad, headers=admin)
        assert r.status_code == 400, (bad, r.text)


def test_retention_purges_old_index_entries(issuer, tmp_path):
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://", audit_retention_days=30)
    archive = build_archive(settings)
    with TestClient(create_app(settings, archive)) as c:
        for _ in range(3):
            assert c.get("/v2/changefeed").status_code == 200
        entries = c.portal.call(archive.audit.entries, _query())
        old = dataclasses.replace(entries[0], time=utcnow() - timedelta(days=31), id=None)
        c.portal.call(archive.index.add_audit_entries, [old])
        assert len(c.portal.call(archive.audit.entries, _query())) == 4
        c.portal.call(handlers(archive, Settings().dimse)[JobType.BLOB_CLEANUP], None)
        kept = c.portal.call(archive.audit.entries, _query())
        assert [e.id for e in kept] == [e.id for e in entries]  # the old one gone


def _query(**fields):
    return AuditQuery(limit=1000, **fields)


def test_the_file_log_appends_json_lines_and_survives_rotation(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://", audit_log=str(path))
    with TestClient(create_app(settings, build_archive(settings))) as c:
        assert c.get("/v2/extendedquerytags").status_code == 200
        assert c.get(f"/v2/studies/{STUDY}/metadata").status_code == 404
        assert [e["status"] for e in c.get("/v2/audit").json()] == [200, 404]
        path.rename(tmp_path / "logs" / "audit.1.jsonl")  # rotated by the host
        assert c.get("/v2/changefeed").status_code == 200
        after = ["/v2/audit", "/v2/changefeed"]  # the first read is recorded after it
        assert [e["path"] for e in c.get("/v2/audit").json()] == after
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["path"] for e in lines] == [*after, "/v2/audit"]
    rotated = (tmp_path / "logs" / "audit.1.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in rotated] == [200, 404]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_reading_the_log_waits_for_the_batch_being_written(tmp_path):
    """A read flushes; a batch the writer task is still writing must be in it too."""

    class SlowFile(FileAuditLog):  # the real file sink, slow to write a batch
        async def add_audit_entries(self, entries):
            await asyncio.sleep(0.3)
            await super().add_audit_entries(entries)

    async def scenario():
        log = AuditLog(SlowFile(str(tmp_path / "audit.jsonl")), interval=0.01)
        log.record(AuditEntry(time=utcnow(), protocol="http", method="GET", path="/", status=200))
        await asyncio.sleep(0.1)  # the writer has taken the batch and is writing it
        read = await log.entries(_query())
        await log.close()
        return read

    assert [e.path for e in asyncio.run(scenario())] == ["/"]


def test_closing_while_a_batch_is_written_writes_it_once(tmp_path):
    """A server stopping while the writer task is in the middle of a batch: the batch is
    written once (it was written twice when the close cancelled the writer after the file
    write and before the batch was done)."""
    path = tmp_path / "audit.jsonl"

    class WrittenThenSlow(FileAuditLog):  # the real file sink, slow after writing its batch
        async def add_audit_entries(self, entries):
            await super().add_audit_entries(entries)
            await asyncio.sleep(0.3)

    async def scenario():
        log = AuditLog(WrittenThenSlow(str(path)), interval=0.01)
        log.record(AuditEntry(time=utcnow(), protocol="http", method="GET", path="/", status=200))
        await asyncio.sleep(0.1)  # the writer has written the batch and is still in it
        await log.close()

    asyncio.run(scenario())
    assert [json.loads(line)["path"] for line in path.read_text().splitlines()] == ["/"]


def test_off_means_no_log(tmp_path):
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://", audit_log="off")
    with TestClient(create_app(settings, build_archive(settings))) as c:
        assert c.get("/v2/changefeed").status_code == 200
        r = c.get("/v2/audit")
        assert r.status_code == 400 and "off" in r.json()["detail"]


def test_a_stopped_server_has_written_every_entry(tmp_path):
    """Over a real socket: the caller's address is recorded, and entries still buffered when
    the server is told to stop are written before it exits."""
    path = tmp_path / "audit.jsonl"
    with running_server(tmp_path, audit_log=str(path)) as (base, proc):
        with httpx.Client(base_url=base) as http:
            for n in range(20):
                http.get(f"/v2/studies/{uid(72, n)}/metadata")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["studyInstanceUid"] for e in entries] == [uid(72, n) for n in range(20)]
    assert {e["address"] for e in entries} == {"127.0.0.1"}
