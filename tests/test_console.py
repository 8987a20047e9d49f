"""The web console's files (web/console): served at / and /console/, public like the viewer's,
read only, cached by ETag, gzip when asked; its configuration says what the page needs
(authentication, the viewer); the dictionary names tags. The console in a browser:
test_e2e_console.py."""

from __future__ import annotations

import gzip
import json

import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from dicomhub.web.console import config, dictionary
from tests.issuer import AUDIENCE, Issuer


def _client(tmp_path, **overrides) -> TestClient:
    s = Settings(data_dir=str(tmp_path / "data"), blob_url="memory://", **overrides)
    return TestClient(create_app(s, build_archive(s)))


def test_the_page_and_its_files(tmp_path):
    with _client(tmp_path) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert 'src="console/main.js"' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        for name, media in (
            ("main.js", "text/javascript"),
            ("studies.js", "text/javascript"),
            ("console.css", "text/css"),
            ("config.json", "application/json"),
            ("dictionary.json", "application/json"),
        ):
            r = client.get(f"/console/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"].startswith(media), name
            assert r.headers["cache-control"] == "no-cache"
            again = client.get(f"/console/{name}", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        assert client.head("/console/main.js").status_code == 200


def test_every_module_the_page_imports_is_served(tmp_path):
    import re

    with _client(tmp_path) as client:
        seen, todo = set(), ["main.js"]
        while todo:
            name = todo.pop()
            seen.add(name)
            r = client.get(f"/console/{name}")
            assert r.status_code == 200, name
            for found in re.findall(r"""(?:from|import\()\s*['"]\./([\w.]+)['"]""", r.text):
                if found not in seen:
                    todo.append(found)
        assert {"studies.js", "study.js", "api.js", "ui.js"} <= seen


def test_gzip_when_asked(tmp_path):
    with _client(tmp_path) as client:
        r = client.get("/console/dictionary.json", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        raw = client.get("/console/dictionary.json", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers
        assert json.loads(raw.content) == r.json() == dictionary()
        assert len(gzip.compress(raw.content)) < len(raw.content)


def test_bad_requests_get_a_clear_4xx(tmp_path):
    with _client(tmp_path) as client:
        for path in ("/console/", "/console/nothing.js", "/console/../web/app.py", "/console/%00"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = client.request(method, "/")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = client.get("/console/main.js", headers={"If-None-Match": "\x7f" * 300})
        assert r.status_code == 200
        # the API and the other unversioned routes stay as they were
        assert client.get("/health/check").status_code == 200
        assert client.get("/v2/studies").status_code == 200
        assert client.get("/nothing").status_code == 404


def test_the_dictionary_names_tags():
    d = dictionary()
    assert d["00100010"] == ["PN", "PatientName"]
    assert d["7FE00010"][1] == "PixelData"
    assert d["0020000D"] == ["UI", "StudyInstanceUID"]


def test_configuration(tmp_path):
    with _client(tmp_path) as client:
        doc = client.get("/console/config.json").json()
        assert doc == config(False) and doc["api"] == "v2/" and doc["auth"] is None
        assert doc["viewer"] is None
    ohif = tmp_path / "ohif"
    ohif.mkdir()
    (ohif / "index.html").write_text("<html></html>")
    with _client(tmp_path, viewer=str(ohif)) as client:
        doc = client.get("/console/config.json").json()
        assert doc["viewer"] == "viewer/viewer?StudyInstanceUIDs="
        assert client.get("/").text.startswith("<!doctype html>")  # the console's, not OHIF's
        assert client.get("/viewer").text == "<html></html>"


def test_console_off(tmp_path):
    with _client(tmp_path, console=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/console/main.js").status_code == 404


@pytest.fixture(scope="module")
def issuer():
    found = Issuer()
    yield found
    found.server.shutdown()


def test_public_with_authentication_on(tmp_path, issuer):
    """The page loads without a token (it must load to sign in); its configuration names the
    issuer and what each role grants; the API still needs a token."""
    with _client(
        tmp_path, auth_issuer=issuer.url, auth_audience=AUDIENCE, console_client_id="console"
    ) as client:
        assert client.get("/").status_code == 200
        assert issuer.url.split("//")[1] in client.get("/").headers["content-security-policy"]
        doc = client.get("/console/config.json").json()
        assert doc["auth"]["issuer"] == issuer.url and doc["auth"]["clientId"] == "console"
        assert doc["auth"]["audience"] == AUDIENCE and doc["auth"]["rolesClaim"] == "roles"
        assert doc["auth"]["scopes"] == "openid"
        assert doc["auth"]["roles"]["globalReader"] == ["read"]
        assert "delete" in doc["auth"]["roles"]["globalAdmin"]
        assert client.get("/v2/studies").status_code == 401
        token = issuer.token(roles=["globalReader"])
        r = client.get("/v2/studies", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
