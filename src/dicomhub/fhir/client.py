"""A thin FHIR R4 client: transaction bundles, searches, and the four ways to authenticate."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx

from dicomhub import clock

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    """The FHIR server refused a request; ``transient`` when it may work later (then the sync
    waits and retries rather than skipping the change)."""

    def __init__(self, message: str, transient: bool, outcome: dict | None = None):
        super().__init__(message)
        self.transient = transient
        self.outcome = outcome


@dataclass(frozen=True)
class Auth:
    kind: str = "none"  # none, bearer, basic, oauth2
    token: str = ""  # bearer
    username: str = ""  # basic
    password: str = ""
    token_url: str = ""  # oauth2 client credentials
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""


class FhirClient:
    def __init__(self, base_url: str, auth: Auth, timeout: float = 120.0):
        if auth.kind not in ("none", "bearer", "basic", "oauth2"):
            raise ValueError(f"FHIR auth {auth.kind!r} is not one of none, bearer, basic, oauth2")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.http = httpx.AsyncClient(timeout=timeout)
        self._token: tuple[str, float] | None = None  # oauth2 access token, expiry

    async def close(self) -> None:
        await self.http.aclose()

    async def transaction(self, bundle: dict) -> dict:
        return await self._request("POST", self.base_url, json=bundle)

    async def search(self, query: str) -> list[dict]:
        """The resources matching ``Type?params`` (the first page)."""
        bundle = await self._request("GET", f"{self.base_url}/{query}")
        return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict:
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON, **await self._auth()}
        try:
            response = await self.http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:  # timeouts, refused or reset connections
            raise FhirError(f"{method} {url}: {exc.__class__.__name__}: {exc}", True) from exc
        if response.status_code == 401 and self.auth.kind == "oauth2":
            self._token = None  # expired early or revoked: a new one next time
        if response.status_code >= 400:
            outcome = _json(response)
            transient = _stops(response.status_code)
            detail = _diagnostics(outcome) or response.text[:300]
            raise FhirError(
                f"{method} {url}: HTTP {response.status_code}: {detail}", transient, outcome
            )
        return _json(response) or {}

    async def _auth(self) -> dict[str, str]:
        auth = self.auth
        if auth.kind == "bearer":
            return {"Authorization": f"Bearer {auth.token}"}
        if auth.kind == "basic":
            pair = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        if auth.kind == "oauth2":
            return {"Authorization": f"Bearer {await self._access_token()}"}
        return {}

    async def _access_token(self) -> str:
        """OAuth2 client credentials (RFC 6749 4.4), cached until shortly before expiry."""
        if self._token and self._token[1] > clock.monotonic():
            return self._token[0]
        data = {"grant_type": "client_credentials"}
        if self.auth.scope:
            data["scope"] = self.auth.scope
        try:
            response = await self.http.post(
                self.auth.token_url,
                data=data,
                auth=(self.auth.client_id, self.auth.client_secret),
            )
        except httpx.HTTPError as exc:
            raise FhirError(f"token endpoint: {exc.__class__.__name__}: {exc}", True) from exc
        body = _json(response) or {}
        if response.status_code >= 400 or "access_token" not in body:
            transient = _stops(response.status_code) or response.status_code == 400
            raise FhirError(
                f"token endpoint: HTTP {response.status_code}: {response.text[:300]}", transient
            )
        lifetime = float(body.get("expires_in", 300))
        margin = min(30.0, lifetime / 10)  # renewed a little before it runs out
        self._token = (body["access_token"], clock.monotonic() + lifetime - margin)
        return self._token[0]


def _stops(status: int) -> bool:
    """Statuses that stop the sync (retried until they pass) instead of skipping the change:
    the server is busy or failing, or our credentials are wrong (fixed by configuration)."""
    return status in (401, 403, 408, 429) or status >= 500


def _json(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _diagnostics(outcome: dict | None) -> str:
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = outcome.get("issue", [])
    texts = [i.get("diagnostics") or i.get("details", {}).get("text", "") for i in issues]
    return "; ".join(t for t in texts if t)[:500]
