"""A native client beside the Python one: curl, for whole-study retrieval and its loopback
ceiling, and for STOW. For retrieval the Python client spends a core of its own on every byte
(about 1 GB/s here), so it caps what a fast server can show; curl is what users download
studies with. For STOW, curl is a second, independent client: it sends headers and body as a
file upload does, and its CPU per small request (0.24 ms here) is about the Python client's.

Retrieval (``fetch``): one curl process fetches the URL ``repeat`` times into /dev/null (over one
connection when the server keeps it open; Orthanc closes it after a study) and reports each
transfer's status, size and time (``--write-out``); the server's CPU is read before and after.
The timed transfers are checked by status and size; one untimed transfer before them is kept
whole so the caller can verify its content (the SHA-1 of every part), outside the clock.

STOW (``send``): the request bodies are written to files first, then one curl process per
concurrent client sends its share of them over one connection, one after another, streaming
each file, and writes the answers to one file, each followed by a line with its status and
time; the clock runs from the processes' start to the last one's end. (curl's own
``--parallel`` spends about a millisecond of CPU per transfer when given thousands.) The
answers come back whole, in request order, for the caller to verify.
"""

from __future__ import annotations

import http.client
import re
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
    """``requests`` (each with a body) sent by ``concurrency`` curl processes at once, each over
    one connection, one request after another (request i by process i mod ``concurrency``);
    their answers, in request order."""
    url = f"http://{client.host}:{client.port}{client.prefix}"
    concurrency = min(concurrency, len(requests))  # as many clients as have work
    with tempfile.TemporaryDirectory(prefix="bench-curl-") as tmp:
        configs = [[] for _ in range(concurrency)]
        for i, request in enumerate(requests):
            check(request.body is not None, "the native client sends bodies from files")
            body = Path(tmp) / f"request-{i}"
            body.write_bytes(request.body)
            headers = [*(f"{n}: {v}" for n, v in request.headers.items()), "Expect:"]
            configs[i % concurrency] += [
                f"url = {_quoted(url + request.path)}",
                f"request = {request.method}",
                f"upload-file = {_quoted(str(body))}",
                *(f"header = {_quoted(h)}" for h in headers),
                f"write-out = {_quoted(_SENT)}",
                "next",
            ]
        for n, config in enumerate(configs):
            (Path(tmp) / f"config-{n}").write_text("\n".join(config[:-1]) + "\n")
        outputs = [Path(tmp) / f"answers-{n}" for n in range(concurrency)]
        before = cpu() if cpu else None
        start = time.perf_counter()
        processes = []
        for n, out in enumerate(outputs):
            with out.open("wb") as f:  # curl holds its own copy of the descriptor
                processes.append(_start(["-K", f"{tmp}/config-{n}"], f))
        for process in processes:
            _finish(process)
        wall = time.perf_counter() - start
        used = cpu() - before if cpu else None
        outputs = [out.read_bytes() for out in outputs]
    latencies, responses = [0.0] * len(requests), [None] * len(requests)
    for n, output in enumerate(outputs):
        fields = _ANSWER.split(output)  # body, status, seconds, body, ..., ""
        mine = range(n, len(requests), concurrency)
        check(len(fields) == 3 * len(mine) + 1, f"curl {n}: {len(fields) // 3} answers")
        for k, i in enumerate(mine):
            body, status, seconds = fields[3 * k : 3 * k + 3]
            latencies[i] = float(seconds)
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


# each answer on curl's output is followed by a line of its own with its status and time
_SENT = "\\n--bench-curl-answer %{http_code} %{time_total}\\n"
_ANSWER = re.compile(rb"\n--bench-curl-answer (\d+) ([0-9.]+)\n")


def _quoted(value: str) -> str:
    """A curl config file's quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _curl(args: list[str]) -> str:
    return _finish(_start(args, subprocess.PIPE)).decode()


def _start(args: list[str], stdout) -> subprocess.Popen:
    """curl, its output to ``stdout`` (an open file, or PIPE)."""
    command = [CURL, "--silent", "--show-error", "--http1.1", *args]
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> bytes:
    out, err = process.communicate(timeout=600)
    code = process.returncode
    check(code == 0, lambda: f"curl failed ({code}): {err[-500:].decode(errors='replace')}")
    return out


def _status(head: Path) -> int:
    return int(head.read_bytes().split(b"\r\n", 1)[0].split()[1])


def _headers(head: Path):
    return BytesHeaderParser().parsebytes(head.read_bytes().split(b"\r\n", 1)[1])
