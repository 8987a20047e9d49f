"""Long-running operations: jobs in the index that clients follow at /operations/{id}."""

from __future__ import annotations

import uuid
from datetime import datetime

from dicomhub import logs
from dicomhub.clock import utcnow
from dicomhub.errors import NotFound
from dicomhub.model import Operation
from dicomhub.storage.protocols import Jobs

MAX_ATTEMPTS = 5


class OperationsService:
    def __init__(self, index: Jobs):
        self.index = index

    async def start(
        self, kind: str, payload: dict | None = None, singleton: bool = False, id: str = ""
    ) -> str | None:
        """Queue a job; its operation id (for a singleton kind, that of the one already
        queued or running, if any). With an ``id`` of its own, None when that id was used."""
        payload = dict(payload or {})
        asked_by = logs.request_id.get()
        if asked_by is not None:  # the job's log lines name the request that queued it
            payload.setdefault(logs.PAYLOAD_KEY, asked_by)
        return await self.index.enqueue_job(
            id or uuid.uuid4().hex, kind, payload, MAX_ATTEMPTS, utcnow(), singleton
        )

    async def get(self, operation_id: str) -> Operation:
        found = await self.index.operation(operation_id)
        if found is None:
            raise NotFound(f"operation {operation_id} not found")
        return found

    async def queue(self) -> list[tuple[str, int, float, int]]:
        """Per type of pending job: (type, ready to run, seconds the oldest of them has been
        due (0: none is), running)."""
        now = utcnow()
        return [
            (kind, ready, (now - due).total_seconds() if due else 0.0, running)
            for kind, ready, due, running in await self.index.job_queue(now)
        ]

    async def purge(self, kind: str, before: datetime) -> None:
        """Forget finished operations of ``kind`` last updated before then."""
        await self.index.purge_operations(kind, before)
