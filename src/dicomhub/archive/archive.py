"""The archive: every use case over one index and one blob store."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from dicomhub.archive.audit import AuditLog
from dicomhub.archive.bulk_update import BulkUpdateService
from dicomhub.archive.changefeed import ChangeFeedService
from dicomhub.archive.cleanup import Cleanup
from dicomhub.archive.delete import DeleteService
from dicomhub.archive.export import ExportService
from dicomhub.archive.extended_tags import ExtendedTagsService
from dicomhub.archive.fhir_sync import FhirSync
from dicomhub.archive.operations import OperationsService
from dicomhub.archive.pixels import Converter, PixelService, RenderService
from dicomhub.archive.retrieve import RetrieveService
from dicomhub.archive.search import SearchService
from dicomhub.archive.spool import clear_spool
from dicomhub.archive.store import StoreService
from dicomhub.archive.thumbnails import ThumbnailService
from dicomhub.archive.webhooks import WebhookService
from dicomhub.archive.workitem_events import WorkitemEventService
from dicomhub.archive.workitems import WorkitemService
from dicomhub.clock import utcnow
from dicomhub.errors import DicomhubError, Forbidden, InsufficientStorage, Unavailable
from dicomhub.settings_groups import ArchiveSettings
from dicomhub.storage.protocols import AuditSink, BlobStore, IndexStore, OpenSink

log = logging.getLogger(__name__)


class Archive:
    def __init__(
        self,
        settings: ArchiveSettings,
        index: IndexStore,
        blobs: BlobStore,
        converter: Converter,
        fhir: FhirSync | None = None,
        audit: AuditSink | None = None,
        deidentify_key: bytes | None = None,
        export_sinks: OpenSink | None = None,
    ):
        """Everything it is given is built by the composition root (cli.py); the archive
        starts and closes it. ``converter``: runs pixel conversions (a process pool).
        ``fhir``: the FHIR sync (None: none). ``audit``: where the audit log goes (None: no
        audit log). ``deidentify_key``: the key de-identified downloads derive their UIDs from
        (None: a random one, this archive's own). ``export_sinks``: opens export destinations
        (None: exports are refused)."""
        self.spool_dir = settings.ingest.spool_dir
        self.deidentify_key = deidentify_key or secrets.token_bytes(32)
        self.index = index
        self.blobs = blobs
        self.extended_tags = ExtendedTagsService(index, settings.search.extended_query_tag_max)
        self.store = StoreService(
            settings.ingest,
            index,
            blobs,
            self.extended_tags,
            replaced_delay=settings.cleanup.delete_delay,
        )
        self.retrieve = RetrieveService(index, blobs)
        self.pixels = PixelService(self.retrieve, converter, settings.pixels.max_conversion_size)
        self.render = RenderService(self.pixels)
        self.thumbnails = ThumbnailService(
            self.retrieve, self.render, blobs, settings.pixels.thumbnail_size
        )
        self.search = SearchService(index)
        self.delete = DeleteService(index, settings.cleanup.delete_delay)
        self.changefeed = ChangeFeedService(index)
        self.workitems = WorkitemService(index)
        self.workitem_events = WorkitemEventService(index)
        self.operations = OperationsService(index)
        self.export = ExportService(
            settings.export,
            index,
            blobs,
            self.operations,
            self.deidentify_key,
            self.extended_tags,
            export_sinks or _no_exports,
        )
        self.bulk_update = BulkUpdateService(
            index,
            index,
            blobs,
            self.operations,
            self.store,
            settings.ingest.spool_dir,
            settings.cleanup.delete_delay,
        )
        self.cleanup = Cleanup(
            index, blobs, settings.cleanup.batch_size, settings.cleanup.upload_timeout
        )
        self.fhir = fhir
        self.webhooks = WebhookService(index, settings.webhooks)
        self.audit = (
            AuditLog(audit, settings.cleanup.audit_retention_days) if audit is not None else None
        )

    async def start(self, recover: bool = True) -> None:
        """Open the stores; with ``recover``, also undo what a crash left (spooled bodies,
        stores in progress) -- only safe while no other process is storing."""
        await self.index.start()
        await self.blobs.start()
        if recover:  # the node starts (once per `serve`, whatever its processes)
            try:
                await self.workitem_events.restarted()
            except DicomhubError as exc:  # subscribers miss one report; serving goes on
                log.warning("the SCP Status Change report was not queued: %s", exc)
            clear_spool(self.spool_dir)
            if not self.index.shared:  # no other process is storing: every upload is dead
                try:
                    if await self.cleanup.abandon_stale_uploads(utcnow() + timedelta(days=1)):
                        await self.cleanup.delete_due_blobs()
                except InsufficientStorage as exc:  # a full disk: serve reads all the same
                    log.warning("crash recovery left to the cleanup job (it retries): %s", exc)

    async def close(self) -> None:
        try:
            await self.store.versions.release()
        except Unavailable:  # the index is gone: the cleanup job abandons them later
            pass
        if self.audit is not None:
            await self.audit.close()
        if self.fhir is not None:
            await self.fhir.client.close()
        await self.webhooks.close()
        await self.index.close()
        await self.blobs.close()

    async def health(self) -> list[tuple[str, str | None]]:
        """(dependency, error or None) for each dependency."""
        results = []
        for name, check in (("index", self.index.check), ("blob store", self.blobs.check)):
            try:
                await check()
                results.append((name, None))
            except Unavailable as exc:
                results.append((name, str(exc)))
            except Exception as exc:  # noqa: BLE001 - health reports, never raises
                results.append((name, f"{exc.__class__.__name__}: {exc}"))
        return results


def _no_exports(url: str, options: dict[str, str]):
    raise Forbidden("this archive was built without export destinations")
