"""Authentication against a local OpenID Connect issuer (keys made here, discovery document and
JWKS served on a local port): every route x every kind of bad token is 401; a good token passes;
keys rotate; the clock skew holds; serve will not expose an unauthenticated archive."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.routing import Route
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import ROOT, free_port

AUDIENCE = "dicomhub-api"


class Issuer:
    """A local OpenID Connect issuer: its keys, its discovery document and JWKS over HTTP."""

    def __init__(self):
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.published = ["k1"]
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks.json"}
                elif self.path == "/jwks.json":
                    body = {"keys": [issuer.jwk(kid) for kid in issuer.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwk(self, kid: str) -> dict:
        key = self.keys[kid].public_key()
        algorithm = (
            jwt.algorithms.ECAlgorithm
            if isinstance(key, ec.EllipticCurvePublicKey)
            else (jwt.algorithms.RSAAlgorithm)
        )
        return {**json.loads(algorithm.to_jwk(key)), "kid": kid, "use": "sig"}

    def token(self, kid: str = "k1", key=None, algorithm: str | None = None, **claims) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signing = key if key is not None else self.keys[kid]
        if algorithm is None:
            algorithm = "ES256" if isinstance(signing, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(payload, signing, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


@pytest.fixture(scope="module")
def client(issuer, tmp_path_factory):
    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("auth")),
        blob_url="memory://",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
    )
    with TestClient(create_app(settings, build_archive(settings))) as c:
        yield c


def bad_tokens(issuer: Issuer) -> dict[str, str | None]:
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    unsigned = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "exp": now + 600}, None, "none")
    return {
        "no token": None,
        "not a bearer token": "Basic YWxpY2U6c2VjcmV0",
        "malformed": "Bearer not.a.jwt",
        "wrong issuer": "Bearer " + issuer.token(iss="https://evil.example.com"),
        "wrong audience": "Bearer " + issuer.token(aud="someone-else"),
        "no audience": "Bearer " + issuer.token(aud=None),
        "expired": "Bearer " + issuer.token(exp=now - 3600),
        "not yet valid": "Bearer " + issuer.token(nbf=now + 3600),
        "no expiry": "Bearer " + issuer.token(exp=None),
        "bad signature": "Bearer " + issuer.token(key=stranger),
        "unknown key": "Bearer " + issuer.token(kid="k9", key=stranger),
        "alg none": "Bearer " + unsigned,
        "HS256 with the public key as secret": "Bearer " + _hs256(issuer, public_pem, now),
    }


def _hs256(issuer: Issuer, secret: bytes, now: int) -> str:
    """A token signed with HMAC, the issuer's public key as the secret (algorithm confusion)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "exp": now + 600}).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the app."""
    values = {
        "study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", "frames": "1",
        "path": "7FE00010", "tag": "00101010", "operation": "0" * 32,
    }  # fmt: skip
    out = []
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], route.path)
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                out.append((method, path))
    return out


def test_every_route_refuses_every_bad_token(client, issuer):
    routes = every_route(client.app)
    assert len(routes) > 60
    for kind, header in bad_tokens(issuer).items():
        headers = {"Authorization": header} if header else {}
        for method, path in routes:
            r = client.request(method, path, headers=headers)
            if path == "/health/check":
                assert r.status_code == 200
                continue
            assert r.status_code == 401, (kind, method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith('Bearer realm="dicomhub"')
            assert r.json()["status"] == 401
            assert ('error="invalid_token"' in r.headers["www-authenticate"]) == (
                kind not in ("no token", "not a bearer token")
            )


def test_a_good_token_passes_every_route(client, issuer):
    headers = {"Authorization": "Bearer " + issuer.token()}
    for method, path in every_route(client.app):
        r = client.request(method, path, headers=headers)
        assert r.status_code != 401, (method, path, r.text)
    assert client.get("/v2/studies", headers=headers).status_code == 200


def test_clock_skew(client, issuer):
    now = int(time.time())
    recent = issuer.token(exp=now - 30)  # within the 60 s leeway
    assert (
        client.get("/v2/studies", headers={"Authorization": f"Bearer {recent}"}).status_code == 200
    )
    soon = issuer.token(nbf=now + 30)
    assert client.get("/v2/studies", headers={"Authorization": f"Bearer {soon}"}).status_code == 200
    late = issuer.token(exp=now - 120)
    assert client.get("/v2/studies", headers={"Authorization": f"Bearer {late}"}).status_code == 401


def test_keys_rotate(issuer, tmp_path):
    """A token signed with a key the cached JWKS lacks makes the validator fetch the keys again,
    at most once per auth_key_refresh seconds."""
    settings = Settings(
        data_dir=str(tmp_path), blob_url="memory://", auth_issuer=issuer.url,
        auth_audience=AUDIENCE, auth_key_refresh=0.5,
    )  # fmt: skip
    with TestClient(create_app(settings, build_archive(settings))) as client:
        first = {"Authorization": "Bearer " + issuer.token()}
        assert client.get("/v2/studies", headers=first).status_code == 200
        issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
        issuer.published = ["k1", "k2"]  # a new key published, then used
        second = {"Authorization": "Bearer " + issuer.token(kid="k2")}
        assert client.get("/v2/studies", headers=second).status_code == 401  # too soon
        time.sleep(0.6)
        assert client.get("/v2/studies", headers=second).status_code == 200
    issuer.published = ["k1"]


def test_settings_refuse_symmetric_algorithms(tmp_path, issuer):
    for algorithms in ("HS256", "RS256,none", ""):
        settings = Settings(
            data_dir=str(tmp_path), auth_issuer=issuer.url, auth_audience=AUDIENCE,
            auth_algorithms=algorithms,
        )  # fmt: skip
        with pytest.raises(ValueError):
            create_app(settings, build_archive(settings))
    settings = Settings(data_dir=str(tmp_path), auth_issuer=issuer.url)
    with pytest.raises(ValueError, match="auth_audience"):
        create_app(settings, build_archive(settings))


def test_serve_refuses_to_expose_an_unauthenticated_archive(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "dicomhub", "serve", "--host", "0.0.0.0", "--port", str(port),
               "--data-dir", str(tmp_path)]  # fmt: skip
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "without authentication" in refused.stderr
    allowed = subprocess.Popen(
        [*command, "--allow-unauthenticated", "true"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/check").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert allowed.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        allowed.terminate()
        _, err = allowed.communicate(timeout=10)
    assert "WITHOUT authentication" in err
