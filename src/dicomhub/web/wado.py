"""WADO-RS routes: instances, metadata, frames, bulk data (PS3.18 section 10.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomhub.archive.retrieve import parse_frame_list
from dicomhub.dicom.mediatype import (
    EXPLICIT_VR_LE,
    PIXEL_MEDIA_TYPES,
    MediaType,
    Offer,
    negotiate,
    parse_accept,
)
from dicomhub.dicom.multipart import PART_END, closing, new_boundary, part_header
from dicomhub.web.common import (
    archive,
    base_url,
    cache_headers,
    not_modified,
    not_modified_response,
    parse_range,
    require_json_accept,
    scope_of,
)

DICOM = "application/dicom"
OCTETS = "application/octet-stream"
UNDEFINED_LENGTH = 0xFFFFFFFF
_LITTLE_ENDIAN_NATIVE = {"1.2.840.10008.1.2", EXPLICIT_VR_LE, "1.2.840.10008.1.2.1.99"}


async def retrieve(request: Request) -> Response:
    scope = scope_of(request)
    instances = await archive(request).retrieve.instances(scope)
    choice = negotiate(
        parse_accept(request.headers.get("accept")),
        [[(DICOM, i.transfer_syntax)] for i in instances],
        single_allowed=scope.sop is not None,
    )
    content = archive(request).retrieve.content
    if not choice.multipart:
        instance = instances[0]
        headers = cache_headers(instance)
        if not_modified(request, headers["ETag"]):
            return not_modified_response(headers["ETag"])
        headers["Content-Length"] = str(instance.size)
        media = f"{DICOM}; transfer-syntax={instance.transfer_syntax}"
        return StreamingResponse(await primed(content(instance)), media_type=media, headers=headers)
    boundary = new_boundary()

    heads = [
        part_header(boundary, f"{media}; transfer-syntax={syntax}")
        for media, syntax in choice.served
    ]

    first = await primed(content(instances[0]))

    async def body() -> AsyncIterator[bytes]:
        for n, (instance, head) in enumerate(zip(instances, heads, strict=True)):
            yield head
            async for chunk in first if n == 0 else content(instance):
                yield chunk
            yield PART_END
        yield closing(boundary)

    headers = cache_headers(instances[0]) if scope.sop else {}
    # The length is known before the first byte: clients can show progress, and the body is
    # sent without chunked framing.
    length = sum(len(h) + i.size + len(PART_END) for h, i in zip(heads, instances, strict=True))
    headers["Content-Length"] = str(length + len(closing(boundary)))
    return StreamingResponse(body(), media_type=_multipart(DICOM, boundary), headers=headers)


async def metadata(request: Request) -> Response:
    media_type = require_json_accept(request)
    result = await archive(request).retrieve.metadata(scope_of(request), base_url(request))
    if not_modified(request, result.etag):
        return not_modified_response(result.etag)
    return Response(result.body, media_type=media_type, headers={"ETag": result.etag})


async def frames(request: Request) -> Response:
    scope = scope_of(request)
    numbers = parse_frame_list(request.path_params["frames"])
    retrieve = archive(request).retrieve
    instance = (await retrieve.instances(scope))[0]
    choice = negotiate(
        parse_accept(request.headers.get("accept")),
        [frame_offers(instance.transfer_syntax)],
        single_allowed=len(numbers) == 1,
    )
    media, syntax = choice.served[0]
    headers = cache_headers(instance)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers["ETag"])
    data = await retrieve.frames(instance, numbers)
    if not choice.multipart:
        return Response(data[0], media_type=f"{media}; transfer-syntax={syntax}", headers=headers)
    return _parts(data, f"{media}; transfer-syntax={syntax}", headers)


async def bulkdata(request: Request) -> Response:
    scope = scope_of(request)
    retrieve = archive(request).retrieve
    instance = (await retrieve.instances(scope))[0]
    path = request.path_params["path"]
    accept = parse_accept(request.headers.get("accept"))
    headers = cache_headers(instance)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers["ETag"])
    location = retrieve.bulkdata_location(instance, path)
    if location is None:
        data = await retrieve.bulkdata_by_parsing(instance, path)

        async def content(start: int, size: int) -> AsyncIterator[bytes]:
            yield data[start : start + size]

        return await _bulk_response(request, accept, len(data), headers, content)
    offset, length = location
    if length == UNDEFINED_LENGTH:  # encapsulated pixel data: its frames, one part each
        choice = negotiate(accept, [frame_offers(instance.transfer_syntax)], single_allowed=False)
        media, syntax = choice.served[0]
        data = await retrieve.frames(instance, None)
        return _parts(data, f"{media}; transfer-syntax={syntax}", headers)
    return await _bulk_response(
        request,
        accept,
        length,
        headers,
        lambda start, size: retrieve.content(instance, offset + start, size),
    )


async def _bulk_response(request, accept, size, headers, content) -> Response:
    """``content(start, length)`` streams that range of the value."""
    # Bulk data other than pixel data has no transfer syntax: ignore the parameter.
    accept = [MediaType(m.type, {"type": m.params.get("type", "*/*")}, m.q) for m in accept]
    choice = negotiate(accept, [[(OCTETS, "*")]], single_allowed=True)
    ranged = parse_range(request.headers.get("range"), size)
    start, length = ranged or (0, size)
    status = 206 if ranged else 200
    if ranged:
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Accept-Ranges"] = "bytes"
    if not choice.multipart:
        headers["Content-Length"] = str(length)
        return StreamingResponse(
            await primed(content(start, length)),
            status_code=status,
            media_type=OCTETS,
            headers=headers,
        )
    boundary = new_boundary()
    value = await primed(content(start, length))

    async def body() -> AsyncIterator[bytes]:
        yield part_header(boundary, OCTETS)
        async for piece in value:
            yield piece
        yield PART_END
        yield closing(boundary)

    return StreamingResponse(
        body(), status_code=status, media_type=_multipart(OCTETS, boundary), headers=headers
    )


async def primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream`` with its first chunk read already: a missing blob or an unavailable store
    fails the request with its proper status before the response starts."""
    first = await anext(stream, None)

    async def whole() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        async for chunk in stream:
            yield chunk

    return whole()


def frame_offers(transfer_syntax: str) -> list[Offer]:
    """How stored frames can be served without transcoding (PS3.18 table 8.7.3-2)."""
    offers: list[Offer] = []
    if transfer_syntax in PIXEL_MEDIA_TYPES:
        offers.append((PIXEL_MEDIA_TYPES[transfer_syntax], transfer_syntax))
    if transfer_syntax in _LITTLE_ENDIAN_NATIVE:  # identical pixel bytes
        offers.append((OCTETS, EXPLICIT_VR_LE))
    offers.append((OCTETS, transfer_syntax))
    return offers


def _parts(data: list[bytes], part_type: str, headers: dict[str, str]) -> Response:
    boundary = new_boundary()
    chunks = []
    for frame in data:
        chunks += [part_header(boundary, part_type), frame, PART_END]
    chunks.append(closing(boundary))
    media = part_type.split(";")[0]
    return Response(b"".join(chunks), media_type=_multipart(media, boundary), headers=headers)


def _multipart(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'
