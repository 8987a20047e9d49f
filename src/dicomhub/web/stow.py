"""STOW-RS routes: POST /v{n}/studies[/{study}] (PS3.18 section 10.5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.dicom import stow
from dicomhub.dicom.uids import require_uid
from dicomhub.web.common import archive, base_url, require_json_accept, version


async def store(request: Request) -> Response:
    # A missing Accept means application/dicom+json (Microsoft's server answered 406).
    media_type = require_json_accept(request)
    study = request.path_params.get("study")
    if study is not None:
        require_uid(study, "StudyInstanceUID")
    outcomes = await archive(request).store.store_body(
        request.stream(),
        request.headers.get("content-type"),
        study,
        strict=version(request) == 1,
    )
    study_path = f"studies/{study}" if study else None
    status, body = stow.build_response(outcomes, base_url(request), study_path)
    if body is None:
        return Response(status_code=status)
    return JSONResponse(body, status_code=status, media_type=media_type)
