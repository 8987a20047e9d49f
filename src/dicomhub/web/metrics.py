"""GET /metrics: Prometheus text exposition. Today it holds the FHIR sync's gauges only (and
nothing when the sync is off); the server's own metrics are not there yet."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicomhub.web.common import archive


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the FHIR sync gauges (empty when the sync is off)."""
    sync = archive(request).fhir
    if sync is None:
        return PlainTextResponse("")
    now = await sync.status()
    lines = [
        "# HELP dicomhub_fhir_sync_lag Change-feed entries not yet synced to FHIR.",
        "# TYPE dicomhub_fhir_sync_lag gauge",
        f"dicomhub_fhir_sync_lag {now.lag}",
        "# HELP dicomhub_fhir_sync_synced_total Change-feed entries synced to FHIR.",
        "# TYPE dicomhub_fhir_sync_synced_total counter",
        f"dicomhub_fhir_sync_synced_total {now.state.synced}",
        "# HELP dicomhub_fhir_sync_failures_total Changes the FHIR server refused for good.",
        "# TYPE dicomhub_fhir_sync_failures_total counter",
        f"dicomhub_fhir_sync_failures_total {now.state.failures}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
