"""Zero-copy sends (web/zerocopy.py): the real app under uvicorn with dicomhub's protocol, over
real sockets. The kernel sends stored files (sendfile), and still every byte arrives in order
whatever the client's pace, with Content-Length or chunked framing; a client that leaves costs
no error and no open file; a missing file fails as without it; TLS goes without it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import logging
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.routing import Route

from dicomhub.cli import build_archive
from dicomhub.dicom.multipart import MultipartParser, PartData, PartStart
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from dicomhub.web.parts import SMALL
from dicomhub.web.zerocopy import HttpToolsProtocol
from tests.conftest import free_port
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import MULTIPART, multipart

CT = load("CT_small.dcm")
JPEG = load("SC_rgb_dcmtk_+eb+cr.dcm")
STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


def big(study: str, series: str, rows: int) -> bytes:
    """A CT instance of the study with ``rows`` x ``rows`` noise pixels."""
    ds = read(with_new_uids(CT, study, series))
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.random.default_rng(rows).integers(0, 4000, rows * rows, "<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


@contextlib.contextmanager
def serving(tmp_path, loop: str = "uvloop", http=HttpToolsProtocol, blob_max=None, **options):
    """``blob_max``: --index-blob-max (None: the default)."""
    more = {} if blob_max is None else {"index_blob_max": blob_max}
    settings = Settings(data_dir=str(tmp_path / "data"), **more)
    app = create_app(settings, build_archive(settings))
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, loop=loop, log_level="warning", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port, settings
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def serving_app(app, loop: str = "uvloop"):
    """A bare ASGI app under the protocol."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=HttpToolsProtocol,
        loop=loop,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def sends(monkeypatch):
    """How many sendfile calls the server made (it runs in this process)."""
    calls = []
    real = os.sendfile

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(os, "sendfile", counted)
    return calls


