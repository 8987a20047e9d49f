"""The audit log: who did what, from where, to which study, with what outcome.

``record()`` never waits: entries are buffered and a writer task hands them to the sink (the
index, or an append-only file) in batches, at most ``interval`` seconds after they were
recorded, and at close. A sink that fails keeps the batch for the next attempt (the buffer is
bounded; what overflows it is counted in the log and in the next entry written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from dicomhub.clock import utcnow
from dicomhub.model import AuditEntry, AuditQuery
from dicomhub.storage.protocols import AuditSink

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(
        self,
        sink: AuditSink,
        retention_days: int = 0,
        interval: float = 0.2,
        max_pending: int = 100_000,
    ):
        """``retention_days``: how long entries are kept (0: forever)."""
        self.sink = sink
        self.retention = timedelta(days=retention_days) if retention_days > 0 else None
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[AuditEntry] = []
        self._dropped = 0
        self._writer: asyncio.Task | None = None
        self._writing = asyncio.Lock()  # one batch at a time: a flush waits for one in flight

    def record(self, entry: AuditEntry) -> None:
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            return
        self._pending.append(entry)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write what is pending now, after any batch being written (raises what the sink
        raises; the entries stay pending)."""
        async with self._writing:
            if not self._pending:
                return
            batch = self._pending
            self._pending = []
            if self._dropped:
                batch[0].detail["entriesDroppedBefore"] = self._dropped
            try:
                await self.sink.add_audit_entries(batch)
            except BaseException:
                self._pending = batch + self._pending
                raise
            if self._dropped:
                log.error("the audit log dropped %d entries while its store failed", self._dropped)
                self._dropped = 0

    async def entries(self, query: AuditQuery) -> list[AuditEntry]:
        await self.flush()
        return await self.sink.audit_entries(query)

    async def purge_expired(self) -> None:
        """Remove the entries older than the retention (none without one)."""
        if self.retention is not None:
            await self.sink.purge_audit_entries(utcnow() - self.retention)

    async def close(self) -> None:
        if self._writer is not None:
            # A batch being written finishes first: cancelled midway (its write already done
            # in a thread), it would go back to the pending entries and be written twice.
            async with self._writing:
                self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - closing: say what is lost
            log.exception("%d audit entries could not be written at close", len(self._pending))

    async def _run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = self.interval
            except Exception:  # noqa: BLE001 - keep the entries, try again later
                log.exception("audit entries could not be written; retrying")
                delay = min(delay * 2, 30.0)
