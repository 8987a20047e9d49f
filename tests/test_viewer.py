"""``serve --viewer``, in-process on a small stand-in build: which paths it serves and how
(media types, caching, SPA fallback), what it never serves (paths outside the build, folders,
API routes), the generated app-config.js, and its files staying public when the API needs a
token. OHIF itself, in a browser: test_e2e_ohif."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from dicomhub.web.viewer import NotAViewerBuild, Viewer, app_config
from tests.conftest import ROOT, free_port

INDEX = b"<!doctype html><script src='/app-config.js'></script>"
BUNDLE = "app.bundle.0f6159c501addfe9.js"


@pytest.fixture
def build(tmp_path):
    """A stand-in for OHIF's dist folder, beside a secret it must never serve."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(INDEX)
    (dist / BUNDLE).write_text("console.log('app')")
    (dist / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "app.bundle.css").write_text("body{}")
    (dist / "assets" / "favicon.ico").write_bytes(b"ico")
    (dist / "app-config.js").write_text("window.config = {'theirs': 1}")
    (dist / "sw.js").write_text("self.addEventListener('fetch', () => {})")
    (dist / "health").mkdir()
    (dist / "health" / "check").write_text("not the health check")
    (tmp_path / "secret.txt").write_text("the s3cret bytes")
    (dist / "assets" / "link.txt").symlink_to(tmp_path / "secret.txt")
    return dist


def viewer_client(tmp_path, build, **settings) -> TestClient:
    s = Settings(data_dir=str(tmp_path / "data"), viewer=str(build), **settings)
    return TestClient(create_app(s, build_archive(s)))


def test_the_build_is_served_at_the_paths_webpack_asks_for(tmp_path, build):
    with viewer_client(tmp_path, build) as client:
        r = client.get("/" + BUNDLE)
        assert r.status_code == 200 and r.text == "console.log('app')"
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        r = client.get("/0ddf166f7a343eda.wasm")
        assert r.headers["content-type"] == "application/wasm"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        r = client.get("/app.bundle.css")  # no hash in its name: not kept by browsers
        assert r.headers["content-type"].startswith("text/css")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["etag"] == '"' + hashlib.sha1(b"body{}").hexdigest() + '"'
        assert client.get("/assets/favicon.ico").content == b"ico"
        head = client.head("/" + BUNDLE)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len("console.log('app')"))


@pytest.mark.parametrize("path", ["/viewer", "/app-config.js", "/app.bundle.css"])
def test_revalidation_is_answered_not_modified(tmp_path, build, path):
    """npm packs every file with one time (1985): the tag is the content's, and a browser's
    current copy gets 304, a changed file (of the same size, same time) 200."""
    with viewer_client(tmp_path, build) as client:
        tag = client.get(path).headers["etag"]
        r = client.get(path, headers={"If-None-Match": f'"other", {tag}'})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    (build / "app.bundle.css").write_text("body{")
    (build / "index.html").write_bytes(INDEX.replace(b"doctype", b"DOCTYPE"))
    for file in ("app.bundle.css", "index.html"):
        os.utime(build / file, (499162800, 499162800))
    with viewer_client(tmp_path, build, public_url="http://elsewhere") as client:
        assert client.get(path, headers={"If-None-Match": tag}).status_code == 200


@pytest.mark.parametrize("path", ["/viewer", "/viewer/", "/viewer/viewer", "/viewer/a/b/c"])
def test_ohif_routes_fall_back_to_its_index_page(tmp_path, build, path):
    with viewer_client(tmp_path, build) as client:
        r = client.get(path, params={"StudyInstanceUIDs": "1.2.3"})
        assert r.status_code == 200 and r.content == INDEX
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-cache"


def test_app_config_is_made_for_this_server(tmp_path, build):
    with viewer_client(tmp_path, build) as client:
        r = client.get("/app-config.js")
        assert r.status_code == 200 and "theirs" not in r.text
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.headers["cache-control"] == "no-cache"
        assert "const root = window.location.origin + '/v2';" in r.text
        for setting in (
            '"routerBasename": "/viewer"',
            '"qidoRoot": root',
            '"wadoRoot": root',
            '"imageRendering": "wadors"',
            '"thumbnailRendering": "wadors"',
            '"supportsWildcard": true',
            '"defaultDataSourceName": "dicomhub"',
        ):
            assert setting in r.text
    with viewer_client(tmp_path, build, public_url="https://pacs.example.org/") as client:
        assert 'const root = "https://pacs.example.org/v2";' in client.get("/app-config.js").text


