"""Authentication: OAuth2 / OpenID Connect bearer tokens (RFC 6750), on whenever an issuer is set.

A token is a JWT signed by one of the issuer's keys (its JWKS, found through the issuer's
discovery document unless configured; cached, and fetched again when a token names a key it
does not hold, so keys can rotate). It must name the issuer and the audience, be within its
validity (with a small clock skew) and use an allowed asymmetric algorithm: never ``none`` and
never an HMAC one, so a public key can never pass for a shared secret. PyJWT does the
cryptography.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from dataclasses import dataclass

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomhub import clock
from dicomhub.settings_groups import Auth as AuthSettings
from dicomhub.web.access import Roles
from dicomhub.web.errors import problem

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health/check",)  # load balancers probe it without a token
ASYMMETRIC = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
}


class Unauthenticated(Exception):
    """No token, or one that does not hold."""


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys cannot be fetched now (the caller may retry)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    client: str | None  # the application the token was issued to (azp, client_id or appid)
    roles: tuple[str, ...]
    actions: dict[str, frozenset[str]]  # by where: "/" everywhere, else a data partition


class TokenValidator:
    def __init__(self, settings: AuthSettings, roles: Roles):
        algorithms = [a.strip() for a in settings.algorithms.split(",") if a.strip()]
        refused = [a for a in algorithms if a not in ASYMMETRIC]
        if refused or not algorithms:
            raise ValueError(
                "auth_algorithms may only name asymmetric algorithms "
                f"({', '.join(sorted(ASYMMETRIC))}); refused: {', '.join(refused) or 'none given'}"
            )
        if not settings.audience:
            raise ValueError("auth_audience must be set when auth_issuer is")
        self.roles = roles
        self.issuer = settings.issuer
        self.audience = settings.audience
        self.algorithms = algorithms
        self.leeway = settings.leeway
        self.refresh = settings.key_refresh
        self._jwks_url = settings.jwks_url
        self._keys: jwt.PyJWKClient | None = None
        self._discovery_failed = -float("inf")

    async def validate(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not a JWT: {exc}") from exc
        if header.get("alg") not in self.algorithms:
            raise Unauthenticated(f"the token's algorithm {header.get('alg')!r} is not allowed")
        key = await asyncio.to_thread(self._signing_key, token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token does not hold: {exc}") from exc
        names = tuple(self.roles.names(claims))
        client = claims.get("azp") or claims.get("client_id") or claims.get("appid")
        return Principal(
            str(claims.get("sub", "")),
            str(client) if client else None,
            names,
            self.roles.actions(list(names)),
        )

    def _signing_key(self, token: str):
        if self._keys is None:
            reason = "the issuer's discovery document cannot be read now"
            if clock.monotonic() - self._discovery_failed < self.refresh:
                raise IssuerUnavailable(reason)  # asked again only every auth_key_refresh s
            try:
                url = self._jwks_url or self._discover()
            except (OSError, ValueError, KeyError) as exc:
                log.warning("the issuer's discovery document could not be read: %s", exc)
                self._discovery_failed = clock.monotonic()
                raise IssuerUnavailable(reason) from exc
            self._keys = jwt.PyJWKClient(url, lifespan=300, cooldown_duration=self.refresh)
        try:
            return self._keys.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("the issuer's keys could not be fetched: %s", exc)
            raise IssuerUnavailable("the issuer's keys cannot be fetched now") from exc
        except (jwt.PyJWTError, OSError, ValueError, KeyError) as exc:
            raise Unauthenticated(f"the token's key is unknown: {exc}") from exc

    def _discover(self) -> str:
        """The JWKS address from the issuer's OpenID Connect discovery document."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - https issuer
            return json.load(response)["jwks_uri"]


class AuthMiddleware:
    """401 for every request without a valid bearer token (but OPEN_PATHS); the principal is
    kept in the request's state for authorisation and the audit log."""

    def __init__(self, app: ASGIApp, validator: TokenValidator):
        self.app = app
        self.validator = validator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _unauthorized("the request has no bearer token", None)(scope, receive, send)
            return
        try:
            principal = await self.validator.validate(token.strip())
        except Unauthenticated as exc:
            await _unauthorized(str(exc), "invalid_token")(scope, receive, send)
            return
        except IssuerUnavailable as exc:
            unavailable = problem(503, "Service Unavailable", str(exc), {"Retry-After": "5"})
            await unavailable(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake (the UPS event channel) needs a valid bearer token too;
        without one it is refused before it is accepted: 401 with its challenge (503 when the
        issuer is unreachable), or, on a server without the denial response, a close (403)."""
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the request has no bearer token")
            principal = await self.validator.validate(token.strip())
        except Unauthenticated as exc:
            log.info("WebSocket refused: %s", exc)
            sent = scheme.lower() == "bearer" and token.strip()
            refusal = _unauthorized(str(exc), "invalid_token" if sent else None)
            await _deny(scope, receive, send, refusal)
            return
        except IssuerUnavailable as exc:
            log.info("WebSocket refused: %s", exc)
            unavailable = problem(503, "Service Unavailable", str(exc), {"Retry-After": "5"})
            await _deny(scope, receive, send, unavailable)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, response) -> None:
    """Refuse a WebSocket handshake with ``response`` (its status, headers and problem body)
    where the server offers the denial response extension (uvicorn does), else by closing it
    before it is accepted (the client sees 403)."""
    if "websocket.http.response" in scope.get("extensions") or {}:
        await response(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def _unauthorized(reason: str, error: str | None):
    """401 with an RFC 6750 challenge (an error code only when a token was sent)."""
    challenge = 'Bearer realm="dicomhub"'
    if error:
        challenge += f', error="{error}", error_description="{_quote(reason)}"'
    return problem(401, "Unauthorized", reason, {"WWW-Authenticate": challenge})


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")[:200]


def authentication(settings: AuthSettings):
    """The authentication middleware, when an issuer is set."""
    from starlette.middleware import Middleware

    if not settings.issuer:
        return []
    roles = Roles.load(settings.roles_file, settings.roles_claim)
    return [Middleware(AuthMiddleware, validator=TokenValidator(settings, roles))]
