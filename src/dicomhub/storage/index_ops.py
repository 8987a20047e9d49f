"""The index's operations, written once for every SQL engine.

Each operation is a generator: it yields the statements it needs (``Stmt``) and receives each
one's result, so the same logic runs on SQLite's synchronous writer thread and on PostgreSQL's
asynchronous connections (``drive`` and the engines' own drivers). A statement that raises
aborts the operation; the driver rolls its transaction (or savepoint) back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dicomhub.clock import to_micros, utcnow
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.errors import AlreadyExists, StoreAbandoned
from dicomhub.model import Action, InstanceId, NewInstance, Scope, blob_key
from dicomhub.storage import eqt_ops
from dicomhub.storage import sql_queries as q
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.statements import Op, many, one, rows, run

# -- store -------------------------------------------------------------------------------------


def reserve_versions(partition: str, count: int) -> Op:
    """``count`` versions for stores about to start, each with its upload row (what the cleanup
    job removes when a store never commits)."""
    found = yield rows(q.RESERVE_VERSIONS, count, partition, to_micros(utcnow()))
    return sorted(r[0] for r in found)


def release_versions(versions: list[int]) -> Op:
    """Versions reserved and never used (no blob was written under them)."""
    yield many(q.FINISH_UPLOAD_QUIETLY, [(v,) for v in versions])


def commit(version: int, instance: NewInstance) -> Op:
    """Make a reserved store visible with its change-feed entry (SQLite; PostgreSQL runs the same
    steps in one statement, see pg_commit)."""
    i = instance.id
    if (yield one(q.FINISH_UPLOAD, version)) is None:
        raise StoreAbandoned(i.sop)
    study_key = yield from _key(q.INSERT_STUDY, q.STUDY_KEY, i.partition, i.study)
    series_key = yield from _key(q.INSERT_SERIES, q.SERIES_KEY, study_key, i.series)
    record = instance.search
    inserted = yield one(q.INSERT_INSTANCE, version, series_key, i.sop, *instance_values(instance))
    if inserted is None:
        raise AlreadyExists(f"SOP instance {i.sop} is already stored")
    _, first, series_doc = yield one(q.COUNT_SERIES_STORE, series_key)
    (study_doc,) = yield one(q.COUNT_STUDY_STORE, int(first), study_key)
    yield from _merge_attributes(Level.SERIES, series_key, series_doc, record.series_doc)
    yield from _merge_attributes(Level.STUDY, study_key, study_doc, record.study_doc)
    # Read after the first write (FINISH_UPLOAD): a store that does not see a tag added now is
    # waited for by the tag's reindex (ExtendedTagIndex.settled_version).
    yield from eqt_ops.index_instance(
        version, series_key, study_key, instance.metadata, instance.invalid
    )
    yield from _log_changes(Action.CREATE, [(i, version)])


def instance_values(instance: NewInstance) -> tuple:
    """An instance row's values after its identity, in INSERT_INSTANCE's order (PostgreSQL's
    dicomhub_store takes them in the same order)."""
    record = instance.search
    return (
        instance.sop_class,
        instance.transfer_syntax,
        instance.size,
        to_micros(utcnow()),
        int(instance.parse_on_read),
        instance.metadata,
        instance.frames,
        instance.bulk,
        record.instance.get("instance_number"),
        record.instance.get("acquisition_datetime"),
        record.instance_doc,
        json.dumps(instance.invalid) if instance.invalid else None,
    )


def commit_each(stores: list[tuple[int, NewInstance]]) -> Op:
    """``commit`` of each store in turn, each in a savepoint of its own: a store that fails
    (already stored, abandoned) is undone alone. Its error, or None, for each store."""
    outcomes: list[Exception | None] = []
    for version, instance in stores:
        yield run("SAVEPOINT store")
        try:
            yield from commit(version, instance)
        except (AlreadyExists, StoreAbandoned) as exc:
            yield run("ROLLBACK TO store")
            outcomes.append(exc)
        else:
            outcomes.append(None)
        yield run("RELEASE store")
    return outcomes


def abandon(version: int) -> Op:
    """Give up a store: its upload ends and its blob (if written) is queued for deletion now.
    False when the store had already finished or been abandoned."""
    row = yield one(q.FINISH_UPLOAD, version)
    if row is None:
        return False
    yield run(q.QUEUE_BLOB_DELETION, blob_key(row[0], version), to_micros(utcnow()))
    return True


def _key(insert: str, select: str, *params: Any) -> Op:
    yield run(insert, *params)
    return (yield one(select, *params))[0]


def _merge_attributes(level: Level, key: int, old: str | None, new: str) -> Op:
    """Merge an instance's level document into its study's or series'; when that changes it,
    rewrite the level's matching columns and side rows (name words, request items)."""
    merged = sk.merge_docs(old, new)
    if merged == old:
        return
    table = q.LEVEL_ATTRIBUTES[level]
    normalised, side = level_fields(level, merged)
    yield run(table.update, *[normalised[name] for name in table.columns], merged, key)
    yield run(table.clear_side, key)
    if side:
        yield many(table.insert_side, [(key, *row) for row in side])


