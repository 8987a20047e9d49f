"""FHIR sync status (non-standard): where the sync is, how far behind, what was refused."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.errors import NotFound
from dicomhub.web.common import archive, page


def _sync(request: Request):
    sync = archive(request).fhir
    if sync is None:
        raise NotFound("FHIR sync is off: set --fhir-url (DICOMHUB_FHIR_URL)")
    return sync


async def status(request: Request) -> Response:
    sync = _sync(request)
    now = await sync.status()
    state = now.state
    return JSONResponse(
        {
            "fhirServer": sync.target,
            "endpoint": sync.options.endpoint,
            "checkpoint": state.sequence,
            "latest": now.latest,
            "lag": now.lag,
            "synced": state.synced,
            "lastUpdated": state.updated.isoformat() if state.updated else None,
            "node": state.holder,
            "failures": state.failures,
        }
    )


async def failures(request: Request) -> Response:
    sync = _sync(request)
    offset, limit = page(request, 100, 1000)
    return JSONResponse(
        [
            {
                "sequence": f.sequence,
                "studyInstanceUid": f.study,
                "error": f.error,
                "operationOutcome": f.outcome,
                "at": f.at.isoformat(),
            }
            for f in await sync.failures(offset, limit)
        ]
    )
