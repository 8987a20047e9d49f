"""The web console: a small browser app served at ``/``, its files under ``/console/``.

It has no build step and loads nothing from elsewhere: an HTML page, a stylesheet and a few
plain ES modules shipped in this package (``static/``). Everything it shows it reads from the
server's own DICOMweb API in the browser (QIDO, metadata, rendered, thumbnails, STOW, DELETE,
change feed, operations, extended query tags, health), with the caller's bearer token when
authentication is on: the console is one more API client, not a second path to the data.

Besides its static files it is given two documents made here:

- ``/console/config.json``: what the page needs to know of this server (the API root relative
  to the page, whether OHIF is served and where, and when authentication is on, the issuer,
  the audience, the roles claim and the data actions each role grants, so it can hide what the
  user may not do: the API still decides);
- ``/console/dictionary.json``: tag to VR and keyword (pydicom's data dictionary), for the
  metadata table (DICOM JSON names tags by number only).

These files are public, like the viewer's (a page must load before it can sign in); none holds
data. They are answered before authentication and the audit log, with an ETag (304 when the
browser's copy is current) and gzip when the browser takes it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomhub import __version__
from dicomhub.model import DEFAULT_PARTITION
from dicomhub.web.access import EVERYWHERE
from dicomhub.web.errors import problem

PREFIX = "/console/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class File:
    body: bytes
    zipped: bytes | None  # gzip of body, when that is smaller
    media: str
    tag: str


def _file(body: bytes, media: str) -> File:
    zipped = gzip.compress(body, 6, mtime=0)
    return File(
        body,
        zipped if len(zipped) < len(body) * 0.9 else None,
        media,
        '"' + hashlib.sha1(body).hexdigest() + '"',
    )


def config(
    viewer: bool,
    issuer: str = "",
    audience: str = "",
    client_id: str = "",
    scopes: str = "openid",
    roles_claim: str = "roles",
    grants: dict[str, dict[str, frozenset[str]]] | None = None,
) -> dict:
    """The console's view of this server (``/console/config.json``). ``grants``: each role's
    actions by where (web/access); the console works on the default partition, so a role
    grants it what it grants everywhere or there."""
    auth = None
    if issuer:
        auth = {
            "issuer": issuer,
            "audience": audience,
            "clientId": client_id,
            "scopes": scopes,
            "rolesClaim": roles_claim,
            "roles": {
                name: sorted(where.get(EVERYWHERE, set()) | where.get(DEFAULT_PARTITION, set()))
                for name, where in (grants or {}).items()
            },
        }
    return {
        "version": __version__,
        "api": "v2/",  # relative to the page: right behind a proxy that adds a path prefix too
        "viewer": "viewer/viewer?StudyInstanceUIDs=" if viewer else None,
        "auth": auth,
    }


def dictionary() -> dict[str, list[str]]:
    """Tag (8 hex digits) to [VR, keyword] of every attribute of pydicom's dictionary."""
    from pydicom.datadict import DicomDictionary

    return {
        f"{tag:08X}": [entry[0], entry[4]]
        for tag, entry in sorted(DicomDictionary.items())
        if entry[4]
    }


def _static() -> dict[str, File]:
    folder = resources.files(__name__).joinpath("static")
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in TYPES:
            files[PREFIX + item.name] = _file(item.read_bytes(), TYPES[suffix])
    return files


def policy(issuer: str) -> str:
    """The page's Content-Security-Policy: its own files and API only (and the issuer's token
    endpoint, when it signs in there)."""
    connect = "'self'"
    if issuer:
        parts = urlsplit(issuer)
        connect += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        f"connect-src {connect}; form-action 'self'; frame-ancestors 'none'; base-uri 'self'"
    )


class Console:
    """The console's files and the answers they give."""

    def __init__(self, settings: dict, issuer: str = ""):
        self.files = _static()
        self.files["/"] = self.files.pop(PREFIX + "index.html")
        self.files[PREFIX + "config.json"] = _file(
            json.dumps(settings, indent=1).encode(), TYPES[".json"]
        )
        self._dictionary: File | None = None  # made on first use (pydicom's dictionary)
        self.policy = policy(issuer)

    def serves(self, path: str) -> bool:
        return path == "/" or path.startswith(PREFIX)

    def file(self, path: str) -> File | None:
        if path == PREFIX + "dictionary.json":
            if self._dictionary is None:
                body = json.dumps(dictionary(), separators=(",", ":")).encode()
                self._dictionary = _file(body, TYPES[".json"])
            return self._dictionary
        return self.files.get(path)

    def response(self, scope: Scope) -> Response:
        path = scope["path"]
        file = self.file(path)
        if file is None:
            return problem(404, "Not Found", f"no console file at {path}")
        headers = {
            "Cache-Control": "no-cache",
            "ETag": file.tag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if path == "/":
            headers["Content-Security-Policy"] = self.policy
            headers["X-Frame-Options"] = "DENY"
        request_headers = dict(scope.get("headers") or ())
        match = request_headers.get(b"if-none-match", b"").decode("latin-1")
        if file.tag in {t.strip().removeprefix("W/") for t in match.split(",")} or match == "*":
            return Response(status_code=304, headers=headers)
        body = file.body
        if file.zipped and b"gzip" in request_headers.get(b"accept-encoding", b"").lower():
            body = file.zipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=file.media, headers=headers)


class ConsoleMiddleware:
    """Answers ``/`` and ``/console/...`` before the API's authentication and audit."""

    def __init__(self, app: ASGIApp, console: Console):
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.console.serves(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            detail = "the console's files are read only"
            refusal = problem(405, "Method Not Allowed", detail, {"Allow": "GET, HEAD"})
            await refusal(scope, receive, send)
            return
        await self.console.response(scope)(scope, receive, send)


def console(settings) -> list[Middleware]:
    """The console's middleware, for ``settings`` (dicomhub.settings.Settings)."""
    auth = settings.auth
    grants = None
    if auth.issuer:
        from dicomhub.web.access import Roles

        grants = Roles.load(auth.roles_file, auth.roles_claim).grants
    document = config(
        bool(settings.viewer),
        auth.issuer,
        auth.audience,
        settings.console_client_id,
        settings.console_scopes,
        auth.roles_claim,
        grants,
    )
    return [Middleware(ConsoleMiddleware, console=Console(document, auth.issuer))]