def test_app_config_runs_as_javascript(tmp_path):
    """What node makes of the generated file: OHIF's window.config, roots resolved."""
    script = tmp_path / "run.js"
    script.write_text(
        "globalThis.window = {location: {origin: 'http://h:1'}};\n"
        + app_config()
        + "console.log(JSON.stringify(window.config));"
    )
    try:
        out = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        pytest.skip("node is not installed")
    config = json.loads(out.stdout)
    source = config["dataSources"][0]
    assert source["configuration"]["qidoRoot"] == "http://h:1/v2"
    assert source["configuration"]["bulkDataURI"]["enabled"] is True
    assert config["defaultDataSourceName"] == source["sourceName"]


def test_a_config_file_of_ones_own(tmp_path, build):
    own = tmp_path / "own.js"
    own.write_text("window.config = {oidc: []};")
    with viewer_client(tmp_path, build, viewer_config=str(own)) as client:
        assert client.get("/app-config.js").text == "window.config = {oidc: []};"


@pytest.mark.parametrize(
    "path",
    [
        "/assets/link.txt",  # a link out of the build
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets",  # folders: no listing
        "/assets/",
        "/sw.js",  # a service worker would take the whole site
        "/index.html/",
        "/viewerx",
    ],
)
def test_nothing_outside_the_builds_files(tmp_path, build, path):
    with viewer_client(tmp_path, build) as client:
        r = client.get(path)
        assert r.status_code == 404, path
        assert b"s3cret" not in r.content


def test_the_web_console_keeps_the_root(tmp_path, build):
    """/ is the web console's page (web/console), not the build's index.html; with the console
    off, nothing."""
    with viewer_client(tmp_path, build) as client:
        r = client.get("/")
        assert r.status_code == 200 and 'src="console/main.js"' in r.text
        assert client.get("/console/config.json").json()["viewer"].startswith("viewer/")
    with viewer_client(tmp_path, build, console=False) as client:
        assert client.get("/").status_code == 404


def test_api_routes_come_first(tmp_path, build):
    with viewer_client(tmp_path, build) as client:
        r = client.get("/health/check")
        assert r.json()["overallStatus"] == "Healthy"
        assert client.get("/v2/studies").status_code in (200, 204)


def test_the_viewer_is_read_only(tmp_path, build):
    with viewer_client(tmp_path, build) as client:
        for method in ("POST", "PUT", "DELETE"):
            r = client.request(method, "/viewer")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        assert client.post("/" + BUNDLE).status_code == 405


def test_viewer_files_are_public_with_authentication_on(tmp_path, build):
    with viewer_client(
        tmp_path, build, auth_issuer="https://issuer.invalid", auth_audience="dicomhub"
    ) as client:
        assert client.get("/viewer").status_code == 200
        assert client.get("/app-config.js").status_code == 200
        assert client.get("/" + BUNDLE).status_code == 200
        assert client.get("/v2/studies").status_code == 401
        assert client.get("/nothing.js").status_code == 401  # not the viewer's: the API's


def test_without_a_viewer_nothing_changes(tmp_path):
    s = Settings(data_dir=str(tmp_path / "data"))
    with TestClient(create_app(s, build_archive(s))) as client:
        assert client.get("/viewer").status_code == 404
        assert client.get("/app-config.js").status_code == 404


def test_a_folder_without_index_html_is_refused(tmp_path, build):
    with pytest.raises(NotAViewerBuild, match="no index.html"):
        Viewer(str(tmp_path))
    assert set(Viewer(str(build)).files) == {
        "/index.html",
        "/" + BUNDLE,
        "/0ddf166f7a343eda.wasm",
        "/app.bundle.css",
        "/assets/favicon.ico",
        "/health/check",
    }


def test_serve_refuses_a_folder_that_is_not_a_build(tmp_path):
    env = dict(os.environ, DICOMHUB_VIEWER=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "dicomhub", "serve", "--port", str(free_port())]
        + ["--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "--viewer:" in run.stderr and "no index.html" in run.stderr


def test_raw_paths_out_of_the_build_over_a_socket(tmp_path, build):
    """What a client that does not normalise its paths gets from the real server."""
    from tests.conftest import running_server

    (tmp_path / "data").mkdir()
    with running_server(tmp_path / "data", viewer=str(build)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for target in ("/../secret.txt", "/assets/../../secret.txt", "/assets/%2e%2e/x"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:200])
            assert b"s3cret" not in answer.split(b"\r\n\r\n", 1)[1]
