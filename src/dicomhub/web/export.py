"""POST /export (Microsoft's export, with dicomhub's blob destinations and de-identification):
202 with the reference of the operation that follows it at /operations/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.web.common import archive, base_url, json_body, partition_of


async def export(request: Request) -> JSONResponse:
    body = await json_body(request)
    operation = await archive(request).export.start(body, partition_of(request))
    return JSONResponse(
        {"id": operation, "href": f"{base_url(request, False)}operations/{operation}"},
        status_code=202,
    )
