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
from dicomhub.errors import Unavailable

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0  # seconds between attempts while the index is unavailable


async def run_webhooks(service: WebhookService, concurrency: int, poll_interval: float) -> None:
    node = f"{socket.gethostname()}:{os.getpid()}"
    await asyncio.gather(
        *(
            _loop(service, f"{node}:{uuid.uuid4().hex[:8]}", poll_interval)
            for _ in range(concurrency)
        )
    )


async def _loop(service: WebhookService, owner: str, poll_interval: float) -> None:
    wait = poll_interval
    while True:
        try:
            worked = await service.step(owner)
            wait = poll_interval
            if worked:
                continue
        except Unavailable as exc:  # the index: waits doubling, so an outage logs little
            wait = min(MAX_BACKOFF, max(wait * 2, 1.0))
            log.warning("webhook delivery: %s; retrying in %.0f s", exc, wait)
        except Exception:  # noqa: BLE001 - a bug: logged, the loop goes on
            log.exception("webhook delivery")
        await asyncio.sleep(wait)
