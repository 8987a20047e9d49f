"""POST /v2/studies/$bulkUpdate (Microsoft's bulk update, v2 only): 202 with the reference of
the operation that follows it at /operations/{id}; 409 while another is queued or running."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.errors import NotFound
from dicomhub.web.audit import note
from dicomhub.web.common import archive, base_url, json_body, partition_of

FIRST_VERSION = 2  # as Microsoft's: the route does not exist in v1


async def bulk_update(request: Request) -> JSONResponse:
    if request.scope.get("route_version", FIRST_VERSION) < FIRST_VERSION:
        raise NotFound("bulk update is part of API v2 and later (POST /v2/studies/$bulkUpdate)")
    body = await json_body(request)
    operation = await archive(request).bulk_update.start(body, partition_of(request))
    # the audit entry names the operation and its studies (the changed values may be PHI)
    note(request, operation=operation, studies=body["studyInstanceUids"])
    return JSONResponse(
        {"id": operation, "href": f"{base_url(request, False)}operations/{operation}"},
        status_code=202,
    )
