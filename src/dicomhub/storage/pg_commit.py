"""A store's commit on PostgreSQL in one round trip, in the common case.

``dicomhub_store`` (migration 0007) runs the steps of ``instance_ops.commit`` in one statement, so
in a transaction of its own; what needs Python comes in as arguments, computed here: the study's
and series' matching columns and side rows (from their documents, cached), and the values of the
extended query tags (for the tags this process last read). The documents are merged into those
this process last saw stored for the study and series (``Documents``). When the function finds
either out of date it writes nothing and says so (an error code), and the commit is sent again
with them brought up to date: two round trips when another node changed the study's or series'
document, three when the tags changed (they are read again).

The stores of a request that are ready together commit in one statement too
(``dicomhub_store_each``, migration 0008: one transaction, each store in a subtransaction of its
own), each merged into the documents the one before it leaves.

The files of small instances the index keeps (``NewInstance.blob``, see storage/kept_blobs) go
into ``kept_blob`` in the same statement, for the stores that commit.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.levels import Level
from dicomhub.errors import AlreadyExists, StoreAbandoned, Unavailable
from dicomhub.model import InstanceId, NewInstance
from dicomhub.storage import extended_tags_ops
from dicomhub.storage.instance_ops import instance_values, level_fields

STORE = "SELECT dicomhub_store(" + ", ".join(f"${n}" for n in range(1, 36)) + ")"
STORE_EACH = "SELECT dicomhub_store_each($1::dicomhub_store_args[])"
# With the files the index keeps (NewInstance.blob), in the same statement: written only when
# the store (each store) raised nothing, so undone with it.
STORE_KEPT = (
    f"WITH s AS MATERIALIZED ({STORE}) INSERT INTO kept_blob (version, data) SELECT $1, $36 FROM s"
)
STORE_EACH_KEPT = (
    f"WITH s AS MATERIALIZED ({STORE_EACH} AS codes), k AS ("
    "INSERT INTO kept_blob (version, data) SELECT b.v, b.d FROM s,"
    " unnest($2::integer[], $3::bigint[], $4::bytea[]) AS b(at, v, d) WHERE s.codes[b.at] IS NULL"
    ") SELECT codes FROM s"
)
ABANDONED, STORED, DOCUMENTS_CHANGED, TAGS_CHANGED = "DH001", "DH002", "DH003", "DH004"
# Each attempt after the first follows a concurrent store that changed a document the attempt
# merged into, or a change of the tags: more than this many means something is wrong.
ATTEMPTS = 20

Bases = dict[Level, str | None]  # the study's and series' documents a commit merges into


class Documents:
    """The study and series documents this process last saw stored, by UIDs: what the next
    store into them merges into. A guess, checked by dicomhub_store; right as long as no other
    node changed them, so a study whose instances differ in their study attributes costs one
    round trip per store, not two."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._known: OrderedDict[tuple, str | None] = OrderedDict()

    def bases(self, i: InstanceId) -> Bases:
        return {level: self._known.get(_key(level, i)) for level in (Level.STUDY, Level.SERIES)}

    def remember(self, i: InstanceId, docs: Bases) -> None:
        for level, doc in docs.items():
            self._known[_key(level, i)] = doc
            self._known.move_to_end(_key(level, i))
        while len(self._known) > self.size:
            self._known.popitem(last=False)


def _key(level: Level, i: InstanceId) -> tuple:
    return (i.partition, i.study) if level is Level.STUDY else (i.partition, i.study, i.series)


async def commit(
    execute: Callable[..., Awaitable],
    tags: Callable[[bool], Awaitable[list[ExtendedTag]]],
    documents: Documents,
    version: int,
    instance: NewInstance,
) -> None:
    """Commit a reserved store: ``execute(sql, *args)`` runs a statement (as its own
    transaction, raising asyncpg's errors); ``tags(fresh)`` gives the tags to index, read anew
    when ``fresh``."""
    bases = documents.bases(instance.id)
    fresh = False
    for _ in range(ATTEMPTS):
        indexing, fresh = await tags(fresh), False
        docs = merged(instance, bases)
        args = arguments(version, instance, indexing, bases, docs)
        try:
            if instance.blob is None:
                await execute(STORE, *args)
            else:
                await execute(STORE_KEPT, *args, instance.blob)
            documents.remember(instance.id, docs)  # what the study and series hold now
            return
        except Exception as exc:
            code = getattr(exc, "sqlstate", None)
            if code == ABANDONED:
                raise StoreAbandoned(instance.id.sop) from None
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


async def commit_each(
    fetch: Callable[..., Awaitable],
    tags: Callable[[bool], Awaitable[list[ExtendedTag]]],
    documents: Documents,
    stores: list[tuple[int, NewInstance]],
    again: Callable[[int, NewInstance], Awaitable[None]],
) -> list[Exception | None]:
    """Commit reserved stores in one statement (``fetch(sql, *args)`` runs it as its own
    transaction and returns its value); the outcome of each, in order. A store the statement
    found out of date (a document another node changed, or the tags) is committed again on its
    own, by ``again``."""
    indexing = await tags(False)
    rows = []
    for version, instance in stores:
        bases = documents.bases(instance.id)
        docs = merged(instance, bases)
        rows.append(arguments(version, instance, indexing, bases, docs))
        documents.remember(instance.id, docs)  # what the next store into them merges into
    kept = [(at, v, i.blob) for at, (v, i) in enumerate(stores, 1) if i.blob is not None]
    if kept:
        codes = await fetch(STORE_EACH_KEPT, rows, *(list(c) for c in zip(*kept, strict=True)))
    else:
        codes = await fetch(STORE_EACH, rows)
    outcomes: list[Exception | None] = []
    for (version, instance), code in zip(stores, codes, strict=True):
        if code is None:
            outcomes.append(None)
        elif code == ABANDONED:
            outcomes.append(StoreAbandoned(instance.id.sop))
        elif code == STORED:
            outcomes.append(AlreadyExists(f"SOP instance {instance.id.sop} is already stored"))
        else:  # DOCUMENTS_CHANGED or TAGS_CHANGED
            try:
                await again(version, instance)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - this store's alone: the others are decided
                outcomes.append(exc)
    return outcomes


def merged(instance: NewInstance, bases: Bases) -> Bases:
    """The study's and series' documents once ``instance`` is merged into ``bases``."""
    record = instance.search
    new = {Level.STUDY: record.study_doc, Level.SERIES: record.series_doc}
    return {level: sk.merge_docs(bases[level], new[level]) for level in new}


def arguments(
    version: int, instance: NewInstance, tags: list[ExtendedTag], bases: Bases, docs: Bases
) -> tuple:
    i = instance.id
    return (
        version,
        i.partition,
        i.study,
        i.series,
        i.sop,
        *instance_values(instance),
        *_level(Level.STUDY, bases, docs),
        *_level(Level.SERIES, bases, docs),
        *_tag_values(tags, instance),
    )


def _level(level: Level, bases: Bases, docs: Bases) -> tuple:
    """(base, merged document, its columns as JSON, its side rows as two arrays)."""
    return bases[level], docs[level], *_level_fields(level, docs[level])


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
        for tag, found, problem in extended_tags_ops.assess(tags, js, instance.invalid):
            if problem is not None:
                error_tags.append(tag.key)
                errors.append(problem)
            rows += [(tag.key, int(tag.level), *row) for row in found]
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 5
    return keys, error_tags, errors, *columns
