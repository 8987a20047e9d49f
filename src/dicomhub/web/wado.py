"""WADO-RS routes: instances, metadata, frames, bulk data (PS3.18 section 10.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.archive.retrieve import parse_frame_list
from dicomhub.dicom import codecs
from dicomhub.dicom.codecs import EXPLICIT_VR_LE
from dicomhub.dicom.mediatype import Choice, Item, MediaType, negotiate, parse_accept
from dicomhub.dicom.multipart import PART_END, closing, new_boundary, part_header
from dicomhub.errors import InvalidRequest, NotAcceptable, NotFound
from dicomhub.model import StoredInstance
from dicomhub.web import deidentified, zipped
from dicomhub.web.common import (
    Body,
    FileRange,
    StreamedResponse,
    archive,
    base_url,
    cache_headers,
    multipart_response,
    multipart_type,
    not_modified,
    not_modified_response,
    parse_range,
    pieces,
    require_json_accept,
    retrieve_scope,
    scope_of,
    vary,
    zero_copy,
)
from dicomhub.web.parts import DICOM, MultipartBody, Part, primed

OCTETS = "application/octet-stream"
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = "7FE00010"


async def retrieve(request: Request) -> Response:
    scope = retrieve_scope(request)
    deidentify = deidentified.asked(request)  # a bad parameter: 400 before anything is read
    the_archive = archive(request)
    instances = await the_archive.retrieve.instances(scope)
    single = scope.sop is not None
    accept = parse_accept(request.headers.get("accept"))
    at = zipped.zip_range(accept)
    if at is not None:  # a ZIP, unless a range before it can be served
        try:
            if at == 0:
                raise NotAcceptable("application/zip first")
            choice, parts = await negotiate_parts(the_archive, instances, accept[:at], single)
        except NotAcceptable:
            zip_accept = zipped.zip_accept(accept[at])
            _, parts = await negotiate_parts(the_archive, instances, zip_accept, single=False)
            return await zipped.response(request, the_archive, scope, parts, deidentify)
    else:
        choice, parts = await negotiate_parts(the_archive, instances, accept, single)
    if deidentify is not None:  # served as stored, it would hand out what was asked removed
        raise InvalidRequest(
            f"{deidentified.FLAG}=true applies to ZIP downloads (Accept: application/zip) only; "
            "nothing was returned"
        )
    headers = {"Vary": vary(request)}
    if single:
        as_stored = not choice.multipart and not parts[0].converted
        headers = cache_headers(
            instances[0], "" if as_stored else parts[0].media, weak=choice.multipart
        )
        headers["Vary"] = vary(request)
        if not_modified(request, headers["ETag"]):
            return not_modified_response(headers)
    local = zero_copy(request)
    if not choice.multipart:
        return await single_part(request, parts[0], headers)
    boundary = new_boundary()
    body = MultipartBody(the_archive.retrieve, parts, boundary, local)
    await body.prime()  # a missing blob or an unavailable store: its status, not a cut response
    if all(p.size is not None for p in parts):
        # The length is known before the first byte: clients can show progress, and the body
        # is sent without chunked framing.
        heads = sum(len(part_header(boundary, p.media)) + len(PART_END) for p in parts)
        length = heads + sum(p.size for p in parts) + len(closing(boundary))
        headers["Content-Length"] = str(length)
    return StreamedResponse(
        body.pieces(), media_type=multipart_type(DICOM, boundary), headers=headers
    )


async def negotiate_parts(
    the_archive, instances: list[StoredInstance], accept: list[MediaType], single: bool
) -> tuple[Choice, list[Part]]:
    """How each instance is served for ``accept`` (PS3.18 8.7): as stored or converted."""
    pixels = the_archive.pixels
    items = [
        Item(i.transfer_syntax, pixels.targets(i, None), note=pixels.too_large(i))
        for i in instances
    ]
    choice = negotiate(accept, items, single)
    if single and choice.served[0][1] != instances[0].transfer_syntax:
        # a conversion: its header tells exactly what the instance can be converted to
        targets = pixels.targets(instances[0], await pixels.info(instances[0]))
        choice = negotiate(accept, [replace(items[0], targets=targets)], single)
    parts = [Part(the_archive, i, ts) for i, (_, ts) in zip(instances, choice.served, strict=True)]
    return choice, parts


async def single_part(
    request: Request, part: Part, headers: dict[str, str], media_type: str | None = None
) -> Response:
    """One instance as the whole body (typed ``media_type``, else its part's type): the
    stored file (its length known), or its conversion, streamed."""
    content = await part.open(fallback=False, local=zero_copy(request))
    if part.size is not None:
        headers["Content-Length"] = str(part.size)
    return StreamedResponse(pieces(content), media_type=media_type or part.media, headers=headers)


async def metadata(request: Request) -> Response:
    media_type = require_json_accept(request)
    result = await archive(request).retrieve.metadata(retrieve_scope(request), base_url(request))
    headers = {"ETag": result.etag, "Vary": vary(request)}
    if not_modified(request, result.etag):
        return not_modified_response(headers)
    return Response(result.body, media_type=media_type, headers=headers)


async def frames(request: Request) -> Response:
    scope = scope_of(request)
    numbers = parse_frame_list(request.path_params["frames"])
    the_archive = archive(request)
    instance = (await the_archive.retrieve.instances(scope))[0]
    media, syntax, multipart = await _negotiate_frames(
        request, the_archive, instance, single_allowed=len(numbers) == 1
    )
    headers = cache_headers(instance, f"{media}; transfer-syntax={syntax}", weak=multipart)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    data = await the_archive.pixels.frames(instance, numbers, syntax)
    if not multipart:
        return Response(data[0], media_type=f"{media}; transfer-syntax={syntax}", headers=headers)
    return multipart_response(data, f"{media}; transfer-syntax={syntax}", headers)


async def _negotiate_frames(request, the_archive, instance, single_allowed: bool):
    """(media type, transfer syntax, multipart) the frames of ``instance`` are served in."""
    pixels = the_archive.pixels
    if not instance.parse_on_read and instance.frames is None:
        raise NotFound(f"SOP instance {instance.id.sop} has no pixel data")
    stored = codecs.frame_syntax(instance.transfer_syntax)
    item = Item(stored, pixels.targets(instance, None), True, pixels.too_large(instance))
    accept = parse_accept(request.headers.get("accept"))
    choice = negotiate(accept, [item], single_allowed=single_allowed)
    if choice.served[0][1] != stored:  # a conversion: the header tells what is possible
        targets = pixels.targets(instance, await pixels.info(instance))
        choice = negotiate(accept, [replace(item, targets=targets)], single_allowed)
    media, syntax = choice.served[0]
    return media, syntax, choice.multipart


async def bulkdata(request: Request) -> Response:
    scope = scope_of(request)
    retrieve = archive(request).retrieve
    instance = (await retrieve.instances(scope))[0]
    path = request.path_params["path"]
    accept = parse_accept(request.headers.get("accept"))
    # one representation per Accept (negotiation is a function of it and the instance); weak:
    # a multipart answer's boundary is new each time
    representation = "bulkdata; " + request.headers.get("accept", "*/*")
    headers = cache_headers(instance, representation, weak=True)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    location = retrieve.bulkdata_location(instance, path)
    if location is None:
        data = await retrieve.bulkdata_by_parsing(instance, path)

        async def parsed(start: int, size: int) -> AsyncIterator[bytes]:
            yield data[start : start + size]

        async def from_memory(start: int, size: int) -> Body:
            return parsed(start, size)

        return await _bulk_response(request, accept, len(data), headers, from_memory)
    offset, length = location
    if path.strip("/").upper() == PIXEL_DATA and (
        length == UNDEFINED_LENGTH or _pixel_conversion_asked(accept)
    ):  # pixel data as frames, one part each, in the syntax negotiated
        media, syntax, _ = await _negotiate_frames(
            request, archive(request), instance, single_allowed=False
        )
        data = await archive(request).pixels.frames(instance, None, syntax)
        return multipart_response(data, f"{media}; transfer-syntax={syntax}", headers)

    async def stored(start: int, size: int) -> Body:
        if zero_copy(request):
            files = await retrieve.local_files([instance])
            if files is not None:
                return FileRange(files[0], offset + start, size)
        return await primed(retrieve.content(instance, offset + start, size))

    return await _bulk_response(request, accept, length, headers, stored)


async def _bulk_response(request, accept, size, headers, content) -> Response:
    """``await content(start, length)`` is that range of the value (its store has answered)."""
    # Bulk data other than pixel data has no transfer syntax: ignore the parameter.
    accept = [MediaType(m.type, {"type": m.params.get("type", "*/*")}, m.q) for m in accept]
    choice = negotiate(accept, [Item(EXPLICIT_VR_LE, frames=True)], single_allowed=True)
    ranged = parse_range(request.headers.get("range"), size)
    start, length = ranged or (0, size)
    status = 206 if ranged else 200
    if ranged:
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Accept-Ranges"] = "bytes"
    value = await content(start, length)
    if not choice.multipart:
        headers["Content-Length"] = str(length)
        return StreamedResponse(
            pieces(value), status_code=status, media_type=OCTETS, headers=headers
        )
    boundary = new_boundary()
    head, tail = part_header(boundary, OCTETS), PART_END + closing(boundary)
    headers["Content-Length"] = str(len(head) + length + len(tail))

    async def body() -> AsyncIterator[bytes | FileRange]:
        yield head
        async for piece in pieces(value):
            yield piece
        yield tail

    return StreamedResponse(
        body(), status_code=status, media_type=multipart_type(OCTETS, boundary), headers=headers
    )


def _pixel_conversion_asked(accept: list[MediaType]) -> bool:
    """Does an Accept range for native pixel data name a syntax or an image media type?"""
    for media in accept:
        kind = media.type
        if kind.startswith("multipart/"):
            kind = media.params.get("type", "*/*")
        syntax = media.params.get("transfer-syntax", "*")
        if kind.startswith("image/") or syntax not in ("*", EXPLICIT_VR_LE):
            return True
    return False
