"""The indexed router (web/routing.py) picks the route Starlette's ordered scan picks, for a
path made from every route of the app and for paths no route serves; only the routes that
can match are tried. Over a real server: a request in a data partition, a 405, a trailing-slash
redirect and a 404 answer as they did."""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlparse

import pytest
from starlette.routing import Match, Router

from dicomhub.web.app import routes
from dicomhub.web.routing import IndexedRouter, literal_prefix
from tests.conftest import running_server

TABLE = routes()


def _paths() -> list[str]:
    """A concrete path for every route's template, and some no route serves."""
    out = [re.sub(r"\{[^}]+\}", "1.2.840.1", r.path) for r in TABLE]
    out += [re.sub(r"\{[^}]+\}", "count", r.path) for r in TABLE if "{" in r.path]
    out += ["/", "/v2", "/v2/", "/v2/studies/", "/v9/studies", "/nowhere/at/all", "/wado/x"]
    out += ["/v2/partitions/x/studies/1/series", "/v2/studies/$bulkUpdate", "/health/check"]
    return sorted(set(out))


def _first_full(candidates, scope):
    for route in candidates:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def test_the_same_route_as_starlettes_scan():
    indexed, scan = IndexedRouter(TABLE), Router(TABLE).routes
    differ, tried_more = [], []
    for path in _paths():
        candidates = indexed.candidates(path)
        for method in ("GET", "POST", "PUT", "DELETE"):
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            if _first_full(candidates, scope) is not _first_full(scan, scope):
                differ.append((method, path))
        segments = tuple(path.split("/")[1:3])
        if candidates is not indexed.routes:  # filed: only routes whose prefix agrees
            tried_more += [
                (path, r.path)
                for r in candidates
                if segments[: len(literal_prefix(r.path))] != literal_prefix(r.path)
            ]
    assert not differ
    assert not tried_more


def test_data_paths_try_a_fraction_of_the_routes():
    indexed = IndexedRouter(TABLE)
    for path in ("/v2/studies", "/v2/studies/1/series/2/instances/3/frames/1"):
        assert len(indexed.candidates(path)) < len(TABLE) / 4
    assert [r.path for r in indexed.candidates("/wado")] == ["/wado"]


def test_literal_prefix():
    assert literal_prefix("/v2/studies/{study:uid}") == ("v2", "studies")
    assert literal_prefix("/v2/partitions/{partition}/studies") == ("v2", "partitions")
    assert literal_prefix("/wado") == ("wado",)
    assert literal_prefix("/{anything}/x") == ()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("routing"), data_partitions="true") as (url, _):
        yield urlparse(url)


def _ask(server, method: str, path: str):
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    try:
        conn.request(method, path, headers={"Accept": "application/dicom+json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_over_a_real_server(server):
    status, _, body = _ask(server, "GET", "/v2/studies")
    assert status in (200, 204), body
    status, _, body = _ask(server, "GET", "/v2/partitions/Microsoft.Default/studies")
    assert status in (200, 204), body
    status, headers, _ = _ask(server, "PUT", "/v2/studies/count")
    assert status == 405 and "GET" in headers["allow"]
    status, headers, _ = _ask(server, "GET", "/v2/studies/")
    assert status in (307, 308) and headers["location"].endswith("/v2/studies")
    status, _, _ = _ask(server, "GET", "/v2/nothing-here")
    assert status == 404
