"""QIDO-RS routes (PS3.18 section 10.6): search for studies, series and instances."""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.dicom.json_model import dumps
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import Query, parse_query
from dicomhub.dicom.uids import require_uid
from dicomhub.telemetry import instruments
from dicomhub.web.common import (
    archive,
    base_url,
    header_text,
    partition_of,
    require_json_accept,
)

MORE_RESULTS = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


async def _query(request: Request, level: Level) -> tuple[Query, dict[str, str]]:
    """The query, and the headers its extended query tags call for."""
    p = request.path_params
    settings = request.app.state.search
    keys, tags = await archive(request).extended_tags.searchable()
    query = parse_query(
        request.query_params.multi_items(),
        level,
        study=require_uid(p["study"], "StudyInstanceUID") if "study" in p else None,
        series=require_uid(p["series"], "SeriesInstanceUID") if "series" in p else None,
        max_limit=settings.qido_max_limit,
        strict=settings.qido_strict,
        extended=keys,
    )
    query.partition = partition_of(request)
    erroneous = [
        tags[c.key.extended].keyword
        for c in query.conditions
        if c.key.extended is not None and tags[c.key.extended].errors
    ]
    # Some instances' values of these tags failed validation: they are not found by them.
    headers = {"erroneous-dicom-attributes": ",".join(erroneous)} if erroneous else {}
    return query, headers


async def _search(request: Request, level: Level) -> Response:
    media = require_json_accept(request)
    query, headers = await _query(request, level)
    service = base_url(request).rstrip("/")
    started = time.perf_counter()
    page = await archive(request).search.search(query, service)
    instruments.searched(level.name.lower(), "search", time.perf_counter() - started)
    texts = []
    if query.ignored:
        texts.append(
            "The following query parameters were ignored: " + ", ".join(sorted(set(query.ignored)))
        )
    if page.more and query.capped:
        texts.append(MORE_RESULTS)
    if texts:
        headers["Warning"] = ", ".join(f'299 {service}: "{header_text(t)}"' for t in texts)
    headers["Vary"] = "Accept"  # application/dicom+json or application/json
    return Response(dumps(page.results), media_type=media, headers=headers)


async def _count(request: Request, level: Level) -> Response:
    query, headers = await _query(request, level)
    started = time.perf_counter()
    total = await archive(request).search.count(query)
    instruments.searched(level.name.lower(), "count", time.perf_counter() - started)
    return Response(json.dumps({"count": total}), media_type="application/json", headers=headers)


def search(level: Level):
    async def endpoint(request: Request) -> Response:
        return await _search(request, level)

    return endpoint


def count(level: Level):
    """Number of matches, as ``{"count": n}`` (the ``/count`` resources, as dcm4chee's)."""

    async def endpoint(request: Request) -> Response:
        return await _count(request, level)

    return endpoint
