"""A native client beside the Python one: curl, for whole-study retrieval and its loopback
ceiling, and for STOW. The Python client spends a core of its own on every byte (about 1 GB/s
here) and tens of microseconds of interpreter on every request, on a machine whose other core
runs the server, so it caps what a fast server can show; curl is what users download studies
with, and costs a fraction of that.

Retrieval (``fetch``): one curl process fetches the URL ``repeat`` times into /dev/null (over one
connection when the server keeps it open; Orthanc closes it after a study) and reports each
transfer's status, size and time (``--write-out``); the server's CPU is read before and after.
The timed transfers are checked by status and size; one untimed transfer before them is kept
whole so the caller can verify its content (the SHA-1 of every part), outside the clock.

STOW (``send``): the request bodies are written to files first, then one curl process sends them
all over ``concurrency`` connections (``--parallel``), streaming each file, and writes each answer
to its own file; the clock is that process's life. The answers come back whole, in request
order, for the caller to verify.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from email.parser import BytesHeaderParser
from pathlib import Path

from bench.client import Client, Request, Response, Timing, check

CURL = "curl"
_WRITE_OUT = "%{http_code} %{size_download} %{time_total}\\n"


def curl_available() -> str | None:
    """Why curl cannot be used here, or None."""
    if shutil.which(CURL) is None:
        return "curl is not installed (Debian package curl)"
    return None


def fetch(
    client: Client, request: Request, repeat: int, cpu: Callable[[], float] | None = None
) -> tuple[Timing, Response]:
    """``request`` (a GET) timed ``repeat`` times with curl, and one untimed answer, whole."""
    check(request.method == "GET", "the native client only sends GET")
    url = f"http://{client.host}:{client.port}{client.prefix}{request.path}"
    headers = [a for name, value in request.headers.items() for a in ("-H", f"{name}: {value}")]
    with tempfile.TemporaryDirectory(prefix="bench-curl-") as tmp:
        body, head = Path(tmp) / "body", Path(tmp) / "head"
        _curl([*headers, "-D", str(head), "-o", str(body), url])  # warms the server, untimed
        first = Response(_status(head), _headers(head), body.read_bytes())
    outputs = [a for _ in range(repeat) for a in ("-o", "/dev/null", url)]
    before = cpu() if cpu else None
    lines = _curl([*headers, "-w", _WRITE_OUT, *outputs]).splitlines()
    used = cpu() - before if cpu else None
    check(len(lines) == repeat, lambda: f"curl: {len(lines)} transfers reported, not {repeat}")
    latencies, received = [], 0
    for line in lines:
        status, size, seconds = line.split()
        check(status == str(first.status), lambda s=status: f"curl: HTTP {s}")
        want = len(first.body)
        check(int(size) == want, lambda s=size, w=want: f"curl: {s} bytes, not {w}")
        latencies.append(float(seconds))
        received += int(size)
    timing = Timing(
        latencies=latencies,
        wall=sum(latencies),  # the transfers only, not curl's start-up
        units=repeat,
        sent=0,
        received=received,
        server_cpu=used,
    )
    return timing, first


def send(
    client: Client, requests: list[Request], concurrency: int, cpu: Callable[[], float] | None
) -> tuple[Timing, list[Response]]:
    """``requests`` (each with a body) sent by one curl process over ``concurrency``
    connections; their answers, in request order."""
    url = f"http://{client.host}:{client.port}{client.prefix}"
    with tempfile.TemporaryDirectory(prefix="bench-curl-") as tmp:
        config = []
        for i, request in enumerate(requests):
            check(request.body is not None, "the native client sends bodies from files")
            body = Path(tmp) / f"request-{i}"
            body.write_bytes(request.body)
            headers = [*(f"{n}: {v}" for n, v in request.headers.items()), "Expect:"]
            config += [
                f"url = {_quoted(url + request.path)}",
                f"request = {request.method}",
                f"upload-file = {_quoted(str(body))}",
                *(f"header = {_quoted(h)}" for h in headers),
                f"output = {_quoted(f'{tmp}/answer-{i}')}",
                f"write-out = {_quoted(_SENT)}",
                "next",
            ]
        (Path(tmp) / "config").write_text("\n".join(config[:-1]) + "\n")
        args = ["--parallel", "--parallel-max", str(concurrency), "-K", f"{tmp}/config"]
        before = cpu() if cpu else None
        start = time.perf_counter()
        lines = _curl(args).splitlines()
        wall = time.perf_counter() - start
        used = cpu() - before if cpu else None
        check(len(lines) == len(requests), lambda: f"curl: {len(lines)} answers, not {len(requests)}")
        latencies, responses = [0.0] * len(requests), [None] * len(requests)
        for line in lines:
            status, seconds, name = line.split()
            i = int(name.rsplit("-", 1)[1])
            latencies[i] = float(seconds)
            answer = Path(name)  # curl writes no file for an empty answer
            body = answer.read_bytes() if answer.exists() else b""
            responses[i] = Response(int(status), http.client.HTTPMessage(), body)
    timing = Timing(
        latencies=latencies,
        wall=wall,
        units=sum(r.units for r in requests),
        sent=sum(len(r.body) for r in requests),
        received=sum(len(r.body) for r in responses),
        server_cpu=used,
    )
    return timing, responses


_SENT = "%{http_code} %{time_total} %{filename_effective}\\n"


def _quoted(value: str) -> str:
    """A curl config file's quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _curl(args: list[str]) -> str:
    run = subprocess.run(
        [CURL, "--silent", "--show-error", "--no-progress-meter", "--http1.1", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    check(run.returncode == 0, lambda: f"curl failed ({run.returncode}): {run.stderr[-500:]}")
    return run.stdout


def _status(head: Path) -> int:
    return int(head.read_bytes().split(b"\r\n", 1)[0].split()[1])


def _headers(head: Path):
    return BytesHeaderParser().parsebytes(head.read_bytes().split(b"\r\n", 1)[1])
