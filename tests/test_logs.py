"""Logs and request ids: a request's id (the client's X-Request-Id when sane, else a new one)
is in the response header, its audit entry and its JSON log line; a job's log lines carry the
id of the request that queued it; the text format is what it was."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub import logs
from dicomhub.archive.operations import OperationsService
from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.storage.urls import open_index
from dicomhub.web.app import create_app
from dicomhub.workers.jobs import JobRunner
from tests.conftest import running_server

NEW_ID = re.compile(r"^[0-9a-f]{32}$")


def _lines(log: Path, found, timeout: float = 20) -> list[str]:
    """The server's log lines once ``found(lines)`` holds (the server writes a request's line
    just after answering it)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()
        if found(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_json_request_line_header_and_audit_entry_share_the_id(tmp_path):
    log = tmp_path / "server.log"
    with running_server(tmp_path / "data", log=log, log_format="json", access_log="true") as (
        url,
        _,
    ):
        asked = "req-42.abc:Z~"
        r = httpx.get(url + "/v2/studies", headers={"X-Request-Id": asked})
        assert r.status_code == 200 and r.headers["x-request-id"] == asked
        for bad in ("has space", "x" * 129, ""):
            replaced = httpx.get(url + "/v2/studies", headers={"X-Request-Id": bad})
            assert NEW_ID.match(replaced.headers["x-request-id"]), bad
        unicode = httpx.get(url + "/v2/studies", headers=[(b"X-Request-Id", "é".encode())])
        assert NEW_ID.match(unicode.headers["x-request-id"])
        generated = httpx.get(url + "/v2/studies/count").headers["x-request-id"]
        assert NEW_ID.match(generated)

        entries = httpx.get(url + "/v2/audit", params={"requestId": asked}).json()
        assert [(e["path"], e["status"], e["requestId"]) for e in entries] == [
            ("/v2/studies", 200, asked)
        ]

        def answered(lines):
            return any(asked in line for line in lines) and any(generated in x for x in lines)

        lines = _lines(log, answered)
    parsed = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message", "request_id"} <= set(parsed[0])
    mine = [p for p in parsed if p.get("request_id") == asked]
    assert len(mine) == 1
    line = mine[0]
    assert line["logger"] == logs.ACCESS and line["level"] == "INFO"
    assert line["method"] == "GET" and line["route"] == "/v2/studies"
    assert line["path"] == "/v2/studies" and line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["user"] is None and line["partition"] is None  # no authentication, partitions
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["time"])
    count = [p for p in parsed if p.get("request_id") == generated]
    assert count[0]["route"] == "/v2/studies/count"
    # uvicorn's own lines are JSON too
    assert any(p["logger"].startswith("uvicorn") for p in parsed)


TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+ ")


def test_text_format_is_unchanged(tmp_path):
    """Text by default: uvicorn's lines as uvicorn writes them, dicomhub's as before, and no
    request lines unless asked for."""
    log = tmp_path / "server.log"
    with running_server(tmp_path / "data", log=log) as (url, _):
        r = httpx.get(url + "/v2/studies", headers={"X-Request-Id": "text-1"})
        assert r.headers["x-request-id"] == "text-1"
    lines = log.read_text().splitlines()
    assert any(line.startswith("INFO:     Application startup complete") for line in lines)
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert not any("/v2/studies" in line for line in lines)  # no access log by default

    log = tmp_path / "access.log"
    with running_server(tmp_path / "data2", log=log, access_log="true") as (url, _):
        httpx.get(url + "/v2/studies", headers={"X-Request-Id": "text-2"})
        lines = _lines(log, lambda lines: any("/v2/studies" in x for x in lines))
    request = [line for line in lines if "/v2/studies" in line]
    assert len(request) == 1 and TEXT_LINE.match(request[0]), request
    assert " INFO dicomhub.access GET /v2/studies 200 " in request[0]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


def test_a_jobs_lines_carry_the_id_of_the_request_that_queued_it():
    async def run() -> tuple[str, list[dict]]:
        index = open_index("sqlite://:memory:")
        await index.start()
        collect = _Collect()
        logger = logging.getLogger("dicomhub.test_job")
        logger.addHandler(collect)
        logger.setLevel(logging.INFO)
        try:
            token = logs.request_id.set("req-job-1")
            try:  # as a request handler queues it
                operation = await OperationsService(index).start("test-job", {"n": 1})
            finally:
                logs.request_id.reset(token)

            async def handler(context):
                logger.info("working on %s", context.operation.payload["n"])
                return {}

            assert await JobRunner(index, {"test-job": handler}).run_once()
            logger.info("after the job")
            return operation, collect.lines
        finally:
            logger.removeHandler(collect)
            await index.close()

    operation, lines = asyncio.run(run())
    working, after = lines
    assert working["message"] == "working on 1"
    assert working["request_id"] == "req-job-1" and working["job_id"] == operation
    assert after["request_id"] is None and "job_id" not in after


@pytest.mark.parametrize(
    "raw, kept",
    [(b"abc", True), (b"a" * 128, True), (b"a" * 129, False), (b"a b", False), (b"", False)],
)
def test_sane_request_ids(raw, kept):
    assert (logs.sane_request_id(raw) is not None) == kept


def test_an_unexpected_error_answers_500_with_the_request_id(tmp_path, monkeypatch):
    """A bug's exception is answered (500) by the last-resort handler, outside the audit
    layer: the answer still echoes the request's id, and its audit entry has it."""
    settings = Settings(data_dir=str(tmp_path / "data"), blob_url="memory://")
    app = create_app(settings, build_archive(settings))
    with TestClient(app, raise_server_exceptions=False) as client:

        async def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.state.archive.search, "search", broken)
        r = client.get("/v2/studies", headers={"X-Request-Id": "bug-1"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
        assert r.json()["detail"] == "the server failed; see its log"
        entries = client.get("/v2/audit", params={"requestId": "bug-1"}).json()
        assert [(e["path"], e["status"]) for e in entries] == [("/v2/studies", 500)]
