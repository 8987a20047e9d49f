"""Authentication against a local OpenID Connect issuer (keys made here, discovery document and
JWKS served on a local port): every route x every kind of bad token is 401; a good token passes;
keys rotate; the clock skew holds; serve will not expose an unauthenticated archive."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.routing import Route
from starlette.testclient import TestClient, WebSocketDenialResponse

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import ROOT, free_port
from tests.helpers import stow
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance, uid


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
        event_stream_seconds=0.1,  # the live stream's answer ends at once
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
        "study": "1.2.3",
        "series": "1.2.3.4",
        "sop": "1.2.3.4.5",
        "frames": "1",
        "path": "7FE00010",
        "tag": "00101010",
        "operation": "0" * 32,
        "workitem": "1.2.3.6",
        "aetitle": "WATCHER",
        "partition": "clinic-a",
        "id": "0" * 32,
        "event": "1",
    }
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


ROLES = {  # the built-in roles, as a caller holds them
    "reader": {"globalReader"},
    "writer": {"globalWriter"},
    "deleter": {"globalDeleter"},
    "admin": {"globalAdmin"},
    "reader and deleter": {"globalReader", "globalDeleter"},
    "no role": set(),
    "unknown role": {"superuser"},
}
GRANTS = {  # what the docs promise each built-in role
    "globalReader": {"read"},
    "globalWriter": {"read", "write"},
    "globalDeleter": {"read", "delete"},
    "globalAdmin": {"read", "write", "delete", "manageExtendedQueryTags", "export", "admin"},
}


def needed_action(method: str, path: str) -> str | None:
    """The data action a request needs, as conformance section 7.2 documents it."""
    if path == "/health/check":
        return None
    if path == "/metrics" or re.match(r"/v\d/(audit|fhir/|deleted/\$purge|subscriptions)", path):
        return "admin"
    if "/extendedquerytags" in path and method != "GET":
        return "manageExtendedQueryTags"
    if re.match(r"/v\d/(partitions/[^/]+/)?export$", path):
        return "export"
    if "/workitems/" in path and "/subscribers/" in path:  # unsubscribing (DELETE) is a write
        return "write"
    return {"POST": "write", "PUT": "write", "DELETE": "delete"}.get(method, "read")


def test_each_role_reaches_exactly_the_routes_of_its_actions(client, issuer):
    """The authorisation matrix: every route x every role column; 403 without the action,
    anything but 401 and 403 with it."""
    for column, roles in ROLES.items():
        granted = set().union(*(GRANTS.get(r, set()) for r in roles))
        headers = {"Authorization": "Bearer " + issuer.token(roles=sorted(roles))}
        for method, path in every_route(client.app):
            r = client.request(method, path, headers=headers)
            action = needed_action(method, path)
            if action is None or action in granted:
                assert r.status_code not in (401, 403), (column, method, path, r.text)
            else:
                assert r.status_code == 403, (column, method, path, r.status_code, r.text)
                assert action in r.json()["detail"]
    reader = {"Authorization": "Bearer " + issuer.token(roles=["globalReader"])}
    assert client.get("/v2/studies", headers=reader).status_code == 200


def test_the_event_channel_needs_a_token_and_the_read_action(client, issuer):
    """The UPS event channel (a WebSocket) is authenticated like every route: refused before
    the handshake completes without a valid token or without the read data action."""
    for kind, header in [*bad_tokens(issuer).items(), ("no role", None)]:
        if kind == "no role":
            header = "Bearer " + issuer.token(roles=[])
        headers = {"Authorization": header} if header else {}
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect("/v2/subscribers/WATCHER", headers=headers):
                pass
        expected = 403 if kind == "no role" else 401
        assert refused.value.status_code == expected, kind
        assert refused.value.headers["content-type"] == "application/problem+json"
        if expected == 401:
            assert refused.value.headers["www-authenticate"].startswith("Bearer"), kind
    reader = {"Authorization": "Bearer " + issuer.token(roles=["globalReader"])}
    with client.websocket_connect("/v2/subscribers/WATCHER", headers=reader) as ws:
        ws.close()


def test_a_refused_store_or_delete_changes_nothing(client, issuer):
    data = instance(uid(90, 1), uid(90, 2), uid(90, 3))
    reader = {"Authorization": "Bearer " + issuer.token(roles=["globalReader"])}
    writer = {"Authorization": "Bearer " + issuer.token(roles=["globalWriter"])}
    assert stow(client, data, headers=reader).status_code == 403
    study = f"/v2/studies/{uid(90, 1)}"
    assert client.get(study + "/metadata", headers=reader).status_code == 404
    assert stow(client, data, headers=writer).status_code == 200
    assert client.delete(study, headers=writer).status_code == 403
    assert client.get(study + "/metadata", headers=reader).status_code == 200


def test_a_role_file_with_another_claim(issuer, tmp_path):
    """Keycloak-style nested roles claim; notDataActions take away what dataActions grant."""
    roles = tmp_path / "roles.json"
    roles.write_text(
        json.dumps(
            {
                "roles": [
                    {
                        "name": "radiologist",
                        "dataActions": ["*"],
                        "notDataActions": ["delete", "admin"],
                        "scopes": ["/"],
                    },
                    {
                        "name": "auditor",
                        "dataActions": ["admin"],
                        "notDataActions": [],
                        "scopes": ["/"],
                    },
                ]
            }
        )
    )
    settings = Settings(
        data_dir=str(tmp_path),
        blob_url="memory://",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_claim="realm_access.roles",
        auth_roles_file=str(roles),
    )
    with TestClient(create_app(settings, build_archive(settings))) as c:

        def status(method, path, *names, claim="realm_access"):
            token = issuer.token(**{claim: {"roles": list(names)}})
            return c.request(method, path, headers={"Authorization": f"Bearer {token}"}).status_code

        assert status("GET", "/v2/studies", "radiologist") == 200
        assert status("DELETE", "/v2/studies/1.2.3", "radiologist") == 403
        assert status("GET", "/v2/audit", "radiologist") == 403
        assert status("GET", "/v2/audit", "auditor") == 200
        assert status("GET", "/v2/studies", "auditor") == 403
        assert status("DELETE", "/v2/studies/1.2.3", "radiologist", "globalAdmin") == 403
        assert status("GET", "/v2/studies", "radiologist", claim="roles") == 403
    # a space-separated string claim (OAuth2 scope style)
    settings = Settings(
        data_dir=str(tmp_path),
        blob_url="memory://",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_claim="scp",
        auth_roles_file=str(roles),
    )
    with TestClient(create_app(settings, build_archive(settings))) as c:
        token = issuer.token(scp="openid radiologist")
        r = c.get("/v2/studies", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200


@pytest.mark.parametrize(
    "document, error",
    [
        ([], "roles"),
        ({"roles": [{"dataActions": ["read"]}]}, "no name"),
        ({"roles": [{"name": "a", "dataActions": ["read", "fly"]}]}, "fly"),
        ({"roles": [{"name": "a", "dataActions": "read"}]}, "list"),
        ({"roles": [{"name": "a", "dataActions": ["read"], "scopes": ["/x"]}]}, "scope"),
        ({"roles": [{"name": "a", "dataActions": []}, {"name": "a", "dataActions": []}]}, "twice"),
    ],
)
def test_a_bad_role_file_stops_the_start(issuer, tmp_path, document, error):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps(document))
    settings = Settings(
        data_dir=str(tmp_path),
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_file=str(roles),
    )
    with pytest.raises(ValueError, match=error):
        create_app(settings, build_archive(settings))


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
        data_dir=str(tmp_path),
        blob_url="memory://",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_key_refresh=3,
    )
    with TestClient(create_app(settings, build_archive(settings))) as client:
        first = {"Authorization": "Bearer " + issuer.token()}
        assert client.get("/v2/studies", headers=first).status_code == 200
        issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
        issuer.published = ["k1", "k2"]  # a new key published, then used
        second = {"Authorization": "Bearer " + issuer.token(kid="k2")}
        started = time.monotonic()
        assert client.get("/v2/studies", headers=second).status_code == 401  # too soon
        # PyJWT's key cache keeps its own time: wait for the condition, not a fixed while
        while client.get("/v2/studies", headers=second).status_code != 200:
            assert time.monotonic() - started < 10, "the keys were never fetched again"
            time.sleep(0.1)
        assert time.monotonic() - started >= 3 * 0.9  # not before auth_key_refresh
    issuer.published = ["k1"]


def test_settings_refuse_symmetric_algorithms(tmp_path, issuer):
    for algorithms in ("HS256", "RS256,none", ""):
        settings = Settings(
            data_dir=str(tmp_path),
            auth_issuer=issuer.url,
            auth_audience=AUDIENCE,
            auth_algorithms=algorithms,
        )
        with pytest.raises(ValueError):
            create_app(settings, build_archive(settings))
    settings = Settings(data_dir=str(tmp_path), auth_issuer=issuer.url)
    with pytest.raises(ValueError, match="auth_audience"):
        create_app(settings, build_archive(settings))


def test_serve_refuses_to_expose_an_unauthenticated_archive(tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "dicomhub",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
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


def test_refused_event_channel_handshakes_are_audited(issuer, tmp_path):
    """A real server and the `websockets` client: each refused handshake (no token, a bad
    one, no read action, a malformed AE title) is answered with its status and request id and
    leaves exactly one audit entry; an accepted channel leaves exactly one too."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.conftest import running_server

    def token(*roles: str, sub: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issuer.token(roles=list(roles), sub=sub)}

    cases = [  # AE title, headers, status, principal
        ("NOTOKEN", {}, 401, None),
        ("BADTOKEN", {"Authorization": "Bearer " + issuer.token(aud="someone-else")}, 401, None),
        ("NOROLE", token(sub="nobody"), 403, "nobody"),
        ("A" * 17, token("globalReader", sub="reader"), 400, "reader"),
    ]
    env = {"auth_issuer": issuer.url, "auth_audience": AUDIENCE}
    with running_server(tmp_path, **env) as (url, _):
        base = url.replace("http", "ws", 1) + "/v2/subscribers/"
        for n, (title, headers, status, _) in enumerate(cases):
            rid = f"ws-refused-{n}"
            with pytest.raises(InvalidStatus) as refused:
                with connect(base + title, additional_headers={**headers, "X-Request-Id": rid}):
                    pass
            assert refused.value.response.status_code == status, title
            assert refused.value.response.headers["x-request-id"] == rid
        with connect(
            base + "OPENED",
            additional_headers={**token("globalReader", sub="reader"), "X-Request-Id": "ws-ok"},
        ) as ws:
            assert ws.response.headers["x-request-id"] == "ws-ok"
        admin = token("globalAdmin", sub="root")
        wanted = {f"ws-refused-{n}" for n in range(len(cases))} | {"ws-ok"}
        entries: list[dict] = []
        for _ in range(300):  # written in batches
            found = httpx.get(f"{url}/v2/audit", headers=admin, params={"limit": 1000}).json()
            entries = [e for e in found if e["requestId"] in wanted]
            if {e["requestId"] for e in entries} == wanted:
                break
            time.sleep(0.1)
        time.sleep(1.5)  # a second entry for one handshake would have come by now
        found = httpx.get(f"{url}/v2/audit", headers=admin, params={"limit": 1000}).json()
        entries = [e for e in found if e["requestId"] in wanted]
    assert sorted(e["requestId"] for e in entries) == sorted(wanted)  # one entry each
    by_id = {e["requestId"]: e for e in entries}
    for n, (title, _, status, principal) in enumerate(cases):
        entry = by_id[f"ws-refused-{n}"]
        assert (entry["status"], entry["principal"], entry["route"]) == (
            status,
            principal,
            "v2-events",
        ), title
        assert entry["action"] == "read" and entry["detail"]["subscriber"] == title[:64]
    opened = by_id["ws-ok"]
    assert (opened["status"], opened["principal"]) == (101, "reader")
