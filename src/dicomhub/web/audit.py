"""The audit of every HTTP request (but the health probe), and the admin route that reads it.

The middleware sits outside authentication and the request limits, so refused requests are
audited too. It is the one layer that sees every request whole, so it also gives the request
its id (``X-Request-Id``), records its metrics and writes its line in the log, whether the
audit log is on or not. It records the route's data action and the UIDs of its path; routes add what
only they know (the instances a STOW stored) through ``note()``. Callers may add their own
context in ``X-Dicomhub-Audit-<Name>`` headers (or Microsoft's ``X-MS-AZUREDICOM-AUDIT-<Name>``):
at most MAX_HEADERS of them, each at most MAX_HEADER_LENGTH bytes, else 400.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomhub import logs
from dicomhub.archive.audit import AuditLog
from dicomhub.clock import utcnow
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import InvalidRequest
from dicomhub.model import ACTIONS, READ, AuditEntry, AuditQuery
from dicomhub.telemetry import instruments
from dicomhub.web.common import (
    PARTITION,
    REQUEST_ID,
    ZEROCOPY,
    archive,
    page,
    param,
    time_param,
)
from dicomhub.web.errors import problem

HEADER_PREFIXES = (b"x-dicomhub-audit-", b"x-ms-azuredicom-audit-")
MAX_HEADERS = 10
MAX_HEADER_LENGTH = 2048
MAX_QUERY = 2048  # bytes of the query string kept
UNAUDITED = ("/health/check",)
ACTION, ROUTE = "dicomhub.action", "dicomhub.route"  # set in the scope by the route's wrapper
NOTES = "dicomhub.audit"
# the routes (names without their version) whose response bodies count as retrieved bytes
RETRIEVALS = frozenset(
    {"study", "series", "instance", "frames", "bulkdata", "wado-uri"}
    | {
        f"{level}-{kind}"
        for level in ("study", "series", "instance", "frames")
        for kind in ("rendered", "thumbnail", "metadata")
    }
)
_requests = logging.getLogger(logs.ACCESS)


def note(request: Request, **detail) -> None:
    """Add ``detail`` to the request's audit entry."""
    request.scope.setdefault(NOTES, {}).update(detail)


