"""The hostile corpus (tests/hostile.py) against a running server: every request gets a 4xx
with no stack trace or internal path in it, the server stays up throughout, and what was
stored before is unchanged afterwards."""

from __future__ import annotations

import json
import re
import socket
from urllib.parse import urlparse

import httpx
import pytest

from tests import hostile
from tests.conftest import running_server

LEAKS = re.compile(rb"Traceback|File \"|site-packages|/work/|/tmp/|/usr/lib|\.py\b")


def send(base: str, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes; the status and body of the answer (0 when the server just closed)."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read: the answer is still there
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(match.group(1)) if match else 0), data


def snapshot(http: httpx.Client) -> tuple:
    metadata = http.get(f"/v2/studies/{hostile.STUDY}/metadata").json()
    studies = http.get("/v2/studies").json()
    latest = http.get("/v2/changefeed/latest").json()
    instance = http.get(
        hostile.INSTANCE, headers={"Accept": "application/dicom; transfer-syntax=*"}
    )
    return json.dumps(metadata), len(studies), latest["sequence"], instance.content


def test_the_hostile_corpus(tmp_path):
    cases = hostile.corpus()
    assert len(cases) >= 200
    with (
        running_server(tmp_path, **hostile.LIMITS) as (base, proc),
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        stored = http.post(
            "/v2/studies",
            content=hostile.parts(hostile.BASE),
            headers={"Content-Type": hostile.MULTIPART},
        )
        assert stored.status_code == 200, stored.text
        before = snapshot(http)
        assert before[3] == hostile.BASE
        wrong = []
        for case in cases:
            status, answer = send(base, case.request)
            if not 400 <= status < 500 or LEAKS.search(answer):
                wrong.append((case.name, status, answer[:300]))
            assert proc.poll() is None, f"the server died on {case.name}"
        assert not wrong, "\n".join(map(repr, wrong))
        assert http.get("/health/check").status_code == 200
        assert snapshot(http) == before
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-5000:]


@pytest.mark.parametrize("depth", [64])
def test_the_deepest_nesting_allowed_is_stored(tmp_path, depth):
    """The nesting limit is a limit, not a ban on sequences: 64 levels are stored and served."""
    with running_server(tmp_path) as (base, _), httpx.Client(base_url=base, timeout=60) as http:
        r = http.post(
            "/v2/studies",
            content=hostile.parts(hostile.nested(depth)),
            headers={"Content-Type": hostile.MULTIPART},
        )
        assert r.status_code == 200, r.text
        metadata = http.get(f"/v2/studies/{hostile.uid(81, 1)}/metadata").json()[0]
        level, seen = metadata, 0
        while "00991001" in level:
            level = level["00991001"]["Value"][0]
            seen += 1
        assert seen == depth
