"""HTTP details a fuzzer checks (issue 27), against a real `dicomhub serve` over a real socket:
integers from the query string are bounded (400, not 500), response headers never carry raw
input (a QIDO Warning naming an odd parameter is escaped, and the connection stays usable), and
a 405 names every method the path serves."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlparse

import pytest

from tests.conftest import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("edges")) as (url, _):
        yield urlparse(url)


def request(server, method: str, path: str, conn=None):
    conn = conn or http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    conn.request(method, path, headers={"Accept": "application/dicom+json, application/json"})
    response = conn.getresponse()
    return response, response.read(), conn


@pytest.mark.parametrize("route", ["/v2/changefeed", "/v2/audit", "/v2/extendedquerytags"])
@pytest.mark.parametrize("offset", ["9223372036854775808", "99999999999999999999", "-1"])
def test_paging_offsets_are_bounded(server, route, offset):
    response, body, _ = request(server, "GET", f"{route}?offset={offset}")
    assert response.status == 400, body
    assert response.getheader("content-type") == "application/problem+json"
    assert b"offset must be between 0 and" in body


@pytest.mark.parametrize(
    ("parameter", "shown"),
    [
        ("includefield=%1B", "includefield=?"),  # a control character
        ("%C3%A9=1", "?"),  # not Latin-1
        ("a%22b=1", 'a\\"b'),  # a quote, escaped in the quoted string
        ("a%5Cb=1", "a\\\\b"),  # a backslash, escaped
    ],
)
def test_a_warning_never_carries_raw_input(server, parameter, shown):
    response, _, conn = request(server, "GET", f"/v2/studies?{parameter}")
    assert response.status == 200
    warning = response.getheader("warning")
    assert warning.endswith(f'ignored: {shown}"'), warning
    again, _, _ = request(server, "GET", "/v2/studies", conn)  # the connection is still good
    assert again.status == 200
    conn.close()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v2/studies", "GET, HEAD, POST, PUT"),
        ("PATCH", "/v2/studies/1.2.3", "DELETE, GET, HEAD, POST, PUT"),
        ("POST", "/v2/studies/1.2.3/series/4.5", "DELETE, GET, HEAD"),
        ("PUT", "/v2/extendedquerytags/PatientAge", "DELETE, GET, HEAD, PATCH"),
    ],
)
def test_a_405_names_every_method_of_the_path(server, method, path, allowed):
    response, body, _ = request(server, method, path)
    assert response.status == 405, body
    assert response.getheader("allow") == allowed


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory):
    data = tmp_path_factory.mktemp("limits")
    with running_server(data, max_part_size="1000", request_timeout="1") as (url, _):
        yield urlparse(url)


@pytest.mark.parametrize(
    ("path", "content_type", "declared"),
    [
        ("/v2/studies", "application/dicom", 3 * 2**30),  # a single file over max_part_size
        ("/v2/extendedquerytags", "application/json", 2 * 2**20),  # JSON over 1 MiB
    ],
)
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    small_limits, path, content_type, declared
):
    """The answer comes at once, without the body (none is sent here), and closes the
    connection (its body would otherwise follow)."""
    conn = http.client.HTTPConnection(small_limits.hostname, small_limits.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(declared))
    conn.putheader("Accept", "application/dicom+json, application/json")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    assert response.status == 413, body
    assert response.getheader("content-type") == "application/problem+json"
    assert response.getheader("connection") == "close"
    assert str(declared).encode() in body
    conn.close()


def test_a_stalled_body_gets_408_and_the_connection_ends(small_limits):
    """The rest of the body never came: the answer says the connection closes, and it does."""
    with socket.create_connection((small_limits.hostname, small_limits.port), timeout=30) as s:
        s.sendall(
            b"POST /v2/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
            b"Content-Length: 900\r\nAccept: application/dicom+json\r\n\r\nDICM"
        )
        answer = b""
        while chunk := s.recv(65536):  # ends when the server closes
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 408") and b"connection: close" in head


@pytest.mark.parametrize(
    "path",
    [
        "/v2/studies",
        "/v2/studies/1.2.3/metadata",
        "/v2/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        "/v2/studies/1.2.3/series/4.5/instances/6.7/rendered",
        "/v2/studies/1.2.3/thumbnail",
        "/v2/studies/1.2.3/series/4.5/instances/6.7/bulkdata/7FE00010",
    ],
)
def test_deidentify_is_refused_where_it_is_not_done(server, path):
    """De-identification is done on ZIP downloads: elsewhere the parameter is a 400, never
    ignored (the answer would carry what the client asked to have removed)."""
    for query in ("DeIdentify=true", "%64eidentify=true"):  # any case, or %-escaped
        response, body, _ = request(server, "GET", f"{path}?{query}")
        assert response.status == 400, body
        assert b"ZIP download only" in body
    response, _, _ = request(server, "GET", f"{path}?deidentify=false")
    assert response.status in (200, 404, 406)  # as without it (nothing stored; my Accept)
