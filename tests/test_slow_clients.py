"""Slow and greedy clients cannot exhaust the server (issue 27), against the real `dicomhub serve`
(two processes) over real sockets: a connection that never finishes its request line and
headers is closed after --header-timeout; a body trickling in slower than --min-upload-rate gets
408 and stores nothing; and 1,100 connections held open under a 1,024 open-file limit are
refused past --max-connections (503, closed at once) while requests on the connections already
open, files opened for them included, go on."""

from __future__ import annotations

import http.client
import re
import resource
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import running_server
from tests.synthetic import instance, uid
from tests.test_zerocopy import big

STUDY, SERIES = uid(27, 10), uid(27, 11)
JSON = {"Accept": "application/dicom+json"}
ONE = {"Content-Type": "application/dicom", **JSON}
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("slow")
    limits = dict(header_timeout=str(HEADER_TIMEOUT), min_upload_rate="10000")
    with running_server(data, workers="2", upload_rate_window="2", **limits) as (url, _):
        yield urlparse(url)


def closed_after(sock: socket.socket, trickle: bytes = b"", limit: float = 30):
    """Seconds until the server closes ``sock`` (sending ``trickle`` every half second
    meanwhile), and what it answered."""
    start = time.monotonic()
    answer = b""
    sock.settimeout(0.5)
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed: recv tells
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - start, answer
        answer += chunk
    raise AssertionError(f"still open after {limit} seconds")


@pytest.mark.parametrize(
    "trickle",
    [b"", b"X-Slow: 1\r\n"],  # silent; headers trickling in, never finished
    ids=["silent", "trickling headers"],
)
def test_a_connection_that_never_finishes_its_headers_is_closed(server, trickle):
    with socket.create_connection((server.hostname, server.port), timeout=30) as s:
        s.sendall(b"GET /v2/studies HTTP/1.1\r\nHost: x\r\n" if trickle else b"")
        seconds, answer = closed_after(s, trickle)
    assert HEADER_TIMEOUT * 0.75 <= seconds < HEADER_TIMEOUT + 20
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_the_unread_body_of_an_answered_request_cannot_trickle_on(server):
    """uvicorn reads (and drops) what is left of a body the app did not read, and would hold
    the connection as long as it keeps coming."""
    with socket.create_connection((server.hostname, server.port), timeout=30) as s:
        s.sendall(b"GET /v2/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        seconds, answer = closed_after(s, trickle=b"\0" * 100)
    assert answer.startswith(b"HTTP/1.1 20"), answer  # answered, then closed
    assert HEADER_TIMEOUT * 0.75 <= seconds < HEADER_TIMEOUT + 20


def test_a_connection_whose_unread_body_came_is_kept_alive(server):
    with socket.create_connection((server.hostname, server.port), timeout=30) as s:
        s.sendall(b"GET /v2/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 20")
        s.sendall(b"0123456789")  # the rest, after the answer
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle, under uvicorn's 5 s keep-alive
        s.sendall(b"GET /v2/studies HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 20")


def read_response(sock: socket.socket) -> bytes:
    """One whole response (with a Content-Length, or none) off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while length and len(body) < int(length[1]):
        body += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    return head


def test_a_kept_alive_connection_outlives_the_header_timeout(server):
    """The timeout is for sending a request's headers, not for a connection's life."""
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    for _ in range(3):
        conn.request("GET", "/v2/studies", headers=JSON)
        response = conn.getresponse()
        response.read()
        assert response.status in (200, 204)
        time.sleep(HEADER_TIMEOUT * 0.75)  # under uvicorn's 5 s keep-alive: the same socket
    conn.close()


def test_a_body_trickling_in_gets_408_and_stores_nothing(server):
    body = big(STUDY, SERIES, 256)  # 130 KB
    head = (
        "POST /v2/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        f"Accept: application/dicom+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((server.hostname, server.port), timeout=30) as s:
        s.sendall(head.encode())
        seconds, answer = closed_after(s, trickle=b"\0" * 500)  # 1 KB/s, 10 KB/s required
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 408") and b"connection: close" in head, answer
    assert b"bytes/s" in answer
    url = f"http://{server.hostname}:{server.port}"
    assert httpx.get(f"{url}/v2/changefeed/latest").json() is None  # nothing stored
    # a body at full speed is stored
    fast = httpx.post(url + "/v2/studies", content=body, headers=ONE)
    assert fast.status_code == 200, fast.text


HELD = 1100
FILE_LIMIT = 1024


def _file_limit() -> None:  # in the server process before it starts: soft 256, hard 1,024
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, FILE_LIMIT))


def test_connections_past_the_cap_are_refused_while_open_ones_are_served(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    sop = uid(27, 13)
    body = instance(STUDY, SERIES, sop)
    # header_timeout: the held connections stay held throughout
    serve = running_server(tmp_path, preexec_fn=_file_limit, workers="2", header_timeout="120")
    with serve as (url, proc):
        # serve raised its soft limit to the hard one; each process holds (1024 - 256) / 2
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        files = next(line for line in limits if line.startswith("Max open files")).split()
        assert files[3:5] == [str(FILE_LIMIT), str(FILE_LIMIT)]
        address = urlparse(url)
        open_conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)

        def request(method: str, path: str, content: bytes | None = None, **headers):
            open_conn.request(method, path, body=content, headers=headers)
            response = open_conn.getresponse()
            return response.status, response.read()

        status, _ = request("POST", "/v2/studies", body, **ONE)
        assert status == 200
        held = []
        try:
            for _ in range(HELD):
                s = socket.create_connection((address.hostname, address.port), timeout=30)
                s.sendall(b"GET /v2/studies HTTP/1.1\r\nHost: x\r\n")  # never finished
                held.append(s)
            # two processes of at most 384 connections each, the open one among them: the
            # rest are answered 503 and closed (or reset: the server does not read them)
            for s in held:
                s.setblocking(False)
            refused: set[socket.socket] = set()
            deadline = time.monotonic() + 30
            while len(refused) < HELD - 2 * 384 and time.monotonic() < deadline:
                time.sleep(0.2)
                for s in set(held) - refused:
                    try:
                        answer = s.recv(65536)
                    except BlockingIOError:
                        continue  # held
                    except ConnectionResetError:
                        answer = b""
                    assert answer.startswith(b"HTTP/1.1 503") or not answer, answer
                    refused.add(s)
            assert len(refused) >= HELD - 2 * 384

            # the connection already open is served: files are opened, an instance is stored
            path = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{sop}"
            status, got = request("GET", path, Accept="application/dicom; transfer-syntax=*")
            assert status == 200 and got == body
            status, _ = request("GET", path + "/metadata", **JSON)
            assert status == 200
            other = instance(STUDY, SERIES, uid(27, 14))
            status, _ = request("POST", "/v2/studies", other, **ONE)
            assert status == 200
            # a new connection is served, or refused at once (503, or closed)
            try:
                extra = httpx.get(f"{url}/v2/studies/{STUDY}/instances", headers=JSON)
                assert extra.status_code in (200, 503)
            except httpx.TransportError:
                pass
        finally:
            for s in held:
                s.close()
            open_conn.close()
        # the held ones gone, new connections are served again
        found = httpx.get(f"{url}/v2/studies/{STUDY}/instances", headers=JSON)
        assert found.status_code == 200 and len(found.json()) == 2
