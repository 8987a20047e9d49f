"""WADO-URI (PS3.18 chapter 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``
for legacy viewers, reporting systems and IHE XDS-I consumers.

The same machinery as WADO-RS serves it: the instance as stored or converted (negotiated as a
single ``application/dicom`` part), or rendered by the rendering service. Nothing here is a
second path to the data.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.archive.pixels import has_pixels
from dicomhub.dicom import codecs, wado_uri
from dicomhub.dicom.deidentify import Options
from dicomhub.dicom.mediatype import MediaType, parse_accept
from dicomhub.errors import InvalidRequest
from dicomhub.model import Scope, StoredInstance
from dicomhub.web import deidentified
from dicomhub.web.audit import note
from dicomhub.web.common import archive, cache_headers, not_modified, not_modified_response
from dicomhub.web.parts import Part
from dicomhub.web.wado import negotiate_parts, single_part


async def wado(request: Request) -> Response:
    uri = wado_uri.parse(request.query_params.multi_items())
    note(request, study=uri.study, series=uri.series, instance=uri.sop)
    the_archive = archive(request)
    scope = Scope(study=uri.study, series=uri.series, sop=uri.sop)
    instance = (await the_archive.retrieve.instances(scope))[0]
    offers = wado_uri.offered(_renderable(the_archive, instance), has_pixels(instance))
    media = wado_uri.select(uri, parse_accept(request.headers.get("accept")), offers)
    if uri.anonymize:
        await deidentified.refuse_burned_in(the_archive, scope)
        deidentified.record(request, Options())
    if media == wado_uri.DICOM:
        return await _dicom(request, uri, instance)
    return await _rendered(request, uri, instance, media)


def _renderable(the_archive, instance: StoredInstance) -> bool:
    """Can the instance's pixels be rendered here (judged before its header is read)?"""
    source = codecs.frame_syntax(instance.transfer_syntax)
    syntax = codecs.SYNTAXES.get(source)
    video = bool(syntax and syntax.media.startswith("video/"))
    return (
        has_pixels(instance)
        and not the_archive.pixels.too_large(instance)
        and codecs.decodable(source)
        and not video
    )


async def _dicom(request: Request, uri: wado_uri.UriRequest, instance) -> Response:
    """Retrieve DICOM Instance (9.4): as stored, or converted to ``transferSyntax`` (absent:
    the PS3.18 8.7.3 default, as WADO-RS serves ``application/dicom``)."""
    if uri.rendering:
        raise InvalidRequest(
            f"{', '.join(uri.rendering)} apply to rendered images only, not to "
            f"contentType={wado_uri.DICOM} (PS3.18 9.5.1.2)"
        )
    params = {"transfer-syntax": uri.transfer_syntax} if uri.transfer_syntax else {}
    accept = [MediaType(wado_uri.DICOM, params)]
    _, [part] = await negotiate_parts(archive(request), [instance], accept, single=True)
    if uri.anonymize:
        return await _anonymized(request, instance, part)
    headers = cache_headers(instance, "" if not part.converted else part.media)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    # UIDs only in the name: no patient data in a download's file name
    headers["Content-Disposition"] = f'attachment; filename="{instance.id.sop}.dcm"'
    return await single_part(request, part, headers, wado_uri.DICOM)


async def _anonymized(request: Request, instance: StoredInstance, part: Part) -> Response:
    """anonymize=yes (PS3.18 9.4, 9.4.2.3): the instance (as stored or converted) de-identified
    by the Basic Profile under the server's key, so the UIDs are new (the same for every
    request under that key: the instances of a study fetched one by one still refer to each
    other)."""
    the_archive = archive(request)
    representation = f"anonymize=yes; {part.media}; {deidentified.key_tag(the_archive)}"
    headers = cache_headers(instance, representation)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    source = await part.open(fallback=False)
    data, ds = await deidentified.deidentified(source, deidentified.context(the_archive), Options())
    # the new UID in the name: the stored one would identify the instance
    headers["Content-Disposition"] = f'attachment; filename="{ds.SOPInstanceUID}.dcm"'
    return Response(data, media_type=wado_uri.DICOM, headers=headers)


async def _rendered(request: Request, uri: wado_uri.UriRequest, instance, media: str):
    """Retrieve Rendered Instance (9.5): one frame (``frameNumber``, else the first; an animated
    GIF of every frame when image/gif is asked without one). With anonymize=yes, the same
    image: a rendered image carries no attribute, and the Basic Profile keeps the pixel data
    and every attribute rendering reads (pixel module, windows, LUTs), so the image rendered
    from the de-identified instance is this one (burned-in text: see refuse_burned_in)."""
    if uri.transfer_syntax is not None:
        raise InvalidRequest(
            f"transferSyntax applies to contentType={wado_uri.DICOM} only, not to {media}"
        )
    representation = f"wado-uri; {media}; {request.url.query}"
    headers = cache_headers(instance, representation, weak=True)
    if not_modified(request, headers["ETag"]):
        return not_modified_response(headers)
    the_archive = archive(request)
    info = await the_archive.pixels.info(instance)
    if uri.frame is not None and info is not None and uri.frame > info.frames:
        raise InvalidRequest(
            f"frameNumber {uri.frame} does not exist; the instance has {info.frames} frame(s)"
        )
    params = uri.params(media, info.rows, info.columns) if info else uri.params(media, 1, 1)
    render = the_archive.render
    if uri.frame is not None:
        image = await render.frames(instance, [uri.frame], params)
    else:
        image = await render.instance(instance, params)
    return Response(image, media_type=media, headers=headers)
