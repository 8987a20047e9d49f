from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests import components

ROOT = Path(__file__).resolve().parent.parent


INDEXES = ["sqlite", "postgresql"]


_template: list = []  # the session's migrated PostgreSQL database, made on first use


def _postgres_template() -> str:
    if not _template:
        context = components.migrated_template()
        _template.append((context.__enter__(), context))
    return _template[0][0]


def pytest_sessionfinish(session, exitstatus):
    for _, context in _template:
        context.__exit__(None, None, None)


@pytest.fixture
def clock():
    """This process's clock (dicomhub.clock), to move forward instead of sleeping past a lease,
    delay or lifetime; set back when the test ends."""
    from dicomhub import clock as the_clock

    yield the_clock
    the_clock.reset()


# The real components the tiers of the suite need; each ran, or why its tests were skipped.
TIERS = ("PostgreSQL", "Azurite", "SeaweedFS", "FHIR server", "Orthanc", "DCMTK", "OHIF")
_tiers: dict[str, str] = {}


def ran(component: str) -> None:
    _tiers[component] = "ran"


def unavailable(exc: components.Unavailable):
    """A component a test needs cannot run here: the test is skipped, naming it; under CI
    (``CI=true``) it fails instead, since CI must run every tier."""
    if _tiers.get(exc.component) != "ran":
        _tiers[exc.component] = f"skipped: {exc}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs every tier: {exc}", pytrace=False)
    pytest.skip(str(exc))


def pytest_terminal_summary(terminalreporter):
    """Which tiers ran (a green run with a tier skipped is not a full run)."""
    terminalreporter.section("tiers")
    for tier in TIERS:
        terminalreporter.write_line(f"{tier}: {_tiers.get(tier, 'not needed by the tests run')}")


@contextlib.contextmanager
def index_database(kind: str, migrated: bool = True):
    """The URL of an empty index of ``kind``: in-memory SQLite, or a database of its own on
    PostgreSQL, with the schema in place unless not ``migrated`` (skipped with the reason
    when PostgreSQL is not reachable)."""
    if kind == "sqlite":
        yield "sqlite://:memory:"
        return
    try:
        database = components.postgres_database(_postgres_template() if migrated else None)
        url = database.__enter__()
    except components.Unavailable as exc:
        unavailable(exc)
    ran("PostgreSQL")
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


@pytest.fixture(params=INDEXES)
def index_url(request):
    with index_database(request.param) as url:
        yield url


@pytest.fixture
def settings(tmp_path, index_url) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        index_url=index_url,
        blob_url="memory://",
        delete_delay=0,
    )


@pytest.fixture
def client(settings):
    """The real app in-process, on the in-memory index and blob store."""
    app = create_app(settings, build_archive(settings))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def file_client(tmp_path):
    """The real app in-process on the embedded default: SQLite file + blob folder."""

    def make(**overrides):
        s = Settings(data_dir=str(tmp_path / "data"), **overrides)
        app = create_app(s, build_archive(s))
        return TestClient(app)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    data: Path, healthy: bool = True, preexec_fn=None, log: Path | None = None, **env_settings: str
):
    """`dicomhub serve` as a process on a free port; yields (base URL, process). One server
    process unless ``workers`` says otherwise (a test that kills ``process`` kills the server).
    Up once /health/check answers 200 (any answer, when not ``healthy``: a full disk). Its
    output goes to ``log`` (default: server.log in ``data``)."""
    port = free_port()
    env_settings = {"workers": "1", **env_settings}
    env = dict(os.environ, **{f"DICOMHUB_{k.upper()}": v for k, v in env_settings.items()})
    log_path = log or data / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomhub", "serve", "--port", str(port), "--data-dir", str(data)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        preexec_fn=preexec_fn,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                status = httpx.get(url + "/health/check").status_code
                if status == 200 or not healthy:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text())
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _component(start, tmp_path_factory, name, tier):
    """A session-wide component (see components.py), its credentials in this process's
    environment; skipped with the reason when it cannot run here."""
    try:
        with start(tmp_path_factory.mktemp(name)) as store:
            ran(tier)
            saved = {k: os.environ.get(k) for k in store.env}
            os.environ.update(store.env)
            yield store
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    except components.Unavailable as exc:
        unavailable(exc)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    yield from _component(components.azurite, tmp_path_factory, "azurite", "Azurite")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    yield from _component(components.seaweedfs, tmp_path_factory, "seaweedfs", "SeaweedFS")


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory):
    yield from _component(components.fhir_server, tmp_path_factory, "fhir", "FHIR server")


BACKENDS = ["embedded", "scale-out"]


@contextlib.contextmanager
def backend_settings(kind: str, request):
    """Settings (as ``running_server`` keywords) of the embedded default (SQLite + folder), or
    of a scaled-out node: a PostgreSQL database of its own and a prefix in Azurite."""
    if kind == "embedded":
        yield {}
        return
    store = request.getfixturevalue("azurite")
    with index_database("postgresql") as url:
        yield {"index_url": url, "blob_url": store.blob_url()}


@pytest.fixture(scope="session", params=BACKENDS)
def server(tmp_path_factory, request):
    """One served archive for the end-to-end tests, talked to over a real socket; the suite
    runs on the embedded default and on PostgreSQL + object storage."""
    data = tmp_path_factory.mktemp("served")
    with (
        backend_settings(request.param, request) as backend,
        running_server(data, delete_delay="0", cleanup_interval="0.2", **backend) as (url, _),
    ):
        yield {"url": url, "data": data, "backend": request.param}
