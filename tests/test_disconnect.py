"""A client that goes away mid-upload leaves nothing behind and no server error."""

from __future__ import annotations

import socket

import httpx

from tests.conftest import running_server
from tests.dicomfiles import load
from tests.helpers import BOUNDARY, MULTIPART, multipart

CT = load("CT_small.dcm")


def test_cut_off_upload(tmp_path):
    body = multipart(CT)
    with running_server(tmp_path) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            head = (
                f"POST /v2/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            s.sendall(head.encode() + body[: len(body) // 2])
        # the server is fine, stored nothing, and cleaned its spool
        assert httpx.get(url + "/health/check").status_code == 200
        assert httpx.get(url + "/v2/changefeed/latest").json() is None
        assert list((tmp_path / "spool").glob("*")) == []
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log and BOUNDARY not in log
