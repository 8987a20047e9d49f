"""Versions of an instance (upsert now, bulk update next): the operations that replace a stored
instance with a new version, written once for every SQL engine (see instance_ops).

An instance keeps its original version (instance_original, its blob with it) and its latest
(its row in instance); a version in between is dropped when replaced, its blob queued for
deletion. Reading the originals (msdicom-request-original) and deleting every version are
instance_ops' (SELECT_ORIGINALS, delete).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dicomhub.clock import to_micros
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.errors import (
    AlreadyExists,
    InstanceChanged,
    InstanceMoved,
    StoreAbandoned,
    Unavailable,
)
from dicomhub.model import Action, NewInstance, blob_key
from dicomhub.storage import extended_tags_ops
from dicomhub.storage import instance_ops as ops
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.instance_ops import (
    COUNT_SERIES_STORE,
    COUNT_STUDY_STORE,
    DELETE_INSTANCE,
    FINISH_UPLOAD,
    INSERT_INSTANCE,
    INSERT_SERIES,
    INSERT_STUDY,
    QUEUE_BLOB_DELETION,
    SERIES_KEY,
    STUDY_KEY,
    instance_values,
)
from dicomhub.storage.statements import Op, one, rows, run

SOP_IN_PARTITION = """
SELECT st.study_uid, se.series_uid, i.version, i.series_key
FROM instance i
JOIN series se ON se.series_key = i.series_key
JOIN study st ON st.study_key = se.study_key
WHERE i.sop_uid = ? AND st.partition_name = ?
"""
# The version replaced is the original when none is kept yet (else it is one in between).
KEEP_ORIGINAL = """
INSERT INTO instance_original (series_key, sop_uid, version, sop_class_uid, transfer_syntax, size,
    created, parse_on_read, metadata, frames, bulk)
SELECT series_key, sop_uid, version, sop_class_uid, transfer_syntax, size, created, parse_on_read,
    metadata, frames, bulk
