"""A store's commit on PostgreSQL in one round trip, in the common case.

``dicomhub_store`` (migration 0006) runs the steps of ``index_ops.commit`` in one statement, so
in a transaction of its own; what needs Python comes in as arguments, computed here: the study's
and series' matching columns and side rows (from their documents, cached), and the values of the
extended query tags (for the tags this process last read). When the function finds either out of
date it writes nothing and says so (an error code), and the commit is sent again with them
brought up to date: a second round trip when a study's or series' document has to be merged
with a different one, or the tags changed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable

from dicomhub.clock import to_micros, utcnow
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.levels import Level
from dicomhub.errors import AlreadyExists, Unavailable
from dicomhub.model import NewInstance
from dicomhub.storage import eqt_ops
from dicomhub.storage.index_ops import level_fields

STORE = "SELECT dicomhub_store(" + ", ".join(f"${n}" for n in range(1, 36)) + ")"
ABANDONED, STORED, DOCUMENTS_CHANGED, TAGS_CHANGED = "DH001", "DH002", "DH003", "DH004"
# Each attempt after the first follows a concurrent store that changed a document the attempt
# merged into, or a change of the tags: more than this many means something is wrong.
ATTEMPTS = 20

Bases = dict[Level, str | None]  # the study's and series' documents a commit merges into


async def commit(
    execute: Callable[..., Awaitable],
    tags: Callable[[bool], Awaitable[list[ExtendedTag]]],
    version: int,
    instance: NewInstance,
) -> None:
    """Commit a reserved store: ``execute(sql, *args)`` runs a statement (as its own
    transaction, raising asyncpg's errors); ``tags(fresh)`` gives the tags to index, read anew
    when ``fresh``."""
    bases: Bases = {Level.STUDY: None, Level.SERIES: None}
    fresh = False
    for _ in range(ATTEMPTS):
        try:
            await execute(STORE, *arguments(version, instance, await tags(fresh), bases))
            return
        except Exception as exc:
            code = getattr(exc, "sqlstate", None)
            if code == ABANDONED:
                raise Unavailable(
                    "index", f"the store of SOP instance {instance.id.sop} was abandoned (too slow)"
                ) from None
            if code == STORED:
                raise AlreadyExists(f"SOP instance {instance.id.sop} is already stored") from None
            if code == DOCUMENTS_CHANGED:
                current = json.loads(exc.detail)
                bases = {Level.STUDY: current["study"], Level.SERIES: current["series"]}
            elif code == TAGS_CHANGED:
                fresh = True
            else:
                raise
    raise Unavailable("index", f"the store of SOP instance {instance.id.sop} kept conflicting")


def arguments(version: int, instance: NewInstance, tags: list[ExtendedTag], bases: Bases):
    i, record = instance.id, instance.search
    now = to_micros(utcnow())
    return (
        version, i.partition, i.study, i.series, i.sop, instance.sop_class,
        instance.transfer_syntax, instance.size, now, int(instance.parse_on_read),
        instance.metadata, instance.frames, instance.bulk,
        record.instance.get("instance_number"), record.instance.get("acquisition_datetime"),
        record.instance_doc, json.dumps(instance.invalid) if instance.invalid else None,
        *_level(Level.STUDY, bases[Level.STUDY], record.study_doc),
        *_level(Level.SERIES, bases[Level.SERIES], record.series_doc),
        *_tag_values(tags, instance),
    )  # fmt: skip


def _level(level: Level, base: str | None, new: str) -> tuple:
    """(base, merged document, its columns as JSON, its side rows as two arrays)."""
    doc = sk.merge_docs(base, new)
    return base, doc, *_level_fields(level, doc)


@functools.lru_cache(maxsize=512)
def _level_fields(level: Level, doc: str) -> tuple[str, list, list]:
    """level_fields as the function takes them. Cached: the instances of a series repeat the
    same documents. Not to be modified."""
    columns, side = level_fields(level, doc)
    first, second = (list(c) for c in zip(*side, strict=True)) if side else ([], [])
    return json.dumps(columns), first, second


def _tag_values(tags: list[ExtendedTag], instance: NewInstance) -> tuple:
    """The keys of ``tags`` (sorted: the function compares them with the index's), the tags
    with an invalid value and why, and the rows to index as five arrays (tag, level, kind,
    text, number)."""
    keys = sorted(t.key for t in tags)
    error_tags, errors, rows = [], [], []
    if tags:
        js = json.loads(instance.metadata)
        for tag, found, problem in eqt_ops.assess(tags, js, instance.invalid):
            if problem is not None:
                error_tags.append(tag.key)
                errors.append(problem)
            rows += [(tag.key, int(tag.level), *row) for row in found]
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 5
    return keys, error_tags, errors, *columns
