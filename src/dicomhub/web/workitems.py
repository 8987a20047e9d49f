"""UPS-RS Push and Pull routes (PS3.18 chapter 11, as Microsoft's server serves them):
/workitems (create, search), /workitems/{workitem} (retrieve, update), its /state and
/cancelrequest. Bodies are DICOM JSON (application/dicom+json); a refusal is a problem body
whose ``dicomStatus`` and ``Warning`` header name the Annex CC status (web/errors.py).
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.archive.workitems import WorkitemService
from dicomhub.dicom.json_model import dumps
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import UnsupportedMediaType
from dicomhub.web.audit import note
from dicomhub.web.common import (
    DICOM_JSON,
    archive,
    base_url,
    json_body,
    param,
    partition_of,
    require_json_accept,
    warning,
)

JSON_TYPES = (DICOM_JSON, "application/json")


def _uid_in_query(request: Request, name: str) -> str | None:
    """The UID of ``?{uid}`` (Microsoft's form) or ``?{name}={uid}`` (PS3.18's URI template)."""
    raw = request.scope["query_string"].decode("latin-1")
    if raw and "=" not in raw and "&" not in raw:
        return require_uid(unquote(raw), name)
    value = param(request.query_params, name)
    return require_uid(value, name) if value is not None else None


async def _dataset_body(request: Request, required: bool = True):
    """The JSON body of a DICOM JSON request (None when optional and empty)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if not required and not media and declared in (None, "0"):
        return None
    if media not in JSON_TYPES:
        raise UnsupportedMediaType(f"a workitem request body is {DICOM_JSON}, not {media!r}")
    return await json_body(request)


def _workitems(request: Request) -> WorkitemService:
    """The workitems of the request's data partition."""
    return archive(request).workitems.of(partition_of(request))


def _workitem(request: Request) -> str:
    uid = require_uid(request.path_params["workitem"], "workitem")
    note(request, workitem=uid)
    return uid


async def create(request: Request) -> Response:
    """POST /workitems[?{uid}]: 201 and the workitem's URL."""
    uid = _uid_in_query(request, "workitem")
    uid = await _workitems(request).create(uid, await _dataset_body(request))
    note(request, workitem=uid)
    url = f"{base_url(request)}workitems/{uid}"
    return Response(status_code=201, headers={"Location": url, "Content-Location": url})


async def retrieve(request: Request) -> Response:
    """GET /workitems/{uid}: the workitem (a DICOM JSON array of one), no Transaction UID."""
    media = require_json_accept(request)
    dataset = await _workitems(request).retrieve(_workitem(request))
    return Response(dumps([dataset]), media_type=media, headers={"Vary": "Accept"})


async def update(request: Request) -> Response:
    """POST /workitems/{uid}[?{transaction}]: replace the attributes the body holds."""
    uid = _workitem(request)
    transaction = _uid_in_query(request, "transaction")
    await _workitems(request).update(uid, transaction, await _dataset_body(request))
    url = f"{base_url(request)}workitems/{uid}"
    return Response(status_code=200, headers={"Content-Location": url})


async def change_state(request: Request) -> Response:
    """PUT /workitems/{uid}/state: claim, complete or cancel (Transaction UID in the body)."""
    uid = _workitem(request)
    outcome = await _workitems(request).change_state(uid, await _dataset_body(request))
    note(request, state=outcome.state)
    return _answer(request, 200, outcome)


async def cancel_request(request: Request) -> Response:
    """POST /workitems/{uid}/cancelrequest: 202; a SCHEDULED workitem is canceled at once."""
    uid = _workitem(request)
    body = await _dataset_body(request, required=False)
    outcome = await _workitems(request).request_cancel(uid, body)
    note(request, state=outcome.state)
    return _answer(request, 202, outcome)


def _answer(request: Request, status: int, outcome) -> Response:
    headers = {}
    if outcome.warning:
        code, text = outcome.warning
        headers["Warning"] = warning(request, text)
        note(request, dicom_status=code)
    return Response(status_code=status, headers=headers)


async def search(request: Request) -> Response:
    """GET /workitems?...: 200 with the matches, 204 when none (as Microsoft's server)."""
    media = require_json_accept(request)
    found, ignored = await _workitems(request).search(request.query_params.multi_items())
    headers = {"Vary": "Accept"}
    if ignored:
        text = "The following query parameters were ignored: " + ", ".join(sorted(set(ignored)))
        headers["Warning"] = warning(request, text)
    if not found:
        return Response(status_code=204, headers=headers)
    return Response(dumps(found), media_type=media, headers=headers)
