"""`dicomhub serve --workers 2`: several processes on one index and blob store behave as one
server (each request on its own connection, so the kernel spreads them over the workers)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_server
from tests.helpers import MULTIPART, failures, multipart
from tests.synthetic import instance, uid


def _stow(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url + "/v2/studies",
        content=multipart(body),
        headers={"Content-Type": MULTIPART},
        timeout=60,
    )


def test_workers_share_one_archive(tmp_path):
    with running_server(tmp_path, workers="2") as (url, proc):
        assert len(_workers(proc)) == 2  # two worker processes under the supervisor
        sops = [uid(90, 1, n) for n in range(40)]
        bodies = [instance(uid(90), uid(90, 1), sop) for sop in sops]
        with ThreadPoolExecutor(8) as pool:
            stored = list(pool.map(lambda b: _stow(url, b), bodies))
            assert [r.status_code for r in stored] == [200] * 40
            # visible at once, whichever worker answers
            seen = list(
                pool.map(
                    lambda s: (
                        httpx.get(
                            f"{url}/v2/studies/{uid(90)}/series/{uid(90, 1)}/instances/{s}/metadata"
                        ).status_code
                    ),
                    sops,
                )
            )
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


def _children(proc, marker: bytes) -> list[int]:
    """The living child processes of ``proc`` whose command line holds ``marker`` (started by
    any thread of it: each thread's children are listed apart)."""
    found = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread, or a child, that ended meanwhile
            for child in (task / "children").read_text().split():
                if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


def _workers(proc) -> list[int]:
    return _children(proc, b"spawn_main")  # uvicorn's server processes


def _background(proc) -> list[int]:
    return _children(proc, b"dicomhub\x00worker\x00")


SCHED_OTHER, SCHED_IDLE = 0, 5


def _priority(pid: int) -> set[tuple[int, int]]:
    """(scheduling policy, nice) of each thread of a process (on Linux each has its own)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            found.add((int(fields[38]), int(fields[16])))
    return found


def _lowered(pid: int, wanted: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The priority of a background process once it is ``wanted`` (it lowers itself once
    started, its imports run first), or after 30 s."""
    deadline = time.monotonic() + 30
    while (now := _priority(pid)) != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


@pytest.mark.parametrize("priority", [None, "low"])
def test_background_work_runs_in_a_lower_priority_process(tmp_path, priority):
    """Several server processes: the background work (jobs, webhook delivery, FHIR sync) is
    one process of serve's own at a lower CPU priority, every thread of it (by default Linux's
    SCHED_IDLE; nice 10 when "low"); started again when it dies; the server processes run no
    job."""
    settings = {"background_priority": priority} if priority else {}
    with running_server(tmp_path, workers="2", **settings) as (url, proc):
        (background,) = _background(proc)
        (own,) = _priority(proc.pid)
        wanted = {(SCHED_OTHER, min(19, own[1] + 10)) if priority else (SCHED_IDLE, own[1])}
        assert _lowered(background, wanted) == wanted
        assert all(_priority(w) == {own} for w in _workers(proc))
        assert _stow(url, instance(uid(93), uid(93, 1), uid(93, 1, 1))).status_code == 200
        os.kill(background, signal.SIGSTOP)  # the server processes take no job meanwhile
        try:
            tag = [{"path": "PatientWeight", "level": "Study"}]
            r = httpx.post(url + "/v2/extendedquerytags", json=tag)
            assert r.status_code == 202, r.text
            operation = url + "/v2/operations/" + r.json()["id"]
            time.sleep(2)
            assert httpx.get(operation).json()["status"] == "notStarted"
        finally:
            os.kill(background, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _background(proc) in ([], [background]) and time.monotonic() < deadline:
            time.sleep(0.1)
        (again,) = _background(proc)
        assert again != background and _lowered(again, wanted) == wanted
        deadline = time.monotonic() + 30  # the new process runs the job left waiting
        while (state := httpx.get(operation)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.json()["status"] == "completed", state.text
        assert state.json()["results"] == {"indexedInstances": 1}


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


def test_a_slow_process_is_given_the_healthcheck_timeout(tmp_path):
    """--worker-healthcheck-timeout reaches serve's liveness check: a server process that
    cannot answer for 7 s (stopped) is not killed when the timeout is 60 s (uvicorn's own
    default, 5 s, would kill it and start another)."""
    with running_server(tmp_path, workers="2", worker_healthcheck_timeout="60") as (url, proc):
        workers = _workers(proc)
        os.kill(workers[0], signal.SIGSTOP)
        try:
            time.sleep(7)
        finally:
            os.kill(workers[0], signal.SIGCONT)
        time.sleep(1)
        assert sorted(_workers(proc)) == sorted(workers)
        assert httpx.get(url + "/health/check").status_code == 200


def _descendants(pid: int) -> set[int]:
    """Every living process under ``pid`` (zombies count as gone)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry.name)] = int(stat[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("signal_", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_every_process_ends_with_serve(tmp_path, signal_):
    """The conversion workers, the multiprocessing helpers and the server processes all end
    with ``serve``: at once on SIGTERM, soon after when the supervisor is killed."""
    with running_server(tmp_path, workers="2") as (url, proc):
        assert _stow(url, instance(uid(92), uid(92, 1), uid(92, 1, 1))).status_code == 200
        rendered = f"{url}/v2/studies/{uid(92)}/series/{uid(92, 1)}/instances/{uid(92, 1, 1)}"
        for _ in range(4):  # on new connections: both workers start their conversion pools
            got = httpx.get(rendered + "/rendered", headers={"Accept": "image/png"})
            assert got.status_code == 200, got.text
        started = _descendants(proc.pid)
        assert len(started) > 2  # the server processes and at least one conversion worker
        proc.send_signal(signal_)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(started), [
            Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in _alive(started)
        ]


def _established(pid: str, port: int) -> int:
    """Connections a process holds to the server's port (from /proc: its sockets' inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    held = set()  # a connection's socket may have several descriptors (a sendfile one)
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held.add(target)
    return len(held)


def test_connections_spread_over_the_workers(tmp_path):
    """Kept-alive connections that all landed on one process (here: the other was stopped
    while they connected) are spread over both: the crowded one answers with Connection: close
    and the client's next connection goes to the idle one."""
    with running_server(tmp_path, workers="2") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        first, second = _workers(proc)
        clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
        os.kill(second, signal.SIGSTOP)
        try:
            for client in clients:  # four connections, all accepted by the first process
                client.connect()
            deadline = time.monotonic() + 10
            while _established(first, port) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _established(first, port) == 4
        finally:
            os.kill(second, signal.SIGCONT)
        closes = 0
        for _ in range(100):
            for client in clients:  # http.client reconnects after a "Connection: close"
                client.request("GET", "/health/check")
                answer = client.getresponse()
                answer.read()
                assert answer.status == 200
                closes += answer.getheader("connection") == "close"
            if closes >= 2 and sorted(_established(p, port) for p in (first, second)) == [2, 2]:
                break
            time.sleep(0.02)
        assert [_established(first, port), _established(second, port)] == [2, 2]
        for client in clients:
            client.close()
