"""The live event stream (non-standard; issue 23 point 4): the webhooks' events as Server-Sent
Events, for dashboards and scripts, with the read data action.

``GET /v{n}/events`` streams the events after a change-feed sequence (``after``, or the
``Last-Event-ID`` header a reconnecting EventSource sends; default: from now on), each as one
SSE message (``event``: its type, ``data``: the CloudEvent JSON). An image event's ``id`` is its
change-feed sequence; StudyStable, SeriesStable and OperationFinished messages have no ``id``
(their CloudEvent id is what a client de-duplicates by), so the id a client resumes from stays
a sequence. How the stream works those out without a subscription: archive/webhook_stream.py.
Optional ``eventTypes`` (default: the image events), ``partition``, ``modality`` and
``sopClassUid`` (comma-separated values) filter as a subscription's do. A stream ends after
``--event-stream-seconds``: the client resumes from the last id it got, missing no image event
(so a server shutting down is not held by open streams); a comment line every few seconds keeps
proxies from closing a quiet one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from dicomhub.clock import monotonic
from dicomhub.errors import InvalidRequest
from dicomhub.model import READ
from dicomhub.web.access import granted_partitions
from dicomhub.web.common import MAX_OFFSET, archive, param

KEEPALIVE = 10.0  # seconds without an event before a comment line is sent
SEQUENCE = re.compile(r"[0-9]{1,16}", re.ASCII)
FILTERS = ("partition", "modality", "sopClassUid")


async def stream(request: Request) -> StreamingResponse:
    service = archive(request).webhooks
    query = request.query_params
    types, filter = service.stream_query(
        param(query, "eventTypes"),
        {k: v for k in FILTERS if (v := param(query, k)) is not None},
        granted_partitions(request.scope, READ),  # a partition-scoped reader: its own only
    )
    live = await service.stream(_after(request), types, filter)
    settings = service.settings

    async def messages() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"  # reconnect after a second when the stream ends
        started = last_sent = monotonic()
        while monotonic() - started < settings.stream_seconds:
            found, more = await live.next()
            for id, type, body in found:
                # no id for stable and operation events: Last-Event-ID stays a sequence
                head = b"id: %s\n" % id.encode() if id is not None else b""
                yield head + b"event: %s\ndata: %s\n\n" % (type.encode(), body)
                last_sent = monotonic()
            if more:
                continue
            if monotonic() - last_sent >= KEEPALIVE:
                yield b": keepalive\n\n"
                last_sent = monotonic()
            await asyncio.sleep(settings.poll_interval)

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _after(request: Request) -> int | None:
    """The sequence to stream after: ``after``, else ``Last-Event-ID``, else None (now)."""
    raw = param(request.query_params, "after")
    name = "after"
    if raw is None:
        raw, name = request.headers.get("last-event-id"), "Last-Event-ID"
    if raw is None or (name != "after" and not raw.strip()):
        return None
    if not SEQUENCE.fullmatch(raw.strip()) or int(raw) > MAX_OFFSET:
        raise InvalidRequest(f"{name} is a change-feed sequence number, not {raw[:40]!r}")
    return int(raw)
