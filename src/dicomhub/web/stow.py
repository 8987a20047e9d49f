"""STOW-RS routes: POST /v{n}/studies[/{study}] (PS3.18 section 10.5), and upsert: PUT on the
same paths, with the same bodies and answers, replaces an instance stored already (a new
version) where POST refuses it (45070), as the Azure service does.

The request body is split into parts here, as it arrives (a single application/dicom body is
one part); the archive stores each part while the next ones are received."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.archive.spool import PartBody
from dicomhub.archive.store import Part
from dicomhub.dicom import stow
from dicomhub.dicom.json_model import dumps
from dicomhub.dicom.mediatype import parse_media_type
from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import (
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dicomhub.settings_groups import Ingest
from dicomhub.telemetry import instruments
from dicomhub.web.audit import note
from dicomhub.web.common import (
    archive,
    base_url,
    partition_of,
    refuse_declared_size,
    require_json_accept,
    version,
)

DICOM = "application/dicom"


async def store(request: Request) -> Response:
    return await _store(request, upsert=False)


async def upsert(request: Request) -> Response:
    return await _store(request, upsert=True)


async def _store(request: Request, upsert: bool) -> Response:
    # A missing Accept means application/dicom+json (Microsoft's server answered 406).
    media_type = require_json_accept(request)
    study = request.path_params.get("study")
    if study is not None:
        require_uid(study, "StudyInstanceUID")
    content_type = request.headers.get("content-type") or ""
    if content_type.split(";")[0].strip().lower() == DICOM:  # one file: its size is known
        limit = request.app.state.ingest.max_part_size
        refuse_declared_size(request, limit, "a DICOM file (max_part_size)")
    sizes: list[int] = []
    parts = received_parts(
        request.stream(), request.headers.get("content-type"), request.app.state.ingest, sizes
    )
    n = version(request)
    outcomes = await archive(request).store.store_parts(
        parts, study, n == 1, upsert, partition_of(request)
    )
    _audit(request, outcomes)
    _count(outcomes, sizes)
    full = [o for o in outcomes if o.failure == stow.OUT_OF_RESOURCES]
    if full and all(o.failure is not None for o in outcomes):  # stored nothing: 507
        raise InsufficientStorage("storage", f"nothing was stored ({full[0].message})")
    study_path = f"studies/{study}" if study else None
    status, body = stow.build_response(outcomes, base_url(request), study_path, n)
    headers = {}
    if any(o.multi_valued for o in outcomes if o.failure is None):
        headers["Warning"] = f'299 {request.url.netloc} "{stow.MULTI_VALUED_WARNING}"'
    if body is None:
        return Response(status_code=status, headers=headers)
    return Response(dumps(body), status_code=status, media_type=media_type, headers=headers)


async def received_parts(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    settings: Ingest,
    sizes: list[int] | None = None,
) -> AsyncIterator[Part]:
    """The parts of a STOW-RS body, each as soon as it is complete (its size appended to
    ``sizes``). Errors of the request as a whole (media type, boundary, malformed multipart,
    too many parts, a single body that is too large) are raised; those of one part are the
    archive's to report."""
    sizes = [] if sizes is None else sizes
    if not content_type:
        raise UnsupportedMediaType("STOW-RS needs a Content-Type header")
    media = parse_media_type(content_type)
    if media.type == DICOM:
        body = PartBody(settings.spool_dir, settings.max_part_size)
        try:
            async for chunk in chunks:
                await body.write(chunk)
        except BaseException:
            body.discard()
            raise
        body.close()
        if body.too_large:
            body.discard()
            raise PayloadTooLarge(
                f"the DICOM file exceeds the limit of {settings.max_part_size} bytes"
            )
        sizes.append(body.size)
        yield Part(DICOM, body, last=True)
        return
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom" or '
            f"application/dicom, not {media.type}"
        )
    root_type = media.params.get("type", DICOM).lower()
    if root_type != DICOM:
        raise UnsupportedMediaType(
            f'multipart type {root_type!r} is not supported; use type="application/dicom"'
        )
    boundary = media.params.get("boundary")
    if not boundary:
        raise InvalidRequest("multipart/related needs a boundary parameter")
    parser = MultipartParser(boundary)
    body: PartBody | None = None
    count = 0
    part_type = root_type
    received = False
    try:
        async for chunk in chunks:
            received = received or bool(chunk)
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    if count == settings.max_parts:
                        raise PayloadTooLarge(
                            f"the request has more than {settings.max_parts} parts "
                            "(max_parts); the parts before stop here are stored"
                        )
                    count += 1
                    part_type = event.headers.get("content-type", root_type)
                    body = PartBody(settings.spool_dir, settings.max_part_size)
                elif isinstance(event, PartData):
                    await body.write(event.data)
                elif isinstance(event, PartEnd):
                    body.close()
                    sizes.append(body.size)
                    part, body = Part(part_type, body, last=parser.closing), None
                    yield part
            if parser.finished:
                break
        if not received:  # as Microsoft's server answers it (reference 5.6)
            raise Conflict("the request body is empty: nothing to store")
        parser.close()
    finally:
        if body is not None:
            body.discard()


def _count(outcomes: list[stow.PartOutcome], sizes: list[int]) -> None:
    """The metrics of the parts: stored or refused, and their bytes (a part the archive did
    not read, e.g. after a full disk, has no size)."""
    stored = stored_size = refused = refused_size = 0
    for i, outcome in enumerate(outcomes):
        size = sizes[i] if i < len(sizes) else 0
        if outcome.failure is None:
            stored, stored_size = stored + 1, stored_size + size
        else:
            refused, refused_size = refused + 1, refused_size + size
    instruments.stored(stored, stored_size, refused, refused_size)


def _audit(request: Request, outcomes: list[stow.PartOutcome]) -> None:
    """The audit entry names the instances stored (and their study, when there is one)."""
    stored = [o.retrieve_path.split("/")[1::2] for o in outcomes if o.failure is None]
    studies = {uids[0] for uids in stored}
    note(request, stored=stored, failed=len(outcomes) - len(stored))
    if len(studies) == 1:
        note(request, study=studies.pop())
