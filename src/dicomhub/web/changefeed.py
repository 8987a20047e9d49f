"""Change feed routes (Microsoft's API): /v1 pages by sequence, /v2 by time window."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.clock import isoformat
from dicomhub.errors import InvalidRequest
from dicomhub.model import ChangeFeedEntry
from dicomhub.web.common import archive, page, param, time_param, version

LIMITS = {1: (10, 100), 2: (100, 200)}  # (default, maximum) per API version


async def changefeed(request: Request) -> Response:
    q = request.query_params
    offset, limit = page(request, *LIMITS[version(request)])
    metadata = _bool(q, "includeMetadata")
    feed = archive(request).changefeed
    if version(request) == 1:
        entries = await feed.by_sequence(offset, limit, metadata)
    else:
        start, end = time_param(q, "startTime"), time_param(q, "endTime")
        if start and end and end <= start:
            raise InvalidRequest("endTime must be after startTime")
        entries = await feed.by_time(start, end, offset, limit, metadata)
    return _json([_entry(e, metadata) for e in entries])


async def latest(request: Request) -> Response:
    metadata = _bool(request.query_params, "includeMetadata")
    entry = await archive(request).changefeed.latest(metadata)
    return _json(_entry(entry, metadata) if entry else None)


def _entry(e: ChangeFeedEntry, metadata: bool) -> dict:
    out = {
        "sequence": e.sequence,
        "partitionName": e.id.partition,
        "studyInstanceUid": e.id.study,
        "seriesInstanceUid": e.id.series,
        "sopInstanceUid": e.id.sop,
        "action": e.action.name.lower(),
        "timestamp": isoformat(e.timestamp),
        "state": e.state,
    }
    if metadata:
        out["metadata"] = _metadata_json(e.metadata)
    return out


def _metadata_json(stored: bytes | None):
    if stored is None:
        return None
    # Change-feed metadata carries no BulkDataURIs: they need a request's base URL.
    data = json.loads(stored)
    for element in _elements(data):
        element.pop("BulkDataURI", None)
    return data


def _elements(dataset: dict):
    for element in dataset.values():
        yield element
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                yield from _elements(item)


def _json(data) -> Response:
    return Response(json.dumps(data, separators=(",", ":")).encode(), media_type="application/json")


def _bool(q, name: str) -> bool:
    raw = param(q, name)
    if raw is None:
        return True
    if raw.lower() not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false")
    return raw.lower() == "true"
