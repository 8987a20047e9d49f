"""What the app checks before routing: CORS for browser viewers (off by default; named origins
or *; credentials only when asked for, never with *) and the URL length limit."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app

VIEWER = "https://viewer.example.org"
PREFLIGHT = {
    "Origin": VIEWER,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization, accept, if-none-match",
}


def client(tmp_path, **cors) -> TestClient:
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://", **cors)
    return TestClient(create_app(settings, build_archive(settings)))


def test_off_by_default(tmp_path):
    with client(tmp_path) as c:
        r = c.get("/v2/studies", headers={"Origin": VIEWER})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert (
            "access-control-allow-origin" not in c.options("/v2/studies", headers=PREFLIGHT).headers
        )


def test_named_origins(tmp_path):
    with client(tmp_path, cors_origins=f"{VIEWER}/, https://other.example.org") as c:
        r = c.options("/v2/studies", headers=PREFLIGHT)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == VIEWER
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert r.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in r.headers
        r = c.get("/v2/studies", headers={"Origin": VIEWER})
        assert r.headers["access-control-allow-origin"] == VIEWER
        exposed = r.headers["access-control-expose-headers"].lower()
        assert "etag" in exposed and "warning" in exposed and "x-request-id" in exposed
        # another origin gets no permission
        stranger = dict(PREFLIGHT, Origin="https://evil.example.com")
        assert c.options("/v2/studies", headers=stranger).status_code == 400
        r = c.get("/v2/studies", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers


def test_credentials_only_when_asked_and_never_with_any_origin(tmp_path):
    with client(tmp_path, cors_origins=VIEWER, cors_allow_credentials=True) as c:
        r = c.get("/v2/studies", headers={"Origin": VIEWER})
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-origin"] == VIEWER
    with client(tmp_path, cors_origins="*") as c:
        r = c.get("/v2/studies", headers={"Origin": VIEWER})
        assert r.headers["access-control-allow-origin"] == "*"
    with pytest.raises(ValueError, match="name the origins"):
        client(tmp_path, cors_origins="*", cors_allow_credentials=True)


def test_overlong_urls_are_414(tmp_path):
    """A search with a huge query string (or a huge path) is refused before any work."""
    with client(tmp_path, max_url_length=2048) as c:
        names = ",".join(f"NAME{n}" for n in range(400))
        r = c.get(f"/v2/studies?PatientName={names}")
        assert r.status_code == 414 and r.json()["status"] == 414
        assert "2048" in r.json()["detail"]
        assert c.get("/v2/studies/" + "1." * 1500 + "1").status_code == 414
        assert (
            c.get("/v2/studies?PatientName=" + ",".join(f"N{n}" for n in range(50))).status_code
            == 200
        )
