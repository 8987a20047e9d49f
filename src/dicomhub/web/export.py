"""POST /export (Microsoft's export, with dicomhub's blob destinations and de-identification):
202 with the reference of the operation that follows it at /operations/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.web.common import archive, base_url, json_body


async def export(request: Request) -> JSONResponse:
    operation = await archive(request).export.start(await json_body(request))
    return JSONResponse(
        {"id": operation, "href": f"{base_url(request)}operations/{operation}"}, status_code=202
    )