def store(port: int, files: list[bytes]) -> None:
    r = httpx.post(
        f"http://127.0.0.1:{port}/v2/studies",
        content=multipart(*files),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def study(count: int = 40) -> tuple[str, list[bytes]]:
    """A study of small instances and, every tenth, one of 2 MB."""
    uid, series = "1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.1.1"
    files = [
        big(uid, series, 1024) if n % 10 == 5 else with_new_uids(CT, uid, series)
        for n in range(count)
    ]
    return uid, files


def get(port: int, path: str, accept: str = STORED, method: str = "GET", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, headers={"Accept": accept, **headers})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def request(study: str) -> bytes:
    return f"GET /v2/studies/{study} HTTP/1.1\r\nHost: x\r\nAccept: {STORED}\r\n\r\n".encode()


def parts(content_type: str, body: bytes) -> list[tuple[dict, bytes]]:
    parser = MultipartParser(content_type.split("boundary=")[1].split(";")[0].strip('"'))
    out: list[tuple[dict, bytes]] = []
    for event in parser.feed(body):
        if isinstance(event, PartStart):
            out.append((event.headers, b""))
        elif isinstance(event, PartData):
            out[-1] = (out[-1][0], out[-1][1] + event.data)
    parser.close()
    return out


def digests(bodies) -> list[str]:
    return sorted(hashlib.sha1(b).hexdigest() for b in bodies)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_study_sent_by_the_kernel(tmp_path, sends, loop):
    uid, files = study()
    with serving(tmp_path, loop) as (port, _):
        store(port, files)
        sends.clear()
        response, body = get(port, f"/v2/studies/{uid}")
        assert response.status == 200
        assert int(response.getheader("Content-Length")) == len(body)
        got = parts(response.getheader("Content-Type"), body)
        assert digests(b for _, b in got) == digests(files)
        large = [f for f in files if len(f) > SMALL]  # smaller ones are read, and joined
        assert large and len(sends) >= len(large)  # every larger one went by sendfile
        length = response.getheader("Content-Length")

        sop = read(files[5]).SOPInstanceUID
        instance = f"/v2/studies/{uid}/series/{read(files[5]).SeriesInstanceUID}/instances/{sop}"
        response, body = get(port, instance, accept="application/dicom; transfer-syntax=*")
        assert response.status == 200 and body == files[5]

        head, nothing = get(port, f"/v2/studies/{uid}", method="HEAD")
        assert head.status == 200 and nothing == b""
        assert head.getheader("Content-Length") == length


def test_a_slow_reader_gets_every_byte_in_order(tmp_path, sends):
    uid, files = study(30)
    with serving(tmp_path) as (port, _):
        store(port, files)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            s.connect(("127.0.0.1", port))
            s.sendall(request(uid))
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += s.recv(4096)
            head, body = raw.split(b"\r\n\r\n", 1)
            fields = dict(
                line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
            )
            length = int(fields["content-length"])
            while len(body) < length:
                chunk = s.recv(4096)
                assert chunk, "the connection closed early"
                body += chunk
                if len(body) % 16 == 0:
                    time.sleep(0.001)
        response, whole = get(port, f"/v2/studies/{uid}")
        expected = [b for _, b in parts(response.getheader("Content-Type"), whole)]
        assert [b for _, b in parts(fields["content-type"], body)] == expected  # in order
        assert digests(expected) == digests(files)
        assert sends


def test_converted_and_stored_parts_together_go_chunked(tmp_path, sends):
    uid, series = "1.2.826.0.1.3680043.10.999.2", "1.2.826.0.1.3680043.10.999.2.1"
    stored = [big(uid, series, 256) for _ in range(20)]  # above SMALL: sent by the kernel
    jpeg = with_new_uids(JPEG, uid, series)
    with serving(tmp_path) as (port, _):
        store(port, [*stored[:10], jpeg, *stored[10:]])
        sends.clear()
        response, body = get(port, f"/v2/studies/{uid}", accept=EXPLICIT)
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        got = parts(response.getheader("Content-Type"), body)
        assert len(got) == 21
        as_stored = [b for _, b in got if b in stored]
        assert digests(as_stored) == digests(stored)
        [converted] = [b for _, b in got if b not in stored]
        assert (read(converted).pixel_array == read(jpeg).pixel_array).all()
        assert len(sends) >= 20


def blob_files(settings) -> set[str]:
    """The blob files this process holds open."""
    folder = os.path.realpath(os.path.join(settings.data_dir, "blobs"))
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(folder):
                out.add(target)
    return out


@pytest.mark.parametrize("http", [HttpToolsProtocol, "httptools"], ids=["zero-copy", "reads"])
def test_a_client_that_leaves_costs_no_error_and_no_open_file(tmp_path, caplog, http):
    uid, files = study(60)
    with serving(tmp_path, http=http) as (port, settings), caplog.at_level(logging.WARNING):
        store(port, files)
        for _ in range(3):
            with socket.socket() as s:
                s.connect(("127.0.0.1", port))
                s.sendall(request(uid))
                got = 0
                while got < 300_000:
                    got += len(s.recv(65536))
        deadline = time.monotonic() + 10
        while blob_files(settings) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert blob_files(settings) == set()
        response, body = get(port, f"/v2/studies/{uid}")
        assert response.status == 200 and len(parts(response.getheader("Content-Type"), body)) == 60
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_missing_file_fails_as_without_zero_copy(tmp_path, caplog):
    uid, files = study(40)
    with serving(tmp_path) as (port, settings):
        store(port, files)
        blobs = sorted(
            (os.path.getmtime(p), p)
            for p in (
                os.path.join(d, f)
                for d, _, names in os.walk(os.path.join(settings.data_dir, "blobs"))
                for f in names
            )
        )
        os.unlink(blobs[-1][1])  # a late part: after the response started, it is cut short
        with caplog.at_level(logging.CRITICAL):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", f"/v2/studies/{uid}", headers={"Accept": STORED})
            response = conn.getresponse()
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead):
                response.read()
            conn.close()
        os.unlink(blobs[0][1])  # the first part: the status says so
        response, body = get(port, f"/v2/studies/{uid}")
        assert response.status == 404, body
        assert get(port, "/health/check", accept="*/*")[0].status == 200


def test_bulk_data_ranges_sent_by_the_kernel(tmp_path, sends):
    with serving(tmp_path, blob_max=0) as (port, _):  # a file of its own, to send
        store(port, [CT])
        ds = read(CT)
        meta = httpx.get(
            f"http://127.0.0.1:{port}/v2/studies/{ds.StudyInstanceUID}/metadata"
        ).json()[0]
        path = "/v2/" + meta["7FE00010"]["BulkDataURI"].split("/v2/", 1)[1]
        sends.clear()
        response, body = get(port, path, accept="application/octet-stream")
        assert response.status == 200 and body == ds.PixelData
        response, body = get(port, path, accept="application/octet-stream", Range="bytes=10-19")
        assert response.status == 206 and body == ds.PixelData[10:20]
        response, body = get(port, path, accept="*/*", Range="bytes=-5")
        assert response.status == 206
        assert int(response.getheader("Content-Length")) == len(body)
        assert [b for _, b in parts(response.getheader("Content-Type"), body)] == [
            ds.PixelData[-5:]
        ]
        assert len(sends) == 3


