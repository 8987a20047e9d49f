"""The webhook delivery loops of a node: each takes the lease of a due subscription, delivers
what it has pending (in order), lets it go, and takes the next; idle, it waits. Several loops
per process, any number of processes and nodes: a dead or slow receiver holds one loop for at
most its timeout per attempt, never the others, and never the write path (which writes nothing
for webhooks: the change feed is their outbox)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from dicomhub.archive.webhooks import WebhookService

log = logging.getLogger(__name__)


async def run_webhooks(service: WebhookService, concurrency: int, poll_interval: float) -> None:
    node = f"{socket.gethostname()}:{os.getpid()}"
    await asyncio.gather(
        *(
            _loop(service, f"{node}:{uuid.uuid4().hex[:8]}", poll_interval)
            for _ in range(concurrency)
        )
    )


async def _loop(service: WebhookService, owner: str, poll_interval: float) -> None:
    while True:
        try:
            if await service.step(owner):
                continue
        except Exception:  # noqa: BLE001 - e.g. the index is unavailable: try again later
            log.exception("webhook delivery")
        await asyncio.sleep(poll_interval)
