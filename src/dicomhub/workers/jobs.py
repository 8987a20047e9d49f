"""Job runners: claim a job from the index, run its handler, keep its lease alive meanwhile,
then complete it, schedule a retry with backoff, or fail it after its last attempt.

Any number of runners, in any number of processes and nodes, share the index's jobs: a claim
gives one runner the job's lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), a runner renews the
lease while the handler works (a third of the lease time), and a job whose lease runs out --
its runner was killed -- is claimed again by another, which goes on from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from dicomhub import logs
from dicomhub.clock import utcnow
from dicomhub.model import Operation
from dicomhub.storage.protocols import Jobs

log = logging.getLogger(__name__)


class JobContext:
    """What a handler sees: its operation (payload, last checkpoint) and a way to report."""

    def __init__(self, operation: Operation):
        self.operation = operation
        self.percent = operation.percent_complete
        self.checkpoint = operation.checkpoint

    def progress(self, percent: int, checkpoint: dict[str, Any] | None = None) -> None:
        """Saved with the next lease renewal: where a resumed job goes on from."""
        self.percent = max(0, min(99, percent))
        self.checkpoint = checkpoint


Handler = Callable[[JobContext], Awaitable[dict | None]]


class JobRunner:
    def __init__(
        self,
        index: Jobs,
        handlers: dict[str, Handler],
        lease: float = 30.0,
        poll: float = 2.0,
        retry_base: float = 5.0,
    ):
        self.index = index
        self.handlers = handlers
        self.lease = timedelta(seconds=lease)
        self.poll = poll
        self.retry_base = retry_base
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    async def run_once(self) -> bool:
        """Claim one ready job and run it to its end; False when none was ready."""
        now = utcnow()
        operation = await self.index.claim_job(self.owner, now, now + self.lease)
        if operation is None:
            return False
        handler = self.handlers.get(operation.type)
        if handler is None:
            await self._finish(operation, None, f"no handler for jobs of type {operation.type}")
            return True
        context = JobContext(operation)
        # its log lines (and this runner's about it) name the job and the request that queued it
        ids = (logs.job_id.set(operation.id), logs.request_id.set(_asked_by(operation)))
        try:
            work = asyncio.create_task(handler(context), name=f"job {operation.id}")
            return await self._watch(operation, context, work)
        finally:
            logs.request_id.reset(ids[1])
            logs.job_id.reset(ids[0])

    async def _watch(self, operation: Operation, context: JobContext, work: asyncio.Task) -> bool:
        """Renew the lease while ``work`` runs, then finish the job."""
        try:
            while not (await asyncio.wait({work}, timeout=self.lease.total_seconds() / 3))[0]:
                now = utcnow()
                kept = await self.index.renew_job(
                    operation.id,
                    self.owner,
                    now,
                    now + self.lease,
                    context.percent,
                    context.checkpoint,
                )
                if not kept:
                    log.warning("lost the lease of job %s; stopping it", operation.id)
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work
                    return True
        except BaseException:
            work.cancel()  # this runner is stopping: the lease runs out, another resumes
            raise
        try:
            results, error = work.result(), None
        except Exception as exc:  # noqa: BLE001 - recorded in the operation, retried
            log.warning("job %s (%s) failed: %s", operation.id, operation.type, exc)
            results, error = None, f"{type(exc).__name__}: {exc}"
        await self._finish(operation, results, error)
        return True

    async def _finish(self, operation: Operation, results, error: str | None) -> None:
        retry_at = None
        if error is not None and operation.attempts < operation.max_attempts:
            delay = min(self.retry_base * 2 ** (operation.attempts - 1), 600)
            retry_at = utcnow() + timedelta(seconds=delay)
        await self.index.finish_job(operation.id, self.owner, utcnow(), results, error, retry_at)

    async def run_forever(self) -> None:
        while True:
            try:
                if await self.run_once():
                    continue
            except Exception:  # noqa: BLE001 - e.g. the index is unavailable: try again later
                log.exception("job runner")
            await asyncio.sleep(self.poll)


def _asked_by(operation: Operation) -> str | None:
    asked = operation.payload.get(logs.PAYLOAD_KEY) if isinstance(operation.payload, dict) else None
    return asked if isinstance(asked, str) else None


async def every(interval: float, action: Callable[[], Awaitable[Any]]) -> None:
    """Run ``action`` now and then every ``interval`` seconds, whatever it raises."""
    while True:
        try:
            await action()
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("scheduled %s", getattr(action, "__name__", action))
        await asyncio.sleep(interval)
