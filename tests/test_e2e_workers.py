"""`dicomhub serve --workers 2`: several processes on one index and blob store behave as one
server (each request on its own connection, so the kernel spreads them over the workers)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import running_server
from tests.helpers import MULTIPART, failures, multipart
from tests.synthetic import instance, uid


def _stow(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url + "/v2/studies", content=multipart(body),
                      headers={"Content-Type": MULTIPART}, timeout=60)  # fmt: skip


def test_workers_share_one_archive(tmp_path):
    with running_server(tmp_path, workers="2") as (url, proc):
        assert len(_workers(proc)) == 2  # two worker processes under the supervisor
        sops = [uid(90, 1, n) for n in range(40)]
        bodies = [instance(uid(90), uid(90, 1), sop) for sop in sops]
        with ThreadPoolExecutor(8) as pool:
            stored = list(pool.map(lambda b: _stow(url, b), bodies))
            assert [r.status_code for r in stored] == [200] * 40
            # visible at once, whichever worker answers
            seen = list(pool.map(lambda s: httpx.get(
                f"{url}/v2/studies/{uid(90)}/series/{uid(90, 1)}/instances/{s}/metadata"
            ).status_code, sops))  # fmt: skip
            assert seen == [200] * 40
            # the same new instance sent twice at once: one success, one duplicate or pending
            for n in range(5):
                twice = [instance(uid(91), uid(91, 1), uid(91, 1, n))] * 2
                answers = list(pool.map(lambda b: _stow(url, b), twice))
                codes = sorted(r.status_code for r in answers)
                assert codes == [200, 409], [r.text for r in answers]
                loser = next(r for r in answers if r.status_code == 409)
                assert failures(loser)[0] in (45070, 45071)
        feed = httpx.get(url + "/v2/changefeed", params={"limit": 100}).json()
        sequences = [e["sequence"] for e in feed]
        assert sequences == sorted(set(sequences)) and len(sequences) == 45
        found = httpx.get(f"{url}/v2/studies/{uid(90)}/instances", params={"limit": 100}).json()
        assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(sops)


def _workers(proc) -> list[str]:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_one_process_per_core_by_default(tmp_path):
    """What users get: serve without --workers runs one server process per core; killing the
    supervisor stops them all (none serves on alone)."""
    with running_server(tmp_path, workers="0") as (url, proc):
        workers = _workers(proc)
        assert len(workers) == (os.cpu_count() or 1) or os.cpu_count() == 1
        assert httpx.get(url + "/health/check").status_code == 200
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{w}").exists() for w in workers)