def level_fields(level: Level, doc: str) -> tuple[dict[str, Any], list[tuple]]:
    """What a study or series with document ``doc`` is matched on: its columns (column ->
    normalised value) and side rows (name words, request items)."""
    js = json.loads(doc)
    side = sk.words(js) if level is Level.STUDY else sk.request_items(js)
    return sk.columns(level, js), side


def _log_changes(action: Action, changes: list[tuple[InstanceId, int]]) -> Op:
    """The change-feed rows of a write: its last statement, after every write they may depend
    on (on PostgreSQL they are numbered in the order written, see dicomhub_number_changes)."""
    now = to_micros(utcnow())
    yield many(
        q.INSERT_CHANGE,
        [(now, int(action), i.partition, i.study, i.series, i.sop, v) for i, v in changes],
    )


# -- delete ------------------------------------------------------------------------------------


def delete(d: Dialect, scope: Scope, cleanup_after: datetime) -> Op:
    sql, params = q.scoped(q.SELECT_INSTANCES, scope)
    found = yield rows(sql, *params)
    if not found:
        return 0
    # Lock the studies, then the series, that may be removed, before changing anything: a store
    # locks them in that order too (dicomhub_store reads them FOR KEY SHARE), so a store and a
    # delete wait for each other one way only, never both ways (a deadlock), and a store never
    # refers to a study or series just removed. Then read the instances again: a concurrent
    # delete of them has ended by now.
    series = sorted({r["series_key"] for r in found})
    yield rows(q.in_list(q.LOCK_STUDIES, len(series)) + d.for_update, *series)
    locked = yield rows(q.in_list(q.LOCK_SERIES, len(series)) + d.for_update, *series)
    keys = {r[0] for r in locked}
    found = [r for r in (yield rows(sql, *params)) if r["series_key"] in keys]
    if not found:
        return 0
    due = to_micros(cleanup_after)
    yield many(q.DELETE_INSTANCE, [(r["version"],) for r in found])
    yield many(
        q.QUEUE_BLOB_DELETION,
        [(blob_key(r["partition_name"], r["version"]), due) for r in found],
    )
    removed: dict[int, int] = {}  # series key -> instances removed
    for r in found:
        removed[r["series_key"]] = removed.get(r["series_key"], 0) + 1
    for series_key, count in removed.items():
        study_key, emptied = yield one(q.COUNT_SERIES_DELETE, count, series_key)
        yield run(q.COUNT_STUDY_DELETE, count, int(emptied), study_key)
        yield run(q.DELETE_EMPTY_SERIES, series_key)
        yield run(q.DELETE_EMPTY_STUDY, study_key)
    changes = [
        (
            InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
            r["version"],
        )
        for r in found
    ]
    yield from _log_changes(Action.DELETE, changes)
    return len(found)


# -- change feed -------------------------------------------------------------------------------


def changes(d: Dialect, sql: str, params: tuple) -> Op:
    """Read the change feed (``sql``: one of CHANGEFEED_*), numbering first what has committed
    since the last read where entries are written unnumbered."""
    if d.number_changes:
        yield one(d.number_changes)
    return (yield rows(sql, *params))


# -- reads -------------------------------------------------------------------------------------


def metadata(scope: Scope) -> Op:
    """Stored DICOM JSON of the scope's instances and its ETag (run in one snapshot)."""
    sql, params = q.scoped(q.SELECT_METADATA, scope)
    found = yield rows(sql, *params)
    tag_sql, tag_params = q.etag_query(scope)
    tag = yield one(tag_sql, *tag_params)
    if tag is None:
        return [r[0] for r in found], ""
    return [r[0] for r in found], str(tag[0]) if scope.sop else f"{tag[0]}-{tag[1]}"


# -- migrations --------------------------------------------------------------------------------


def rebuild_search() -> Op:
    """Re-derive every search column, level document and counter from the stored metadata
    (after a migration that adds search columns)."""
    for sql in q.RESET_LEVELS:
        yield run(sql)
    for r in (yield rows(q.ALL_INSTANCES)):
        record = sk.describe(json.loads(r["metadata"]))
        yield run(
            q.REBUILD_INSTANCE,
            record.instance.get("instance_number"),
            record.instance.get("acquisition_datetime"),
            record.instance_doc,
            r["version"],
        )
        study_key, first, series_doc = yield one(q.COUNT_SERIES_STORE, r["series_key"])
        (study_doc,) = yield one(q.COUNT_STUDY_STORE, int(first), study_key)
        yield from _merge_attributes(Level.SERIES, r["series_key"], series_doc, record.series_doc)
        yield from _merge_attributes(Level.STUDY, study_key, study_doc, record.study_doc)