def test_bytes_sent_by_the_kernel_are_audited(tmp_path):
    uid, files = study(20)
    with serving(tmp_path) as (port, _):
        store(port, files)
        response, body = get(port, f"/v2/studies/{uid}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entries = httpx.get(f"http://127.0.0.1:{port}/v2/audit", params={"limit": 100}).json()
            mine = [e for e in entries if e["method"] == "GET" and e["path"].endswith(uid)]
            if mine:
                break
            time.sleep(0.1)
        assert mine and mine[0]["bytesOut"] == len(body)


def test_tls_goes_without_zero_copy(tmp_path, sends):
    from tests.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    uid, files = study(12)
    with (
        serving(tmp_path, ssl_certfile=cert, ssl_keyfile=key) as (port, _),
        httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False, timeout=60) as client,
    ):
        r = client.post(
            "/v2/studies", content=multipart(*files), headers={"Content-Type": MULTIPART}
        )
        assert r.status_code == 200, r.text
        r = client.get(f"/v2/studies/{uid}", headers={"Accept": STORED})
        assert r.status_code == 200
        assert digests(b for _, b in parts(r.headers["content-type"], r.content)) == digests(files)
    assert sends == []


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_kernel_sends_wait_for_what_the_transport_still_holds(tmp_path, sends, loop, framing):
    """Body messages the socket could not take yet stay in the transport's buffer: a file sent
    after them must wait for them, or the bytes would arrive out of order."""
    rng = np.random.default_rng(1)
    pieces = [rng.bytes(n) for n in (16_000_000, 700_000, 5, 2_000_000, 1)]
    path = tmp_path / "file"
    path.write_bytes(pieces[1] + pieces[3])
    whole = b"".join(pieces)
    extension = []

    async def app(scope, receive, send):
        extension.append("http.response.zerocopysend" in scope.get("extensions", {}))
        headers = [(b"content-length", str(len(whole)).encode())] if framing == "length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(path, "rb") as f:
            for n, piece in enumerate(pieces):
                if n in (1, 3):  # from the file
                    message = {"file": f, "offset": 0 if n == 1 else len(pieces[1])}
                    await send(
                        {
                            "type": "http.response.zerocopysend",
                            **message,
                            "count": len(piece),
                            "more_body": True,
                        }
                    )
                else:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serving_app(app, loop) as port, socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the server writes until the socket is full; its transport holds the rest
        raw = b""
        while True:
            chunk = s.recv(65536)
            raw += chunk
            if not chunk or raw.endswith(b"0\r\n\r\n" if framing == "chunked" else whole[-50:]):
                break
    head, body = raw.split(b"\r\n\r\n", 1)
    if framing == "chunked":
        assert b"transfer-encoding: chunked" in head.lower()
        body = _unchunk(body)
    assert extension == [True] and len(sends) >= 2
    assert len(body) == len(whole) and body == whole


def _unchunk(body: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return out
        out += body[end + 2 : end + 2 + size]
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


def _first_recv(port: int, request: bytes) -> bytes:
    with socket.socket() as s:
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        return s.recv(65536)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_head_leaves_with_the_body(loop):
    """The response head waits for the body and leaves in the same write (one packet, one wake-up
    of the client), even when the app takes its time between the two."""

    async def app(scope, receive, send):
        headers = [(b"content-length", b"8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.3)  # uvicorn alone would have written the head by now
        await send({"type": "http.response.body", "body": b"the body", "more_body": False})

    with serving_app(app, loop) as port:
        first = _first_recv(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\nthe body")


def test_a_100_continue_is_not_held():
    """The interim response to ``Expect: 100-continue`` goes out before the response starts (the
    client waits for it to send its body)."""

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[::-1], "more_body": False})

    with serving_app(app) as port, socket.socket() as s:
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        raw = b""
        while not raw.endswith(b"olleh"):
            chunk = s.recv(65536)
            assert chunk
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200")


def test_a_500_says_the_connection_closes(tmp_path, caplog):
    """An unexpected error: the ASGI server closes the connection after the 500, and the answer
    says so (Connection: close), so a pooled client does not send its next request into a
    reset."""
    settings = Settings(data_dir=str(tmp_path / "data"))
    app = create_app(settings, build_archive(settings))

    async def boom(request):
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/boom", boom))
    with caplog.at_level(logging.CRITICAL), serving_app(app) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/boom")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 500 and b"a bug" not in body
        assert response.getheader("connection") == "close"
        assert response.getheader("content-type") == "application/problem+json"
        conn.close()
