"""Health, OpenAPI, settings and the documentation that must list them."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.storage import file_blobs
from dicomhub.storage import statements as st
from dicomhub.web.app import create_app
from tests.conftest import ROOT
from tests.test_delete_changefeed import CT, ids


def test_health_names_the_failing_dependency(file_client, tmp_path):
    with file_client() as client:
        r = client.get("/health/check")
        assert r.status_code == 200 and r.json()["overallStatus"] == "Healthy"
        shutil.rmtree(tmp_path / "data" / "blobs")
        r = client.get("/health/check")
        assert r.status_code == 503
        assert r.headers["retry-after"]
        failing = [d["name"] for d in r.json()["details"] if d["status"] == "Unhealthy"]
        assert failing == ["blob store"]


def test_openapi_documents_every_route(client):
    doc = client.get("/v2/api.json").json()
    assert doc["openapi"].startswith("3.")
    # paths are relative to /v2, but those with a server of their own (/metrics: unversioned)
    paths = {p for p, item in doc["paths"].items() if "servers" not in item}
    app_paths = {r.path[len("/v2") :] for r in client.app.routes if r.path.startswith("/v2/")}
    normalise = lambda p: re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", p)  # noqa: E731
    assert {normalise(p) for p in app_paths} == paths
    unversioned = {p for p, item in doc["paths"].items() if "servers" in item}
    assert unversioned == {"/metrics"}
    assert all([s["url"] for s in doc["paths"][p]["servers"]] == ["/"] for p in unversioned)
    assert unversioned <= {r.path for r in client.app.routes}
    v1 = yaml.safe_load(client.get("/v1/api.yaml").text)
    names = [
        p.get("$ref", "").rsplit("/", 1)[-1]
        for p in v1["paths"]["/changefeed"]["get"]["parameters"]
    ]
    assert "startTime" not in names and "offset" in names
    for item in doc["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                assert "$ref" not in operation["responses"]


def settings_table() -> list[str]:
    """The README's configuration table, row by row, as the settings object describes it."""
    rows = []
    for f in Settings.fields():
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        flag, env = f"--{f.name.replace('_', '-')}", f"DICOMHUB_{f.name.upper()}"
        flag = f"(none: `{flag}-file`)" if f.metadata.get("secret") else f"`{flag}`"
        rows.append(f"| {flag} | `{env}` | {default} | {f.metadata['help']} |")
    return rows


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    for row in settings_table():
        assert row in readme, f"README.md lacks (or has another text for) the row\n{row}"


def test_settings_survive_the_environment():
    """How ``serve --workers`` hands its settings to the worker processes."""
    s = Settings.load({"port": 9000, "qido_strict": True, "cleanup_interval": 0.5, "workers": 3})
    assert Settings.load(None, s.environ()) == s
    assert Settings.load(None, Settings.load(None, {}).environ()) == Settings.load(None, {})


def test_settings_from_environment_and_flags():
    s = Settings.load({"port": 9000}, {"DICOMHUB_PORT": "1234", "DICOMHUB_DELETE_DELAY": "5"})
    assert s.port == 9000 and s.delete_delay == 5
    assert Settings.load(None, {}).resolved_index_url.startswith("sqlite:///")


def test_each_layer_gets_its_group_of_the_settings():
    s = Settings.load(
        {
            "dimse_aet": "HUB",
            "qido_max_limit": 9,
            "job_lease": 7.0,
            "cleanup_batch_size": 3,
            "export_allow": "file:///a, s3://b",
            "auth_issuer": "https://idp",
        }
    )
    assert (s.dimse.aet, s.dimse.max_results, s.dimse.host) == ("HUB", 9, s.host)
    assert s.jobs.lease == s.fhir.lease == 7.0
    assert s.archive.cleanup.batch_size == 3 and s.archive.search.qido_max_limit == 9
    assert s.archive.export.allow == ("file:///a", "s3://b") and not s.archive.export.operator_key
    assert s.auth.issuer == "https://idp" and s.ingest.spool_dir == s.spool_dir
    assert s.request_limits.max_url_length == s.max_url_length and s.cors.max_age == 600


@pytest.mark.parametrize("fsync", ["instance", "off"])
def test_fsync_setting(tmp_path, monkeypatch, fsync):
    """--fsync off: the index commits unsynced (SQLite synchronous NORMAL) and blobs are not
    synced; the default syncs both (the blob's folder too, where the file system needs it:
    test_file_blobs). Either way, what is stored is served."""
    synced = []

    def recording(real):
        return lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd)

    monkeypatch.setattr(os, "fsync", recording(os.fsync))  # folders
    monkeypatch.setattr(file_blobs, "_datasync", recording(file_blobs._datasync))  # files
    # a file of its own (small instances are kept by the index: test_kept_blobs)
    settings = Settings(data_dir=str(tmp_path / "data"), fsync=fsync, index_blob_max=0)
    with TestClient(create_app(settings, build_archive(settings))) as client:
        r = client.post("/v2/studies", content=CT, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200
        synced_by_store = len(synced)
        study, series, sop = ids(CT)
        got = client.get(
            f"/v2/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": "application/dicom"},
        )
        assert got.content == CT
        index = client.app.state.archive.index
        (mode,) = client.portal.call(index._read, st.single, st.one("PRAGMA synchronous"))
    assert mode == (2 if fsync == "instance" else 1)  # FULL, NORMAL
    blobs = [p for p in synced[:synced_by_store] if p.endswith(".dcm")]
    assert len(blobs) == 1 if fsync == "instance" else synced_by_store == 0


@pytest.mark.parametrize(
    "flag, value, error",
    [
        ("--fsync", "sometimes", "--fsync takes instance or off"),
        ("--background-priority", "high", "takes idle or low or normal, not 'high'"),
    ],
)
def test_a_bad_value_stops_the_start(tmp_path, flag, value, error):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dicomhub", "serve", flag, value, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and error in done.stderr
    assert not (tmp_path / "index.sqlite").exists()  # stopped before it opened anything
