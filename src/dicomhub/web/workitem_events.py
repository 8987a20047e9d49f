"""UPS-RS Watch and Event routes (PS3.18 11.10-11.14): subscribe to a workitem, to all of them
(``/workitems/1.2.840.10008.5.1.4.34.5/...``) or to a filtered set (``.../34.5.1/...?filter=``),
unsubscribe, suspend a global subscription, and the event channel: a WebSocket at
``/subscribers/{AETitle}`` that sends the subscriber's event reports as DICOM JSON. With data
partitions, each of them also under ``/partitions/{name}``: that partition's subscriptions and
channel, apart from the same AE title's in another partition.

The channel reads the subscriber's queue in the index every ``POLL`` seconds (the reports of a
change made through any node or server process are there once it commits), sends each report
as one text message, in sequence order, and then marks them delivered: a report is sent at least
once (again after a connection lost before that mark), with its sequence number in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from dicomhub.clock import utcnow
from dicomhub.errors import DicomhubError, InvalidRequest, WorkitemError
from dicomhub.model import DEFAULT_PARTITION, READ, AuditEntry
from dicomhub.web import partitions
from dicomhub.web.access import authorize
from dicomhub.web.audit import note
from dicomhub.web.common import REQUEST_ID, archive, base_url, param, partition_of
from dicomhub.web.errors import STATUS, problem

log = logging.getLogger(__name__)
POLL = 0.5  # seconds between two reads of a connected subscriber's queue
POLICY_VIOLATION = 1008  # WebSocket close code: refused (before the handshake: HTTP 403)


def _flag(request: Request, name: str) -> bool:
    value = param(request.query_params, name)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise InvalidRequest(f"{name} is true or false, not {value[:20]!r}")
    return value.lower() == "true"


def _names(request: Request) -> tuple[str, str]:
    uid, title = request.path_params["workitem"], request.path_params["aetitle"]
    note(request, workitem=uid, subscriber=title)
    return uid, title


def _service(request: Request):
    """The subscriptions of the request's data partition."""
    return archive(request).workitem_events.of(partition_of(request))


async def subscribe(request: Request) -> Response:
    """POST /workitems/{uid}/subscribers/{AETitle}[?deletionlock=true][&filter=...]: 201."""
    uid, title = _names(request)
    lock = _flag(request, "deletionlock")
    filters = [v for k, v in request.query_params.multi_items() if k.lower() == "filter"]
    unknown = {k for k, _ in request.query_params.multi_items()} - {"deletionlock", "filter"}
    if unknown:
        raise InvalidRequest(f"unknown query parameters: {', '.join(sorted(unknown))}")
    await _service(request).subscribe(uid, title, lock, filters)
    url = f"{base_url(request)}workitems/{uid}/subscribers/{title.strip()}"
    return Response(status_code=201, headers={"Content-Location": url})


async def unsubscribe(request: Request) -> Response:
    """DELETE /workitems/{uid}/subscribers/{AETitle}: 200."""
    uid, title = _names(request)
    await _service(request).unsubscribe(uid, title)
    return Response(status_code=200)


async def suspend(request: Request) -> Response:
    """POST /workitems/1.2.840.10008.5.1.4.34.5/subscribers/{AETitle}/suspend: 200."""
    uid, title = _names(request)
    await _service(request).suspend(uid, title)
    return Response(status_code=200)


async def upgrade_required(request: Request) -> Response:
    """GET /subscribers/{AETitle} without a WebSocket upgrade: 426 (RFC 9110 15.5.22); 400
    first for a malformed AE title, as the channel answers it."""
    await _service(request).opened(request.path_params["aetitle"])
    detail = "the event channel is a WebSocket: send the request with Upgrade: websocket"
    return problem(426, "Upgrade Required", detail, {"Upgrade": "websocket"})