class AuditMiddleware:
    """Every request: its id (the client's ``X-Request-Id`` when sane, else a new one; echoed
    in the response), its metrics, its request line in the log, and its audit entry (when
    ``log``). One layer, which counts the bytes once for all of them."""

    def __init__(
        self,
        app: ASGIApp,
        log: AuditLog | None,
        routes: Sequence[BaseRoute],
    ):
        self.app = app
        self.log = log
        self.routes = routes
        # route name -> its template (/v2/studies/{study}): a label of few values
        self.templates = {
            r.name: r.path_format for r in routes if isinstance(getattr(r, "name", None), str)
        }
        self.retrievals = {
            name for name in self.templates if re.sub(r"^v\d+-", "", name) in RETRIEVALS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        started = utcnow() if self.log is not None else None  # when the audit entry says
        clock = time.perf_counter()
        counts = {"in": 0, "out": 0, "status": 500}
        headers, refusal, asked = _caller_headers(scope)
        rid = (asked and logs.sane_request_id(asked)) or logs.new_request_id()
        scope[REQUEST_ID] = rid
        echoed = (b"x-request-id", rid.encode("ascii"))

        async def counting_receive() -> Message:
            message = await receive()
            counts["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            elif message["type"] == ZEROCOPY:
                counts["out"] += message["count"]
            await send(message)

        token = logs.request_id.set(rid)
        try:
            if refusal:
                await problem(400, "Bad Request", refusal)(scope, receive, counting_send)
            else:
                await self.app(scope, counting_receive, counting_send)
        finally:
            logs.request_id.reset(token)
            seconds = time.perf_counter() - clock
            if ROUTE not in scope:  # refused before routing (401, 414, 400), or no route
                _resolve(scope, self.routes)
            route = self.templates.get(scope.get(ROUTE), instruments.UNMATCHED)
            instruments.request(route, scope["method"], counts["status"], seconds)
            if counts["out"] and scope.get(ROUTE) in self.retrievals:
                instruments.retrieved(route, counts["out"])
            if _requests.isEnabledFor(logging.INFO):
                _request_line(scope, route, counts["status"], seconds, rid)
            if self.log is not None and scope["path"] not in UNAUDITED:
                self.log.record(self._entry(scope, started, seconds, counts, headers, rid))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake (the UPS event channel): its request id (echoed in the answer
        to the handshake), and an audit entry when it is refused before it is accepted (by
        the authentication middleware, the channel itself, or a handshake no route takes): a
        denial response (its HTTP status) or a close before ``websocket.accept`` (the server
        answers 403). An accepted channel writes its own entry when it ends."""
        started, clock = utcnow(), time.perf_counter()
        _, _, asked = _caller_headers(scope)
        rid = (asked and logs.sane_request_id(asked)) or logs.new_request_id()
        scope[REQUEST_ID] = rid
        echoed = (b"x-request-id", rid.encode("ascii"))
        seen = {"accepted": False, "status": None, "out": 0}

        async def watching_send(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                seen["accepted"] = True
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            elif not seen["accepted"] and seen["status"] is None:
                if kind == "websocket.http.response.start":
                    seen["status"] = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), echoed]}
                elif kind == "websocket.close":
                    seen["status"] = 403  # what the server answers a handshake closed at once
            if kind == "websocket.http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        token = logs.request_id.set(rid)
        try:
            await self.app(scope, receive, watching_send)
        finally:
            logs.request_id.reset(token)
            if not seen["accepted"] and seen["status"] is not None:
                seconds = time.perf_counter() - clock
                if ROUTE not in scope:
                    _resolve(scope, self.routes)
                if scope.get(ACTION) is None:  # the event channel: the read data action
                    scope[ACTION] = READ
                title = (scope.get("path_params") or {}).get("aetitle")
                if title is not None:
                    scope.setdefault(NOTES, {}).setdefault("subscriber", title[:64])
                if _requests.isEnabledFor(logging.INFO):
                    route = self.templates.get(scope.get(ROUTE), instruments.UNMATCHED)
                    _request_line(scope, route, seen["status"], seconds, rid)
                if self.log is not None:
                    counts = {"status": seen["status"], "in": 0, "out": seen["out"]}
                    self.log.record(self._entry(scope, started, seconds, counts, {}, rid))

    def _entry(self, scope: Scope, started, seconds: float, counts: dict, headers: dict, rid):
        params = scope.get("path_params") or {}
        principal = scope.get("state", {}).get("principal")
        detail = dict(scope.get(NOTES) or {})
        # routes without UIDs in their path (STOW, WADO-URI) note the ones they touched
        study = detail.pop("study", None) or params.get("study")
        if scope.get("query_string"):
            detail["query"] = scope["query_string"][:MAX_QUERY].decode("latin-1")
        if headers:
            detail["caller"] = headers
        client = scope.get("client")
        return AuditEntry(
            time=started,
            protocol="http",
            method=scope.get("method", "GET"),  # a WebSocket handshake is a GET
            path=scope["path"],
            status=counts["status"],
            principal=principal.subject if principal else None,
            client=principal.client if principal else None,
            address=client[0] if client else None,
            route=scope.get(ROUTE),
            action=scope.get(ACTION),
            study=study,
            series=detail.pop("series", None) or params.get("series"),
            instance=detail.pop("instance", None) or params.get("sop"),
            bytes_in=counts["in"],
            bytes_out=counts["out"],
            duration_ms=round(seconds * 1000, 3),
            detail=detail,
            request_id=rid,
        )


def _request_line(scope: Scope, route: str, status: int, seconds: float, rid: str) -> None:
    """The request's line in the log (logger dicomhub.access, info level)."""
    principal = scope.get("state", {}).get("principal")
    duration = round(seconds * 1000, 3)
    method = scope.get("method", "GET")  # a WebSocket handshake is a GET
    _requests.info(
        "%s %s %d %.1f ms",
        method,
        scope["path"],
        status,
        duration,
        extra={
            "request_id": rid,
            "method": method,
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": duration,
            "user": principal.subject if principal else None,
            "partition": scope.get(PARTITION),  # a route under /partitions/{name}: its name
        },
    )


def _caller_headers(scope: Scope) -> tuple[dict[str, str], str | None, bytes | None]:
    """The caller's audit headers, why they are refused (too many, too long) or None, and
    the X-Request-Id it sent (None: none)."""
    found, asked = {}, None
    for name, value in scope.get("headers") or ():
        if name[:2].lower() != b"x-":  # most headers: one cheap look
            continue
        name = name.lower()
        if name == b"x-request-id":
            asked = value
            continue
        prefix = next((p for p in HEADER_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        if len(value) > MAX_HEADER_LENGTH:
            return {}, f"an audit header is longer than {MAX_HEADER_LENGTH} bytes", asked
        found[name[len(prefix) :].decode("latin-1")] = value.decode("latin-1")
        if len(found) > MAX_HEADERS:
            return {}, f"more than {MAX_HEADERS} audit headers", asked
    return found, None, asked


def _resolve(scope: Scope, routes: Sequence[BaseRoute]) -> None:
    """Record the route, action and path parameters the request would have reached."""
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            scope[ROUTE] = getattr(route, "name", None)
            scope[ACTION] = getattr(route, "action", None)
            scope.setdefault("path_params", child.get("path_params", {}))
            return


def audit(log: AuditLog | None, routes: Sequence[BaseRoute]) -> list[Middleware]:
    """The middleware of every request (its audit entry only when ``log``)."""
    return [Middleware(AuditMiddleware, log=log, routes=routes)]


async def entries(request: Request) -> Response:
    """GET /v{n}/audit: entries oldest first, filtered by time, principal, action, study,
    status and request id (the admin action)."""
    log = archive(request).audit
    if log is None:
        raise InvalidRequest("the audit log is off (--audit-log off)")
    q = request.query_params
    offset, limit = page(request, 100, 1000)
    action = param(q, "action")
    if action is not None and action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(ACTIONS)}")
    study = param(q, "study")
    status = _status(param(q, "status"))
    query = AuditQuery(
        since=time_param(q, "since"),
        until=time_param(q, "until"),
        principal=param(q, "principal"),
        action=action,
        study=require_uid(study, "study") if study is not None else None,
        status=status,
        request_id=param(q, "requestId"),
        offset=offset,
        limit=limit,
    )
    return JSONResponse([e.to_json() for e in await log.entries(query)])


def _status(value: str | None) -> int | None:
    """An HTTP status (three digits) or a DIMSE status (``0x`` and four hex digits)."""
    if value is None:
        return None
    if value.isascii() and value.isdigit() and len(value) == 3:
        return int(value)
    if len(value) == 6 and value[:2].lower() == "0x":
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise InvalidRequest("status must be a three-digit HTTP status or a DIMSE status (0xA900)")
