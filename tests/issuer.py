"""A local OpenID Connect issuer for the tests: keys made here, discovery document and JWKS
served on a local port, tokens signed on demand (roles: globalAdmin unless told)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
