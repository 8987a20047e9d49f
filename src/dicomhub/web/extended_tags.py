"""Extended query tag routes (Microsoft's API): /extendedquerytags, one tag by path or keyword,
its query status (PATCH), deletion, and its indexing errors."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.clock import isoformat
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.web.common import archive, base_url, json_body, page

LIMITS = (100, 200)  # default and maximum page size (Microsoft's PaginationOptions)


async def add(request: Request) -> JSONResponse:
    operation = await archive(request).extended_tags.add(await json_body(request))
    return JSONResponse(
        {"id": operation, "href": f"{base_url(request)}operations/{operation}"}, status_code=202
    )


async def listing(request: Request) -> JSONResponse:
    offset, limit = page(request, *LIMITS)
    tags = await archive(request).extended_tags.listing(offset, limit)
    return JSONResponse([_tag(request, t) for t in tags])


async def get(request: Request) -> JSONResponse:
    tag = await archive(request).extended_tags.get(request.path_params["tag"])
    return JSONResponse(_tag(request, tag))


async def update(request: Request) -> JSONResponse:
    service = archive(request).extended_tags
    tag = await service.update(request.path_params["tag"], await json_body(request))
    return JSONResponse(_tag(request, tag))


async def delete(request: Request) -> Response:
    await archive(request).extended_tags.delete(request.path_params["tag"])
    return Response(status_code=204)


async def errors(request: Request) -> JSONResponse:
    offset, limit = page(request, *LIMITS)
    found = await archive(request).extended_tags.errors(request.path_params["tag"], offset, limit)
    return JSONResponse(
        [
            {
                "studyInstanceUid": e.study,
                "seriesInstanceUid": e.series,
                "sopInstanceUid": e.instance,
                "createdTime": isoformat(e.created),
                "errorMessage": e.message,
            }
            for e in found
        ]
    )


def _tag(request: Request, tag: ExtendedTag) -> dict[str, Any]:
    root = base_url(request)
    out: dict[str, Any] = {
        "path": tag.path,
        "vr": tag.vr,
        "level": tag.level.name.capitalize(),
        "status": tag.status,
        "queryStatus": tag.query_status,
        "errors": {"count": tag.errors, "href": f"{root}extendedquerytags/{tag.path}/errors"},
    }
    if tag.private_creator:
        out["privateCreator"] = tag.private_creator
    if tag.operation:
        out["operation"] = {"id": tag.operation, "href": f"{root}operations/{tag.operation}"}
    return out