async def channel(websocket: WebSocket) -> None:
    """GET [/partitions/{name}]/subscribers/{AETitle} (WebSocket): the subscriber's event
    reports (of the data partition's workitems), in order, those queued while it was away
    first. Refused (close 1008, an HTTP 403 to the handshake) without the read data action (in
    the partition), for a malformed AE title, or an unknown or malformed partition (400)."""
    started, clock = utcnow(), time.perf_counter()
    sent = {"reports": 0, "bytes": 0, "last": None}
    try:
        partition = websocket.path_params.get("partition")
        authorize(websocket.scope, READ, partition or DEFAULT_PARTITION)
        if partition is not None:
            await partitions.resolve(websocket, create=False)
        service = websocket.app.state.archive.workitem_events.of(partition or DEFAULT_PARTITION)
        title = await service.opened(websocket.path_params["aetitle"])
    except DicomhubError as exc:  # audited by the audit middleware, as every refusal
        log.info("event channel refused: %s", exc)
        await _refuse(websocket, exc)
        return
    await websocket.accept()
    gone = asyncio.Event()

    async def listen() -> None:  # the client sends nothing the server needs; watch for its end
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            gone.set()

    listener = asyncio.create_task(listen())
    try:
        after = 0
        while not gone.is_set():
            found = await service.pending(title, after)
            for sequence, text in found:
                await websocket.send_text(text.decode("utf-8"))
                after = sent["last"] = sequence
                sent["reports"] += 1
                sent["bytes"] += len(text)
            if found:
                await service.delivered(title, after)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), POLL)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left; what it did not get stays queued
    except DicomhubError as exc:  # the index is unreachable: the client reconnects later
        log.warning("event channel of %s closed: %s", title, exc)
        with contextlib.suppress(Exception):
            await websocket.close(1011, reason="the index is unavailable; reconnect later")
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        _audit(websocket, started, clock, 101, sent)


async def _refuse(websocket: WebSocket, exc: DicomhubError) -> None:
    """Refuse the handshake: with the error's status and problem body (403 without the read
    action, 400 for a malformed AE title, with its Annex CC status) where the server offers
    the denial response extension (uvicorn does), else by closing it (1008: an HTTP 403)."""
    if "websocket.http.response" not in (websocket.scope.get("extensions") or {}):
        await websocket.close(POLICY_VIOLATION, reason=str(exc)[:120])
        return
    status, title = next(((s, t) for kind, s, t in STATUS if isinstance(exc, kind)), (400, ""))
    extra = {"dicomStatus": exc.code} if isinstance(exc, WorkitemError) else {}
    await websocket.send_denial_response(problem(status, title, str(exc), **extra))


def _audit(websocket: WebSocket, started, clock: float, status: int, sent: dict) -> None:
    """One audit entry per channel, when it ends: who, which AE title, how many reports."""
    audit_log = websocket.app.state.archive.audit
    if audit_log is None:
        return
    principal = websocket.scope.get("state", {}).get("principal")
    client = websocket.scope.get("client")
    detail = {"subscriber": websocket.path_params.get("aetitle", "")[:64]}
    if sent["reports"]:
        detail.update(reports=sent["reports"], last_sequence=sent["last"])
    if "partition" in websocket.path_params:
        detail["partition"] = websocket.path_params["partition"][:64]
    audit_log.record(
        AuditEntry(
            time=started,
            protocol="http",
            method="GET",
            path=websocket.scope["path"],
            status=status,
            principal=principal.subject if principal else None,
            client=principal.client if principal else None,
            address=client[0] if client else None,
            route=_route(websocket),
            action=READ,
            bytes_out=sent["bytes"],
            duration_ms=round((time.perf_counter() - clock) * 1000, 3),
            detail=detail,
            request_id=websocket.scope.get(REQUEST_ID),
        )
    )


def _route(websocket: WebSocket) -> str:
    """The channel's route name: v1-events, v2-events, v2-partition-events."""
    version = websocket.scope["path"].split("/")[1]
    within = "-partition" if "partition" in websocket.path_params else ""
    return f"{version}{within}-events"
