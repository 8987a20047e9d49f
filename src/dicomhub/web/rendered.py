"""Rendered and thumbnail resources (PS3.18 10.4.1.1.3 and 10.4.1.1.4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomhub.archive.pixels import has_pixels
from dicomhub.archive.retrieve import parse_frame_list
from dicomhub.dicom import render
from dicomhub.dicom.codecs import SYNTAXES
from dicomhub.dicom.mediatype import MediaType, parse_accept
from dicomhub.dicom.multipart import PART_END, closing, new_boundary, part_header
from dicomhub.errors import NotAcceptable, NotFound
from dicomhub.model import StoredInstance
from dicomhub.web.common import (
    archive,
    base_url,
    cache_headers,
    multipart_response,
    multipart_type,
    not_modified,
    not_modified_response,
    scope_of,
)

ENCAPSULATED_DOCUMENT, DOCUMENT_MIME = "00420011", "00420012"


def choose_media(request: Request, offered: tuple[str, ...]) -> tuple[str, bool]:
    """(media type, multipart) for the first Accept range one of ``offered`` matches."""
    for media in parse_accept(request.headers.get("accept")) or [MediaType("*/*")]:
        multipart = media.type.startswith("multipart/")
        wanted = MediaType(media.params.get("type", "*/*") if multipart else media.type)
        for candidate in offered:
            if wanted.matches(candidate):
                return candidate, multipart
    raise NotAcceptable(f"this resource is rendered as {', '.join(offered)}")


async def rendered(request: Request) -> Response:
    scope = scope_of(request)
    the_archive = archive(request)
    instances = await the_archive.retrieve.instances(scope)
    if scope.sop is None:
        return await _several(request, [i for i in instances if has_pixels(i)])
    instance = instances[0]
    # one representation per Accept and parameters (rendering is a function of them)
    representation = f"rendered; {request.headers.get('accept', '*/*')}; {request.url.query}"
    headers = cache_headers(instance, representation, weak=True)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    if "frames" not in request.path_params and not has_pixels(instance):
        return await _document(request, instance, headers)
    stored = SYNTAXES.get(instance.transfer_syntax)
    if stored and stored.media.startswith("video/"):  # video is its own rendering
        media, _ = choose_media(request, (stored.media,))
        data = b"".join(await the_archive.retrieve.frames(instance, None))
        return Response(data, media_type=media, headers=headers)
    media, multipart = choose_media(request, render.MEDIA_TYPES)
    params = render.parse_params(request.query_params, media)
    renderer = the_archive.render
    if "frames" in request.path_params:
        numbers = parse_frame_list(request.path_params["frames"])
        if len(numbers) > 1 and media != "image/gif":
            images = [await renderer.frames(instance, [n], params) for n in numbers]
            return multipart_response(images, media, headers)
        image = await renderer.frames(instance, numbers, params)
    else:
        image = await renderer.instance(instance, params)
    if multipart:
        return multipart_response([image], media, headers)
    return Response(image, media_type=media, headers=headers)


async def _several(request: Request, instances: list[StoredInstance]) -> Response:
    """A study or series: one rendered part per instance with pixel data, in order."""
    if not instances:
        raise NotFound("nothing here has pixel data to render")
    media, _ = choose_media(request, render.MEDIA_TYPES)
    params = render.parse_params(request.query_params, media)
    renderer = archive(request).render
    first = await renderer.instance(instances[0], params)  # errors before the response starts
    boundary = new_boundary()

    async def body() -> AsyncIterator[bytes]:
        for n, instance in enumerate(instances):
            image = first if n == 0 else await renderer.instance(instance, params)
            yield part_header(boundary, media) + image + PART_END
        yield closing(boundary)

    return StreamingResponse(body(), media_type=multipart_type(media, boundary))


async def _document(request: Request, instance: StoredInstance, headers) -> Response:
    """An encapsulated document (PDF, CDA, STL, ...) is rendered as itself."""
    retrieve = archive(request).retrieve
    meta = (await retrieve.metadata(scope_of(request), base_url(request))).body
    mime = (json.loads(meta)[0].get(DOCUMENT_MIME, {}).get("Value") or [""])[0]
    if not mime:
        raise NotFound(f"SOP instance {instance.id.sop} has no pixel data or document to render")
    media, _ = choose_media(request, (mime,))
    location = retrieve.bulkdata_location(instance, ENCAPSULATED_DOCUMENT)
    if location is None:
        data = await retrieve.bulkdata_by_parsing(instance, ENCAPSULATED_DOCUMENT)
    else:
        data = await retrieve.blobs.read(instance.blob_key, *location)
    return Response(
        data.rstrip(b"\x00") if mime == "application/pdf" else data,
        media_type=media,
        headers=headers,
    )


async def thumbnail(request: Request) -> Response:
    scope = scope_of(request)
    thumbnails = archive(request).thumbnails
    media, _ = choose_media(request, render.MEDIA_TYPES)
    params = render.parse_params(request.query_params, media, thumbnails.default)
    frame = None
    if "frames" in request.path_params:
        numbers = parse_frame_list(request.path_params["frames"])
        if len(numbers) != 1:
            raise NotAcceptable("a thumbnail shows one frame")
        frame = numbers[0]
    image = await thumbnails.of(scope, frame, params)
    return Response(image, media_type=media, headers={"Vary": "Accept"})
