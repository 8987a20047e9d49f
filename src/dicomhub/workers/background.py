"""The background work of a node: job runners over the index, and the periodic jobs it queues.

``dicomhub serve`` runs this beside the HTTP API unless ``--background-jobs false``;
``dicomhub worker`` runs it alone. Any number of nodes may run it at once. With a FHIR URL set,
it also runs the FHIR sync (one node at a time holds it). Webhook deliveries run in every one
(one node at a time per subscription).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from dicomhub.archive.archive import Archive
from dicomhub.clock import utcnow
from dicomhub.model import JobType
from dicomhub.settings_groups import Dimse, Jobs
from dicomhub.storage.protocols import Jobs as JobQueue
from dicomhub.workers.fhir_sync import run_fhir_sync
from dicomhub.workers.jobs import Handler, JobContext, JobRunner, every
from dicomhub.workers.webhooks import run_webhooks

KEEP_CLEANUP_OPERATIONS = timedelta(days=1)


def handlers(archive: Archive, dimse: Dimse) -> dict[str, Handler]:
    """The handler of each kind of job; ``dimse``: where storage commitment reports go."""

    async def blob_cleanup(context: JobContext) -> dict:
        results = await archive.cleanup.run()
        await archive.operations.purge(
            str(JobType.BLOB_CLEANUP), utcnow() - KEEP_CLEANUP_OPERATIONS
        )
        if archive.audit is not None:
            await archive.audit.purge_expired()
        await archive.workitem_events.purge_expired()
        return results

    async def reindex(context: JobContext) -> dict:
        return await archive.extended_tags.reindex(
            context.operation.payload, context.checkpoint, context.progress
        )

    async def export(context: JobContext) -> dict:
        op = context.operation
        return await archive.export.run(op.id, op.payload, context.checkpoint, context.progress)

    async def bulk_update(context: JobContext) -> dict:
        return await archive.bulk_update.run(
            context.operation.payload, context.checkpoint, context.progress
        )

    async def storage_commitment(context: JobContext) -> dict:
        from dicomhub.dimse.commitment import deliver  # pynetdicom: only loaded when needed

        return await deliver(archive, dimse, context.operation.payload)

    async def answered(context: JobContext) -> dict:
        return {}  # the report went on the request's association: this is its record

    return {
        JobType.BLOB_CLEANUP: blob_cleanup,
        JobType.REINDEX: reindex,
        JobType.STORAGE_COMMITMENT: storage_commitment,
        JobType.COMMITMENT_ANSWERED: answered,
        JobType.EXPORT: export,
        JobType.BULK_UPDATE: bulk_update,
    }


async def run_background(archive: Archive, queue: JobQueue, settings: Jobs, dimse: Dimse) -> None:
    """Run the job runners over ``queue`` (the index's jobs, handed by the composition root),
    the scheduled jobs, the webhook deliveries and the FHIR sync, until cancelled."""
    runner = JobRunner(queue, handlers(archive, dimse), settings.lease, settings.poll_interval)

    async def queue_cleanup() -> None:
        await archive.operations.start(str(JobType.BLOB_CLEANUP), singleton=True)

    webhooks = archive.webhooks.settings
    fhir = [run_fhir_sync(archive.fhir, settings.fhir_poll_interval)] if archive.fhir else []
    await asyncio.gather(
        every(settings.cleanup_interval, queue_cleanup),
        *(runner.run_forever() for _ in range(settings.concurrency)),
        run_webhooks(archive.webhooks, webhooks.concurrency, webhooks.poll_interval),
        *fhir,
    )
