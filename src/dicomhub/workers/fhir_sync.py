"""The FHIR sync loop of a node: steps through the change feed while it holds the sync, backs off
on transient FHIR errors (retrying the same changes, so order is kept), and waits when caught up
or when another node holds the sync."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from dicomhub.archive.fhir_sync import FhirSync
from dicomhub.errors import Unavailable
from dicomhub.fhir.client import FhirError

log = logging.getLogger(__name__)
MAX_BACKOFF = 60.0


async def run_fhir_sync(sync: FhirSync, poll_interval: float) -> None:
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    backoff = 1.0
    try:
        while True:
            try:
                step = await sync.step(owner)
            except (FhirError, Unavailable) as exc:
                log.warning("FHIR sync: %s; retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            backoff = 1.0
            if not step.held or not step.changes:
                await asyncio.sleep(poll_interval)
    finally:
        await sync.release(owner)
