"""The one table from the exception tree to HTTP: status and an RFC 9457 problem body."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from dicomhub import errors
from dicomhub.web.common import REQUEST_ID, warning

log = logging.getLogger(__name__)

STATUS = [  # most specific first
    (errors.RangeNotSatisfiable, 416, "Range Not Satisfiable"),
    (errors.InvalidRequest, 400, "Bad Request"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.NotFound, 404, "Not Found"),
    (errors.NotAcceptable, 406, "Not Acceptable"),
    (errors.RequestTimeout, 408, "Request Timeout"),
    (errors.Conflict, 409, "Conflict"),
    (errors.PayloadTooLarge, 413, "Payload Too Large"),
    (errors.UnsupportedMediaType, 415, "Unsupported Media Type"),
    (errors.InsufficientStorage, 507, "Insufficient Storage"),
    (errors.Unavailable, 503, "Service Unavailable"),
    (errors.ConversionCrashed, 500, "Internal Server Error"),
]


def problem(
    status: int, title: str, detail: str, headers: dict | None = None, **extra: str
) -> JSONResponse:
    """An RFC 9457 problem body; ``extra``: its extension members."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


async def on_dicomhub_error(request: Request, exc: errors.DicomhubError) -> JSONResponse:
    for kind, status, title in STATUS:
        if isinstance(exc, kind):
            headers = {}
            if status == 500:  # the server's fault: monitoring and the log see it
                log.error("%s %s failed: %s", request.method, request.url.path, exc)
            if status == 503:
                headers["Retry-After"] = "5"
            if status in (408, 413):  # the rest of the body is not read: the connection ends
                headers["Connection"] = "close"
            if isinstance(exc, errors.RangeNotSatisfiable):
                headers["Content-Range"] = f"bytes */{exc.size}"
            extra = {}
            if isinstance(exc, errors.WorkitemError):  # PS3.18 11: the status in a Warning
                extra["dicomStatus"] = exc.code
                headers["Warning"] = warning(request, str(exc))
            return problem(status, title, str(exc), headers, **extra)
    return await on_unexpected(request, exc)


async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(405, _title(405), detail, {"Allow": ", ".join(_allowed(request))})
    return problem(exc.status_code, _title(exc.status_code), str(detail), exc.headers)


def _allowed(request: Request) -> list[str]:
    """Every method some route serves on the request's path (Starlette's 405 names only the
    first route's: /v2/studies would say GET, HEAD and leave out POST)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def on_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client went away mid-request: not a server failure (nobody reads this answer)."""
    return problem(400, "Bad Request", "the client closed the connection mid-request")


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    # the error goes on up to the ASGI server, which closes the connection after this answer:
    # say so, or a pooled client's next request on it meets a reset. Answered outside the
    # audit layer (the last resort), it echoes the request's id here.
    headers = {"Connection": "close"}
    rid = request.scope.get(REQUEST_ID)
    if rid:
        headers["X-Request-Id"] = rid
    return problem(500, "Internal Server Error", "the server failed; see its log", headers)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
