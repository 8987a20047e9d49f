"""A local OpenID Connect issuer for the tests: keys made here, discovery document and JWKS
served on a local port, tokens signed on demand (roles: globalAdmin unless told). For browser
sign-in (the web console) it also has an authorization endpoint that signs in at once (as
``login`` says, no page) and a token endpoint that trades the code for an access token,
checking PKCE (RFC 7636, S256) as a real issuer does; both answer CORS for any origin."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "dicomhub-api"


class Issuer:
    """A local OpenID Connect issuer: its keys, its discovery document and JWKS over HTTP."""

    def __init__(self):
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.published = ["k1"]
        self.login: dict = {"sub": "alice", "roles": ["globalAdmin"]}  # who signs in
        self.clients = {"dicomhub-console"}  # public clients that may sign in
        self.codes: dict[str, dict] = {}  # authorization codes not yet traded
        self.refused: list[str] = []  # why token requests were refused
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path, _, query = self.path.partition("?")
                if path == "/.well-known/openid-configuration":
                    body = {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/jwks.json",
                        "authorization_endpoint": f"{issuer.url}/authorize",
                        "token_endpoint": f"{issuer.url}/token",
                        "code_challenge_methods_supported": ["S256"],
                    }
                elif path == "/jwks.json":
                    body = {"keys": [issuer.jwk(kid) for kid in issuer.published]}
                elif path == "/authorize":
                    self._redirect(issuer.authorize(dict(urllib.parse.parse_qsl(query))))
                    return
                else:
                    self.send_error(404)
                    return
                self._json(200, body)

            def do_POST(self):  # noqa: N802
                if self.path != "/token":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = issuer.trade(form)
                self._json(status, body)

            def _json(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorize(self, q: dict) -> str:
        """Where the authorization endpoint sends the browser: back to the client with a code
        (or an error), as an issuer does once its user has signed in."""
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") not in self.clients or not redirect.startswith("http"):
            return f"{self.url}/refused"  # never back to an unknown client
        answer = {"state": q.get("state", "")}
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            answer["error"] = "unsupported_response_type"
        elif not q.get("code_challenge"):
            answer["error"] = "invalid_request"
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {**q, "login": dict(self.login)}
            answer["code"] = code
        return redirect + "?" + urllib.parse.urlencode(answer)

    def trade(self, form: dict) -> tuple[int, dict]:
        """The token endpoint: an access token for a code, its verifier and its redirect URI."""
        asked = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        why = None
        if form.get("grant_type") != "authorization_code" or asked is None:
            why = "unknown or used code"
        elif form.get("client_id") != asked["client_id"]:
            why = "another client's code"
        elif form.get("redirect_uri") != asked["redirect_uri"]:
            why = "another redirect URI"
        elif challenge != asked["code_challenge"]:
            why = "the code verifier does not match the challenge"
        if why:
            self.refused.append(why)
            return 400, {"error": "invalid_grant", "error_description": why}
        login = asked["login"]
        token = self.token(azp=asked["client_id"], **login)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 600}

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
        payload = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 600,
            "roles": ["globalAdmin"],
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signing = key if key is not None else self.keys[kid]
        if algorithm is None:
            algorithm = "ES256" if isinstance(signing, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(payload, signing, algorithm=algorithm, headers={"kid": kid})
