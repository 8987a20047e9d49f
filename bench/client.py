"""The one HTTP client every server is measured with: stdlib ``http.client`` over persistent
loopback connections, one thread per concurrent client, bodies read whole in 1 MiB reads.

Responses are kept and checked after the clock stops, so verification never counts as latency
and a fast wrong answer still fails the run.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

READ = 1 << 20


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    units: int = 1  # what the workload counts: instances, queries, frames...


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Timing:
    latencies: list[float]  # seconds, one per request
    wall: float
    units: int
    sent: int
    received: int
    server_cpu: float | None = None  # seconds of server CPU over the run

    def summary(self, unit: str) -> dict:
        q = _percentiles(self.latencies)
        return {
            "requests": len(self.latencies),
            unit: self.units,
            "seconds": round(self.wall, 3),
            f"{unit}_per_s": round(self.units / self.wall, 2),
            "mb_per_s": round((self.sent + self.received) / self.wall / 1e6, 1),
            "p50_ms": round(q[50] * 1000, 2),
            "p95_ms": round(q[95] * 1000, 2),
            "p99_ms": round(q[99] * 1000, 2),
            "server_cpu_ms_per_unit": None
            if self.server_cpu is None
            else round(self.server_cpu / self.units * 1000, 3),
        }


def _percentiles(values: Sequence[float]) -> dict[int, float]:
    if len(values) == 1:
        return {p: values[0] for p in (50, 95, 99)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in (50, 95, 99)}


class Client:
    """Requests against one base URL, e.g. ``http://127.0.0.1:8080/v2``."""

    def __init__(self, base_url: str, cpu: Callable[[], float] | None = None):
        """``cpu`` tells the server's CPU seconds so far (reported per unit of work)."""
        self.cpu = cpu
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=600)

    def send(self, conn: http.client.HTTPConnection, request: Request) -> Response:
        conn.request(request.method, self.prefix + request.path, request.body, request.headers)
        raw = conn.getresponse()
        chunks = []
        while chunk := raw.read(READ):
            chunks.append(chunk)
        return Response(raw.status, raw.headers, b"".join(chunks))

    def run(
        self, requests: Sequence[Request], concurrency: int = 1
    ) -> tuple[Timing, list[Response]]:
        """Send ``requests`` from ``concurrency`` threads, each on its own connection (warmed
        up by one untimed request when requests only read); answers come back in request
        order."""
        responses: list[Response | None] = [None] * len(requests)
        latencies: list[float] = [0.0] * len(requests)
        errors: list[BaseException] = []
        cursor = iter(range(len(requests)))
        lock = threading.Lock()

        def worker() -> None:
            conn = self.connect()
            try:
                if all(r.method == "GET" for r in requests):  # a warm connection, untimed
                    self.send(conn, requests[0])
                while True:
                    with lock:
                        i = next(cursor, None)
                    if i is None:
                        return
                    start = time.perf_counter()
                    responses[i] = self.send(conn, requests[i])
                    latencies[i] = time.perf_counter() - start
            except BaseException as exc:  # reported by run(), not lost in the thread
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        cpu = self.cpu() if self.cpu else None
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if cpu is not None:
            cpu = self.cpu() - cpu
        if errors:
            raise errors[0]
        done = [r for r in responses if r is not None]
        timing = Timing(
            latencies=latencies,
            wall=wall,
            units=sum(r.units for r in requests),
            sent=sum(len(r.body or b"") for r in requests),
            received=sum(len(r.body) for r in done),
            server_cpu=cpu,
        )
        return timing, done


def multipart(parts: Sequence[bytes], media_type: str = "application/dicom") -> Request:
    """A STOW-RS request body (PS3.18 10.5): one part per instance."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Request(
        "POST",
        "/studies",
        {
            "Content-Type": f'multipart/related; type="{media_type}"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        b"".join(chunks),
        units=len(parts),
    )


def parts(response: Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    content_type = response.headers.get("Content-Type", "")
    boundary = next(
        (
            p.split("=", 1)[1].strip().strip('"')
            for p in content_type.split(";")
            if p.strip().lower().startswith("boundary=")
        ),
        None,
    )
    if boundary is None:
        raise AssertionError(f"not multipart: {content_type!r}")
    delimiter = b"--" + boundary.encode()
    body, out = response.body, []
    pos = body.find(delimiter)
    while pos >= 0:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            break
        start = body.find(b"\r\n\r\n", pos) + 4
        end = body.find(b"\r\n" + delimiter, start)
        if start < 4 or end < 0:
            raise AssertionError("truncated multipart body")
        out.append(body[start:end])
        pos = end + 2
    return out


def check(condition: bool, what: str | Callable[[], str]) -> None:
    """A verification that stays on under ``python -O``."""
    if not condition:
        raise AssertionError(what() if callable(what) else what)
