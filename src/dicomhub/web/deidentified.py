"""De-identified retrieval: the request's choice (WADO-URI ``anonymize=yes``, a ZIP download's
``deidentify=true`` and ``deidentifyOptions``), the instances de-identified one at a time
(PS3.15 Annex E Basic Profile, ``dicom/deidentify.py``) under the server's key, and the audit
note saying the data left de-identified. docs/conformance.md 7.6 describes the entry points.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from pydicom.dataset import Dataset
from starlette.requests import Request

from dicomhub.dicom.deidentify import Context, Options, deidentify_file, option_names, options_named
from dicomhub.errors import InvalidRequest, NotAcceptable
from dicomhub.model import Scope
from dicomhub.web.audit import note
from dicomhub.web.common import close_stream

FLAG, OPTIONS = "deidentify", "deidentifyOptions"
BURNED_IN = "00280301"  # Burned In Annotation


def asked(request: Request) -> Options | None:
    """The de-identification a WADO-RS retrieve asks for (``deidentify=true``, with
    ``deidentifyOptions``), or None. Names are case-insensitive, as the other parameters'; a
    parameter given twice, a value other than true or false, an unknown option, or options
    without ``deidentify=true`` are a 400."""
    values: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        name = next((n for n in (FLAG, OPTIONS) if n.lower() == key.lower()), None)
        if name is None:
            continue
        if name in values:
            raise InvalidRequest(f"{name} is given more than once")
        values[name] = value.strip()
    flag = values.get(FLAG)
    if flag is not None and flag.lower() not in ("true", "false"):
        raise InvalidRequest(f"{FLAG} must be true or false, not {flag[:40]!r}")
    if flag is None or flag.lower() == "false":
        if OPTIONS in values:
            raise InvalidRequest(f"{OPTIONS} applies only with {FLAG}=true")
        return None
    return options_named(values.get(OPTIONS, ""))


def context(the_archive) -> Context:
    """One de-identification context (a download, a WADO-URI request) under the server's key:
    the same original UID gives the same new UID in every context of every server sharing it."""
    return Context(the_archive.deidentify_key)


def key_tag(the_archive) -> str:
    """Part of a de-identified representation's ETag: another key makes other UIDs, so a
    copy cached under another key must not be confirmed as current (one-way: no key leaks)."""
    return hashlib.sha256(b"dicomhub etag\x00" + the_archive.deidentify_key).hexdigest()[:16]


def record(request: Request, options: Options) -> None:
    """The audit entry says the data left de-identified, and how."""
    note(request, deidentified=["basicProfile", *option_names(options)])


async def refuse_burned_in(the_archive, scope: Scope) -> None:
    """An instance whose Burned In Annotation (0028,0301) says YES carries identifying text in
    its pixels, which dicomhub does not clean (no Clean Pixel Data Option): it is refused
    (406) rather than served as de-identified (PS3.18 9.4.2.3 lets a server refuse)."""
    metadata = await the_archive.retrieve.metadata_of(scope, frozenset({BURNED_IN}))
    flagged = [
        sop
        for sop, meta in metadata.items()
        if str((meta.get(BURNED_IN, {}).get("Value") or [""])[0]).strip().upper() == "YES"
    ]
    if flagged:
        raise NotAcceptable(
            f"{len(flagged)} instance(s) ({', '.join(flagged[:3])}) have burned-in annotation "
            "(0028,0301 YES): dicomhub does not remove text from pixel data, so it does not "
            "serve them de-identified"
        )


async def deidentified(
    source: AsyncIterator[bytes], context: Context, options: Options
) -> tuple[bytes, Dataset]:
    """The instance ``source`` streams, read whole and de-identified (in a thread: the event
    loop goes on serving); its de-identified data set beside the file."""
    try:
        chunks = [chunk async for chunk in source]
    finally:
        await close_stream(source)
    data = b"".join(chunks)
    del chunks
    return await asyncio.to_thread(deidentify_file, data, context, options)
