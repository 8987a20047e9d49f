"""STOW-RS routes: POST /v{n}/studies[/{study}] (PS3.18 section 10.5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.dicom import stow
from dicomhub.dicom.uids import require_uid
from dicomhub.web.audit import note
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
    _audit(request, outcomes)
    study_path = f"studies/{study}" if study else None
    status, body = stow.build_response(outcomes, base_url(request), study_path)
    if body is None:
        return Response(status_code=status)
    return JSONResponse(body, status_code=status, media_type=media_type)


def _audit(request: Request, outcomes: list[stow.PartOutcome]) -> None:
    """The audit entry names the instances stored (and their study, when there is one)."""
    stored = [o.retrieve_path.split("/")[1::2] for o in outcomes if o.failure is None]
    studies = {uids[0] for uids in stored}
    note(request, stored=stored, failed=len(outcomes) - len(stored))
    if len(studies) == 1:
        note(request, study=studies.pop())
