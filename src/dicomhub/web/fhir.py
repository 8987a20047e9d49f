"""FHIR sync status (non-standard): where the sync is, how far behind, what was refused."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from dicomhub.errors import NotFound
from dicomhub.web.common import archive, page


async def _state(request: Request):
    the_archive = archive(request)
    if the_archive.fhir is None:
        raise NotFound("FHIR sync is off: set --fhir-url (DICOMHUB_FHIR_URL)")
    sync = the_archive.fhir
    state = await the_archive.index.fhir_sync_state(sync.target)
    latest = await the_archive.index.latest_change(include_metadata=False)
    return sync, state, latest.sequence if latest else 0


async def status(request: Request) -> Response:
    sync, state, latest = await _state(request)
    return JSONResponse(
        {
            "fhirServer": sync.target,
            "endpoint": sync.options.endpoint,
            "checkpoint": state.sequence,
            "latest": latest,
            "lag": max(0, latest - state.sequence),
            "synced": state.synced,
            "lastUpdated": state.updated.isoformat() if state.updated else None,
            "node": state.holder,
            "failures": state.failures,
        }
    )


async def failures(request: Request) -> Response:
    sync, _, _ = await _state(request)
    offset, limit = page(request, 100, 1000)
    found = await archive(request).index.fhir_failures(sync.target, offset, limit)
    return JSONResponse(
        [
            {
                "sequence": f.sequence,
                "studyInstanceUid": f.study,
                "error": f.error,
                "operationOutcome": f.outcome,
                "at": f.at.isoformat(),
            }
            for f in found
        ]
    )


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the FHIR sync gauges (empty when the sync is off)."""
    if archive(request).fhir is None:
        return PlainTextResponse("")
    _, state, latest = await _state(request)
    lines = [
        "# HELP dicomhub_fhir_sync_lag Change-feed entries not yet synced to FHIR.",
        "# TYPE dicomhub_fhir_sync_lag gauge",
        f"dicomhub_fhir_sync_lag {max(0, latest - state.sequence)}",
        "# HELP dicomhub_fhir_sync_synced_total Change-feed entries synced to FHIR.",
        "# TYPE dicomhub_fhir_sync_synced_total counter",
        f"dicomhub_fhir_sync_synced_total {state.synced}",
        "# HELP dicomhub_fhir_sync_failures_total Changes the FHIR server refused for good.",
        "# TYPE dicomhub_fhir_sync_failures_total counter",
        f"dicomhub_fhir_sync_failures_total {state.failures}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
