"""GET /metrics: the Prometheus text exposition of every process of this server (see
telemetry/exposition.py), with the job queue, the FHIR sync and the webhook subscriptions read
from the index now.

Authorised as the admin data action (when authentication is on), as the other operator routes
(/v2/audit, /v2/fhir/status): a scraper needs a token whose roles grant admin."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.telemetry import exposition
from dicomhub.web.common import archive


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (format 0.0.4)."""
    the_archive = archive(request)
    jobs = [exposition.JobQueue(*queue) for queue in await the_archive.operations.queue()]
    fhir = None
    if the_archive.fhir is not None:
        now = await the_archive.fhir.status()
        fhir = exposition.FhirSync(now.lag, now.state.synced, now.state.failures)
    webhooks = [exposition.Webhook(*hook) for hook in await the_archive.webhooks.status()]
    return Response(exposition.render(jobs, fhir, webhooks), media_type=exposition.CONTENT_TYPE)
