"""Study, series and instance retrieval as a ZIP file-set (``Accept: application/zip``,
PS3.18 10.4.4), streamed: each instance is read (or converted) and sent as it comes, so memory
stays flat however large the study, and the first bytes leave before the last file is read.

The archive is a DICOM File-set (PS3.10 section 8): instances at
``DICOM/STnnnnnn/SEnnnnnn/IMnnnnnn`` (File IDs of up to 8 uppercase characters, numbered in
storage order: no patient data in any name) and a ``DICOMDIR`` at the root, written last from
the index's metadata (no instance is read twice). De-identified (``deidentify=true``), each
instance is read whole, de-identified and sent, and the DICOMDIR is made from the
de-identified data sets instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.clock import utcnow
from dicomhub.dicom import dicomdir
from dicomhub.dicom.deidentify import Options
from dicomhub.dicom.dicomdir import FileRecord
from dicomhub.dicom.mediatype import MediaType
from dicomhub.dicom.zipstream import ZipWriter, archive_size
from dicomhub.model import Scope, StoredInstance
from dicomhub.web import deidentified
from dicomhub.web.common import StreamedResponse, close_stream
from dicomhub.web.parts import DICOM, Joined, Part

ZIP = "application/zip"


def zip_range(accept: list[MediaType]) -> int | None:
    """Where ``application/zip`` is among the Accept ranges (None: not asked for)."""
    return next((n for n, media in enumerate(accept) if media.type == ZIP), None)


def file_ids(instances: list[StoredInstance]) -> list[list[str]]:
    """DICOM/STnnnnnn/SEnnnnnn/IMnnnnnn for each instance, numbered in storage order."""
    studies: dict[str, int] = {}
    series: dict[tuple[str, str], int] = {}
    count: dict[tuple[str, str], int] = {}
    out = []
    for i in instances:
        study = studies.setdefault(i.id.study, len(studies) + 1)
        key = (i.id.study, i.id.series)
        if key not in series:
            series[key] = sum(1 for s in series if s[0] == i.id.study) + 1
        count[key] = count.get(key, 0) + 1
        out.append(["DICOM", f"ST{study:06d}", f"SE{series[key]:06d}", f"IM{count[key]:06d}"])
    return out


def zip_accept(wanted: MediaType) -> list[MediaType]:
    """The multipart Accept a ZIP's instances are negotiated with: ``wanted``'s transfer-syntax
    converts every instance (as a study retrieve converts them: one that cannot be goes as
    stored, and the DICOMDIR says so); none means as stored."""
    syntax = wanted.params.get("transfer-syntax", "*")
    return [MediaType("multipart/related", {"type": DICOM, "transfer-syntax": syntax})]


async def response(
    request: Request,
    the_archive,
    scope: Scope,
    parts: list[Part],
    deidentify: Options | None = None,
) -> Response:
    """The instances of ``parts`` (negotiated with ``zip_accept``) as a ZIP file-set; with
    ``deidentify``, each de-identified (see ``_deidentified``)."""
    if deidentify is not None:
        return await _deidentified(request, the_archive, scope, parts, deidentify)
    instances = [p.instance for p in parts]
    metadata = await the_archive.retrieve.metadata_of(scope, dicomdir.TAGS)
    ids = file_ids(instances)
    first = await parts[0].open(fallback=True)  # a missing blob: its status, not a cut body
    name = scope.sop or scope.series or scope.study  # UIDs only: no patient data in the name
    headers = {"Vary": "Accept", "Content-Disposition": f'attachment; filename="{name}.zip"'}
    ready = None
    if all(p.size is not None for p in parts):  # as stored: the archive's size is known now
        ready = await asyncio.to_thread(dicomdir.build, _records(parts, ids, metadata))
        names = ["/".join(i) for i in ids]
        sizes = [(n, p.size) for n, p in zip(names, parts, strict=True)]
        headers["Content-Length"] = str(archive_size([*sizes, ("DICOMDIR", len(ready))]))
    body = _body(parts, ids, metadata, first, ready)
    return StreamedResponse(body, media_type=ZIP, headers=headers)


def _records(parts: list[Part], ids: list[list[str]], metadata: dict) -> list[FileRecord]:
    out = []
    for part, file_id in zip(parts, ids, strict=True):
        meta = dict(metadata.get(part.instance.id.sop, {}))
        # the index's own identity of the instance, whatever its metadata holds
        for tag, value in (
            (dicomdir.SOP_INSTANCE, part.instance.id.sop),
            (dicomdir.SOP_CLASS, part.instance.sop_class),
            ("0020000D", part.instance.id.study),
            ("0020000E", part.instance.id.series),
        ):
            meta[tag] = {"vr": "UI", "Value": [value]}
        out.append(FileRecord(meta, file_id, part.syntax))
    return out


async def _body(parts, ids, metadata, first, ready) -> AsyncIterator[bytes]:
    writer = ZipWriter()
    joined = Joined()  # small pieces (headers, descriptors, small files) go out joined
    source = first
    try:
        for n, part in enumerate(parts):
            if n:
                source = await part.open(fallback=True)
            # after open: a conversion that fell back to the stored file has its size now
            joined.hold(writer.begin("/".join(ids[n]), part.instance.created, part.size))
            try:
                async for chunk in source:
                    for out in joined.add(writer.feed(chunk)):
                        yield out
            finally:
                await close_stream(source)
                source = None
            joined.hold(writer.end())
        if ready is None:
            ready = await asyncio.to_thread(dicomdir.build, _records(parts, ids, metadata))
        for out in _ending(writer, joined, ready):
            yield out
    finally:
        if source is not None:
            await close_stream(source)


async def _deidentified(request: Request, the_archive, scope: Scope, parts, options) -> Response:
    """The ZIP of the instances de-identified (PS3.15 Annex E, ``options``), in one context:
    their UIDs (the file name's too) replaced alike, so references between them resolve, and
    the DICOMDIR made from the de-identified data sets (new UIDs, the patient's name and ID
    as the profile leaves them: empty), not from the index. One instance is in memory at a
    time; the archive's size is not known before the end (chunked)."""
    await deidentified.refuse_burned_in(the_archive, scope)
    context = deidentified.context(the_archive)
    ids = file_ids([p.instance for p in parts])
    # the first one before the response starts: a missing blob, or an instance that cannot be
    # de-identified, gets its own status rather than a cut body
    first = await deidentified.deidentified(await parts[0].open(fallback=True), context, options)
    name = context.uid(scope.sop or scope.series or scope.study)
    headers = {"Vary": "Accept", "Content-Disposition": f'attachment; filename="{name}.zip"'}
    deidentified.record(request, options)
    body = _deidentified_body(parts, ids, context, options, first)
    return StreamedResponse(body, media_type=ZIP, headers=headers)


# entry times of a de-identified archive: the stored times would tell when the study was made
_NO_TIME = datetime(1980, 1, 1)


async def _deidentified_body(parts, ids, context, options, first) -> AsyncIterator[bytes]:
    writer = ZipWriter()
    joined = Joined()
    records = []
    done = first
    for n, part in enumerate(parts):
        if done is None:
            source = await part.open(fallback=True)
            done = await deidentified.deidentified(source, context, options)
        data, ds = done
        done = None
        records.append(FileRecord(dicomdir.record_metadata(ds), ids[n], part.syntax))
        del ds
        name = "/".join(ids[n])
        joined.hold(writer.begin(name, _NO_TIME, len(data)))
        for out in joined.add(writer.feed(data)):
            yield out
        joined.hold(writer.end())
        del data
    index = await asyncio.to_thread(dicomdir.build, records)
    for out in _ending(writer, joined, index):
        yield out


def _ending(writer: ZipWriter, joined: Joined, dicomdir_bytes: bytes) -> list[bytes]:
    """What ends an archive: what is still held, the DICOMDIR, the central directory."""
    joined.hold(writer.whole("DICOMDIR", utcnow(), dicomdir_bytes))
    joined.hold(writer.finish())
    return joined.flush()