FROM instance WHERE version = ?
ON CONFLICT (series_key, sop_uid) DO NOTHING
RETURNING version
"""
CURRENT_VERSION = "SELECT version FROM instance WHERE series_key = ? AND sop_uid = ?"
INSTANCE_METADATA = "SELECT metadata FROM instance WHERE version = ?"
SERIES_METADATA = "SELECT metadata FROM instance WHERE series_key = ? ORDER BY version"
STUDY_METADATA = (
    "SELECT i.metadata FROM instance i JOIN series se ON se.series_key = i.series_key "
    "WHERE se.study_key = ? ORDER BY i.version"
)
REVISE_SERIES = "UPDATE series SET revision = revision + 1 WHERE series_key = ? RETURNING doc"
REVISE_STUDY = "UPDATE study SET revision = revision + 1 WHERE study_key = ? RETURNING doc"

LOCK_ATTEMPTS = 100  # each attempt after the first follows a delete of the study or series


def upsert(d: Dialect, stores: list[tuple[int, NewInstance]], cleanup_after: datetime) -> Op:
    """The stores of one PUT request, in order, in one transaction (a reader sees none of them
    or all), each as ``upsert_one`` (its refusal, or None, for each: one refused is undone
    alone). The studies stored already are locked first, in one order, so that two requests
    that touch the same studies take turns rather than deadlock."""
    studies = sorted({(i.id.partition, i.id.study) for _, i in stores})
    for partition, study in studies:
        yield one(STUDY_KEY + d.for_update, partition, study)
    return (
        yield from ops.each(
            lambda version, instance: upsert_one(d, version, instance, cleanup_after),
            stores,
            (AlreadyExists, InstanceMoved, StoreAbandoned),
        )
    )


def upsert_one(d: Dialect, version: int, instance: NewInstance, cleanup_after: datetime) -> Op:
    """Make a reserved store visible as PUT does (upsert): a new instance as ``commit`` adds it
    (a ``create`` entry); one its series holds already is replaced (``replace``: an ``update``
    entry). One the partition holds in another study or series is refused (InstanceMoved):
    a replace never moves an instance. ``cleanup_after``: when a version replaced that is not
    the original may have its blob deleted.

    The study and series are locked first (made when missing), as a delete locks them: upserts
    and deletes of an instance take turns, each wholly, and each upsert sees what the one
    before it committed. Not the hot path: ``commit`` (POST) takes no such lock."""
    i = instance.id
    if (yield one(FINISH_UPLOAD, version)) is None:
        raise StoreAbandoned(i.sop)
    yield from ops.keep_blob(version, instance)
    study_key = yield from _locked_key(d, INSERT_STUDY, STUDY_KEY, i.partition, i.study)
    series_key = yield from _locked_key(d, INSERT_SERIES, SERIES_KEY, study_key, i.series)
    found = yield rows(SOP_IN_PARTITION, i.sop, i.partition)
    here = [r["version"] for r in found if r["series_key"] == series_key]
    if here:
        yield from replace(version, instance, here[0], series_key, study_key, cleanup_after)
        return
    if found:
        where = found[0]
        raise InstanceMoved(
            f"SOP instance {i.sop} is stored in study {where['study_uid']}, series "
            f"{where['series_uid']}; an upsert replaces an instance where it is stored and "
            "never moves it (delete it first to store it elsewhere)"
        )
    inserted = yield one(INSERT_INSTANCE, version, series_key, i.sop, *instance_values(instance))
    if inserted is None:  # the series is locked: only a bug gets here
        raise AlreadyExists(f"SOP instance {i.sop} is already stored")
    _, first, series_doc = yield one(COUNT_SERIES_STORE, series_key)
    (study_doc,) = yield one(COUNT_STUDY_STORE, int(first), study_key)
    record = instance.search
    yield from ops.merge_attributes(Level.SERIES, series_key, series_doc, record.series_doc)
    yield from ops.merge_attributes(Level.STUDY, study_key, study_doc, record.study_doc)
    yield from extended_tags_ops.index_instance(
        version, series_key, study_key, instance.metadata, instance.invalid
    )
    yield from ops.log_changes(Action.CREATE, [(i, version)])


def update(d: Dialect, stores: list[tuple[int, NewInstance, int]], cleanup_after: datetime) -> Op:
    """Bulk update of a study: each reserved version (its blob written) made the latest of the
    stored instance whose latest it names, all in one transaction, so that a reader sees the
    study before or after, never part of it updated. For each store, None or what kept it
    out (undone alone): InstanceChanged when the instance was replaced or deleted since its
    latest was read (a bulk update never overwrites a version it did not start from, nor
    brings a deleted instance back), StoreAbandoned when its upload timed out. The study and
    series are locked first, as a delete and an upsert lock them."""
    return (
        yield from ops.each(
            lambda version, instance, replaced: _update_one(
                d, version, instance, replaced, cleanup_after
            ),
            stores,
            (InstanceChanged, StoreAbandoned),
        )
    )


def _update_one(
    d: Dialect, version: int, instance: NewInstance, replaced: int, cleanup_after: datetime
) -> Op:
    i = instance.id
    study = yield one(STUDY_KEY + d.for_update, i.partition, i.study)
    series = None if study is None else (yield one(SERIES_KEY + d.for_update, study[0], i.series))
    current = None if series is None else (yield one(CURRENT_VERSION, series[0], i.sop))
    if current is None or current[0] != replaced:
        raise InstanceChanged(
            f"SOP instance {i.sop} was replaced or deleted during the bulk update; not updated"
        )
    if (yield one(FINISH_UPLOAD, version)) is None:
        raise StoreAbandoned(i.sop)
    yield from replace(version, instance, replaced, series[0], study[0], cleanup_after)


def replace(
    version: int,
    instance: NewInstance,
    replaced: int,
    series_key: int,
    study_key: int,
    cleanup_after: datetime,
    action: Action = Action.UPDATE,
) -> Op:
    """Make ``version`` (its blob written, its upload ended) the latest version of the stored
    instance whose latest is ``replaced``; the caller holds the locks of its study and series.
    The first version is kept as the original (instance_original, its blob with it) until the
    instance is deleted; a version between the original and the latest is dropped, its blob
    queued for deletion. The study and series revisions (their ETags) move on and the
    instance's documents are merged into theirs (its values win, as for a store); the change
    feed gets ``action`` (update). Upsert replaces one instance; bulk update, each of a study's."""
    i = instance.id
    (old_metadata,) = yield one(INSTANCE_METADATA, replaced)
    if (yield one(KEEP_ORIGINAL, replaced)) is None:
        due = to_micros(cleanup_after)
        yield run(QUEUE_BLOB_DELETION, blob_key(i.partition, replaced), due)
    yield run(DELETE_INSTANCE, replaced)  # its extended query tag values and errors with it
    yield run(INSERT_INSTANCE, version, series_key, i.sop, *instance_values(instance))
    (series_doc,) = yield one(REVISE_SERIES, series_key)
    (study_doc,) = yield one(REVISE_STUDY, study_key)
    old, new = sk.describe(json.loads(old_metadata)), instance.search
    for level, key, current, was, now, members in (
        (Level.SERIES, series_key, series_doc, old.series_doc, new.series_doc, SERIES_METADATA),
        (Level.STUDY, study_key, study_doc, old.study_doc, new.study_doc, STUDY_METADATA),
    ):
        if set(json.loads(was)) <= set(json.loads(now)):  # the usual case: values change
            yield from ops.merge_attributes(level, key, current, now)
            continue
        # An attribute the replaced version gave and the new one lacks: what the study or
        # series holds is what its instances give, merged in storage order (as stored).
        rebuilt = None
        for (metadata,) in (yield rows(members, key)):
            rebuilt = sk.merge_docs(rebuilt, _level_doc(level, metadata))
        yield from ops.set_attributes(level, key, current, rebuilt)
    yield from extended_tags_ops.index_instance(
        version, series_key, study_key, instance.metadata, instance.invalid
    )
    yield from ops.log_changes(action, [(i, version)])


def _level_doc(level: Level, metadata: bytes) -> str:
    record = sk.describe(json.loads(metadata))
    return record.study_doc if level is Level.STUDY else record.series_doc


def _locked_key(d: Dialect, insert: str, select: str, *params: Any) -> Op:
    """The key of a study or series (made when missing), its row locked until the end; a
    delete may remove it between the two statements: then again."""
    for _ in range(LOCK_ATTEMPTS):
        yield run(insert, *params)
        row = yield one(select + d.for_update, *params)
        if row is not None:
            return row[0]
    raise Unavailable("index", "a study or series kept being deleted during an upsert")
