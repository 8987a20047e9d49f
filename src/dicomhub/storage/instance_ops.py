"""The index's operations, written once for every SQL engine.

Each operation is a generator: it yields the statements it needs (``Stmt``) and receives each
one's result, so the same logic runs on SQLite's synchronous writer thread and on PostgreSQL's
asynchronous connections (``drive`` and the engines' own drivers). A statement that raises
aborts the operation; the driver rolls its transaction (or savepoint) back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dicomhub.clock import to_micros, utcnow
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.errors import AlreadyExists, StoreAbandoned
from dicomhub.model import Action, InstanceId, NewInstance, Scope, blob_key, blob_version
from dicomhub.storage import extended_tags_ops
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.statements import Op, many, one, rows, run

# -- SQL (one text for SQLite and PostgreSQL: see dialect.py; parameters are ``?``) ----------

INSERT_STUDY = "INSERT INTO study (partition_name, study_uid) VALUES (?, ?) ON CONFLICT DO NOTHING"
STUDY_KEY = "SELECT study_key FROM study WHERE partition_name = ? AND study_uid = ?"
INSERT_SERIES = "INSERT INTO series (study_key, series_uid) VALUES (?, ?) ON CONFLICT DO NOTHING"
SERIES_KEY = "SELECT series_key FROM series WHERE study_key = ? AND series_uid = ?"

_JOIN = """
FROM instance i
JOIN series se ON se.series_key = i.series_key
JOIN study st ON st.study_key = se.study_key
"""


# A store in progress: its version (blob keys derive from it) and when it started.
RESERVE_VERSIONS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO blob_upload (partition_name, started) SELECT ?, ? FROM n RETURNING version
"""
FINISH_UPLOAD = "DELETE FROM blob_upload WHERE version = ? RETURNING partition_name"
ADD_PARTITION = (
    "INSERT INTO data_partition (partition_name, created) VALUES (?, ?) "
    "ON CONFLICT (partition_name) DO NOTHING"
)
PARTITIONS = "SELECT partition_key, partition_name, created FROM data_partition ORDER BY 1"
FINISH_UPLOAD_QUIETLY = "DELETE FROM blob_upload WHERE version = ?"
STALE_UPLOADS = "SELECT version, partition_name FROM blob_upload WHERE started < ? ORDER BY version"

INSERT_INSTANCE = """
INSERT INTO instance (version, series_key, sop_uid, sop_class_uid, transfer_syntax, size, created,
    parse_on_read, metadata, frames, bulk, instance_number, acquisition_datetime, doc, invalid)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (series_key, sop_uid) DO NOTHING
RETURNING version
"""

# Counters and revision on store; "first" is true when the series had no instance before.
COUNT_SERIES_STORE = """
UPDATE series SET instance_count = instance_count + 1, revision = revision + 1
WHERE series_key = ?
RETURNING study_key, instance_count = 1 AS first, doc
"""
COUNT_STUDY_STORE = """
UPDATE study SET instance_count = instance_count + 1, series_count = series_count + ?,
    revision = revision + 1
WHERE study_key = ?
RETURNING doc
"""


@dataclass(frozen=True)
class LevelAttributes:
    """SQL that rewrites a study's or series' matching columns, document and side rows."""

    columns: tuple[str, ...]  # the level's matching columns (search_keys), its UID excepted
    update: str  # SET the columns, then doc; WHERE key
    clear_side: str
    insert_side: str


def _level_attributes(level: Level, clear_side: str, insert_side: str) -> LevelAttributes:
    columns = tuple(
        k.column
        for k in sk.KEYS
        if k.level is level and k.column and k.kind not in (sk.Kind.ITEM, sk.Kind.UID)
    )
    table = level.name.lower()
    sets = ", ".join(f"{c} = ?" for c in columns)
    update = f"UPDATE {table} SET {sets}, doc = ? WHERE {table}_key = ?"
    return LevelAttributes(columns, update, clear_side, insert_side)


LEVEL_ATTRIBUTES = {
    Level.STUDY: _level_attributes(
        Level.STUDY,
        "DELETE FROM person_name_word WHERE study_key = ?",
        "INSERT INTO person_name_word (study_key, tag, word) VALUES (?, ?, ?)",
    ),
    Level.SERIES: _level_attributes(
        Level.SERIES,
        "DELETE FROM series_request WHERE series_key = ?",
        "INSERT INTO series_request (series_key, scheduled_step_id, requested_procedure_id) "
        "VALUES (?, ?, ?)",
    ),
}
COUNT_SERIES_DELETE = """
UPDATE series SET instance_count = instance_count - ?, revision = revision + 1
WHERE series_key = ?
RETURNING study_key, instance_count = 0 AS emptied
"""
COUNT_STUDY_DELETE = """
UPDATE study SET instance_count = instance_count - ?, series_count = series_count - ?,
    revision = revision + 1
WHERE study_key = ?
"""
# Rows a delete may remove (of the series {keys}), locked first, studies then series, as stores
# lock them (see instance_ops.delete).
LOCK_STUDIES = (
    "SELECT study_key FROM study "
    "WHERE study_key IN (SELECT study_key FROM series WHERE series_key IN ({keys})) ORDER BY 1"
)
LOCK_SERIES = "SELECT series_key FROM series WHERE series_key IN ({keys}) ORDER BY 1"
DELETE_EMPTY_SERIES = "DELETE FROM series WHERE series_key = ? AND instance_count = 0"
DELETE_EMPTY_STUDY = "DELETE FROM study WHERE study_key = ? AND instance_count = 0"

_INSTANCE_COLUMNS = """
SELECT st.partition_name, st.study_uid, se.series_uid, i.sop_uid, i.version, i.sop_class_uid,
    i.transfer_syntax, i.size, i.created, i.frames, i.bulk, i.parse_on_read, i.series_key
"""
SELECT_INSTANCES = _INSTANCE_COLUMNS + _JOIN + "WHERE {where} ORDER BY i.version"
SELECT_METADATA = "SELECT i.metadata" + _JOIN + "WHERE {where} ORDER BY i.version"

DELETE_INSTANCE = "DELETE FROM instance WHERE version = ?"

# -- versions (see version_ops): an instance replaced (upsert, bulk update) keeps its original
# in instance_original; its row in instance is the latest version.
ORIGINALS_OF_SERIES = (
    "SELECT series_key, sop_uid, version FROM instance_original WHERE series_key IN ({keys})"
)
DELETE_ORIGINAL = "DELETE FROM instance_original WHERE series_key = ? AND sop_uid = ?"
_ORIGINAL_JOIN = (
    _JOIN + "LEFT JOIN instance_original o\n"
    "    ON o.series_key = i.series_key AND o.sop_uid = i.sop_uid\n"
)


def _original(column: str) -> str:
    return f"CASE WHEN o.version IS NULL THEN i.{column} ELSE o.{column} END AS {column}"


_ORIGINAL_COLUMNS = ", ".join(
    _original(c)
    for c in (
        "version",
        "sop_class_uid",
        "transfer_syntax",
        "size",
        "created",
        "frames",
        "bulk",
        "parse_on_read",
    )
)
SELECT_ORIGINALS = (
    "SELECT st.partition_name, st.study_uid, se.series_uid, i.sop_uid, "
    + _ORIGINAL_COLUMNS
    + ", i.series_key"
    + _ORIGINAL_JOIN
    + "WHERE {where} ORDER BY coalesce(o.version, i.version)"
)
SELECT_ORIGINAL_METADATA = (
    "SELECT "
    + _original("metadata")
    + _ORIGINAL_JOIN
    + "WHERE {where} ORDER BY coalesce(o.version, i.version)"
)
QUEUE_BLOB_DELETION = "INSERT INTO blob_deletion (blob_key, cleanup_after) VALUES (?, ?)"
DUE_BLOB_DELETIONS = (
    "SELECT id, blob_key FROM blob_deletion WHERE cleanup_after <= ? ORDER BY cleanup_after LIMIT ?"
)
FINISH_BLOB_DELETION = "DELETE FROM blob_deletion WHERE id = ?"
DELETED_BLOB_KEYS = "SELECT blob_key FROM blob_deletion WHERE id IN ({keys})"
KEEP_BLOB = "INSERT INTO kept_blob (version, data) VALUES (?, ?)"
KEPT_BLOBS = "SELECT version, data FROM kept_blob WHERE version IN ({keys})"
FORGET_KEPT_BLOB = "DELETE FROM kept_blob WHERE version = ?"
RETRY_BLOB_DELETION = (
    "UPDATE blob_deletion SET cleanup_after = ?, retries = retries + 1 WHERE id = ?"
)

INSERT_CHANGE = """
INSERT INTO changefeed (timestamp, action, partition_name, study_uid, series_uid, sop_uid, version)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_CHANGE_COLUMNS = """
SELECT c.sequence, c.timestamp, c.action, c.partition_name, c.study_uid, c.series_uid, c.sop_uid,
    c.version, i.version AS current_version, {metadata} AS metadata
FROM changefeed c
LEFT JOIN study st ON st.partition_name = c.partition_name AND st.study_uid = c.study_uid
LEFT JOIN series se ON se.study_key = st.study_key AND se.series_uid = c.series_uid
LEFT JOIN instance i ON i.series_key = se.series_key AND i.sop_uid = c.sop_uid
"""
# Readers see numbered entries only (on PostgreSQL an entry has no sequence until
# dicomhub_number_changes numbers it after its transaction committed).
CHANGEFEED_BY_SEQUENCE = (
    _CHANGE_COLUMNS + "WHERE c.sequence > ? AND c.sequence <= ? ORDER BY c.sequence"
)
CHANGEFEED_BY_TIME = (
    _CHANGE_COLUMNS
    + "WHERE c.timestamp >= ? AND c.timestamp < ? AND c.sequence IS NOT NULL "
    + "ORDER BY c.timestamp, c.sequence LIMIT ? OFFSET ?"
)
CHANGEFEED_LATEST = (
    _CHANGE_COLUMNS + "WHERE c.sequence IS NOT NULL ORDER BY c.sequence DESC LIMIT 1"
)

# Migrations that need stored data re-derived (e.g. new search columns) run this afterwards.
ALL_INSTANCES = "SELECT version, series_key, metadata FROM instance ORDER BY version"
REBUILD_INSTANCE = (
    "UPDATE instance SET instance_number = ?, acquisition_datetime = ?, doc = ? WHERE version = ?"
)
RESET_LEVELS = (
    "UPDATE series SET instance_count = 0, doc = NULL",
    "UPDATE study SET instance_count = 0, series_count = 0, doc = NULL",
    "DELETE FROM person_name_word",
    "DELETE FROM series_request",
)


def in_list(sql: str, count: int) -> str:
    """``sql`` with its ``{keys}`` as ``count`` parameters."""
    return sql.replace("{keys}", ", ".join("?" * count))


def uid_clauses(
    study: str | None, series: str | None = None, sop: str | None = None
) -> tuple[list[str], list]:
    """WHERE clauses (over st, se, i) fixing the UIDs that are given."""
    where, params = [], []
    for clause, uid in (
        ("st.study_uid = ?", study),
        ("se.series_uid = ?", series),
        ("i.sop_uid = ?", sop),
    ):
        if uid is not None:
            where.append(clause)
            params.append(uid)
    return where, params


def scoped(sql: str, scope: Scope) -> tuple[str, tuple]:
    where, params = uid_clauses(scope.study, scope.series, scope.sop)
    where = ["st.partition_name = ?", *where]
    return sql.replace("{where}", " AND ".join(where)), (scope.partition, *params)


def etag_query(scope: Scope) -> tuple[str, tuple]:
    """The ETag of a study or series is its key and revision (bumped by every change); of an
    instance, its version (immutable)."""
    if scope.sop is not None:
        return scoped("SELECT i.version, 0" + _JOIN + "WHERE {where}", scope)
    if scope.series is not None:
        return scoped(
            "SELECT se.series_key, se.revision FROM series se JOIN study st USING (study_key) "
            "WHERE {where}",
            scope,
        )
    return scoped("SELECT st.study_key, st.revision FROM study st WHERE {where}", scope)


# -- store -------------------------------------------------------------------------------------


def reserve_versions(partition: str, count: int) -> Op:
    """``count`` versions for stores about to start, each with its upload row (what the cleanup
    job removes when a store never commits). The first store to a partition creates it."""
    now = to_micros(utcnow())
    yield run(ADD_PARTITION, partition, now)
    found = yield rows(RESERVE_VERSIONS, count, partition, now)
    return sorted(r[0] for r in found)


def release_versions(versions: list[int]) -> Op:
    """Versions reserved and never used (no blob was written under them)."""
    yield many(FINISH_UPLOAD_QUIETLY, [(v,) for v in versions])


def commit(version: int, instance: NewInstance) -> Op:
    """Make a reserved store visible with its change-feed entry (SQLite; PostgreSQL runs the same
    steps in one statement, see pg_commit)."""
    i = instance.id
    if (yield one(FINISH_UPLOAD, version)) is None:
        raise StoreAbandoned(i.sop)
    yield from keep_blob(version, instance)
    study_key = yield from _key(INSERT_STUDY, STUDY_KEY, i.partition, i.study)
    series_key = yield from _key(INSERT_SERIES, SERIES_KEY, study_key, i.series)
    record = instance.search
    inserted = yield one(INSERT_INSTANCE, version, series_key, i.sop, *instance_values(instance))
    if inserted is None:
        raise AlreadyExists(f"SOP instance {i.sop} is already stored")
    _, first, series_doc = yield one(COUNT_SERIES_STORE, series_key)
    (study_doc,) = yield one(COUNT_STUDY_STORE, int(first), study_key)
    yield from merge_attributes(Level.SERIES, series_key, series_doc, record.series_doc)
    yield from merge_attributes(Level.STUDY, study_key, study_doc, record.study_doc)
    # Read after the first write (FINISH_UPLOAD): a store that does not see a tag added now is
    # waited for by the tag's reindex (ExtendedTagIndex.settled_version).
    yield from extended_tags_ops.index_instance(
        version, series_key, study_key, instance.metadata, instance.invalid
    )
    yield from log_changes(Action.CREATE, [(i, version)])


def keep_blob(version: int, instance: NewInstance) -> Op:
    """The instance's file, when the index keeps it (``NewInstance.blob``), in the store's
    transaction: durable with its rows, undone with them."""
    if instance.blob is not None:
        yield run(KEEP_BLOB, version, instance.blob)


def finish_blob_deletions(ids: list[int]) -> Op:
    """Blob deletions done: off the queue, and the files the index kept for them gone."""
    found = yield rows(in_list(DELETED_BLOB_KEYS, len(ids)), *ids)
    versions = [(v,) for r in found if (v := blob_version(r[0])) is not None]
    if versions:
        yield many(FORGET_KEPT_BLOB, versions)
    yield many(FINISH_BLOB_DELETION, [(i,) for i in ids])


def kept_blobs(versions: list[int]) -> Op:
    """{version: file} of those of ``versions`` whose file the index keeps."""
    found = yield rows(in_list(KEPT_BLOBS, len(versions)), *versions)
    return {r[0]: bytes(r[1]) for r in found}


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
    return each(commit, stores, (AlreadyExists, StoreAbandoned))


def each(step, stores: list[tuple], refusals: tuple[type[Exception], ...]) -> Op:
    """``step(*store)`` for each store in turn, each in a savepoint of its own: one that raises
    one of ``refusals`` is undone alone (any other error fails the transaction). Its refusal,
    or None, for each store."""
    outcomes: list[Exception | None] = []
    for store in stores:
        yield run("SAVEPOINT store")
        try:
            yield from step(*store)
        except refusals as exc:
            yield run("ROLLBACK TO store")
            outcomes.append(exc)
        else:
            outcomes.append(None)
        yield run("RELEASE store")
    return outcomes


def abandon(version: int) -> Op:
    """Give up a store: its upload ends and its blob (if written) is queued for deletion now.
    False when the store had already finished or been abandoned."""
    row = yield one(FINISH_UPLOAD, version)
    if row is None:
        return False
    yield run(QUEUE_BLOB_DELETION, blob_key(row[0], version), to_micros(utcnow()))
    return True


def _key(insert: str, select: str, *params: Any) -> Op:
    """The key of a study or series, which is made when new: looked up first, since most
    stores find it (one statement, not an insert that does nothing and then the look-up)."""
    found = yield one(select, *params)
    if found is None:
        yield run(insert, *params)
        found = yield one(select, *params)
    return found[0]


def merge_attributes(level: Level, key: int, old: str | None, new: str) -> Op:
    """Merge an instance's level document into its study's or series'; when that changes it,
    rewrite the level's matching columns and side rows (name words, request items)."""
    yield from set_attributes(level, key, old, sk.merge_docs(old, new))


def set_attributes(level: Level, key: int, old: str | None, merged: str) -> Op:
    """Make ``merged`` the document of a study or series whose document is ``old``."""
    if merged == old:
        return
    table = LEVEL_ATTRIBUTES[level]
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


def log_changes(action: Action, changes: list[tuple[InstanceId, int]]) -> Op:
    """The change-feed rows of a write: its last statement, after every write they may depend
    on (on PostgreSQL they are numbered in the order written, see dicomhub_number_changes)."""
    now = to_micros(utcnow())
    yield many(
        INSERT_CHANGE,
        [(now, int(action), i.partition, i.study, i.series, i.sop, v) for i, v in changes],
    )


# -- delete ------------------------------------------------------------------------------------


def delete(d: Dialect, scope: Scope, cleanup_after: datetime) -> Op:
    sql, params = scoped(SELECT_INSTANCES, scope)
    found = yield rows(sql, *params)
    if not found:
        return 0
    # Lock the studies, then the series, that may be removed, before changing anything: a store
    # locks them in that order too (dicomhub_store reads them FOR KEY SHARE), so a store and a
    # delete wait for each other one way only, never both ways (a deadlock), and a store never
    # refers to a study or series just removed. Then read the instances again: a concurrent
    # delete of them has ended by now.
    series = sorted({r["series_key"] for r in found})
    yield rows(in_list(LOCK_STUDIES, len(series)) + d.for_update, *series)
    locked = yield rows(in_list(LOCK_SERIES, len(series)) + d.for_update, *series)
    keys = {r[0] for r in locked}
    found = [r for r in (yield rows(sql, *params)) if r["series_key"] in keys]
    if not found:
        return 0
    due = to_micros(cleanup_after)
    yield many(DELETE_INSTANCE, [(r["version"],) for r in found])
    # every version goes: the latest, and the original of those replaced
    kept = yield rows(in_list(ORIGINALS_OF_SERIES, len(series)), *series)
    deleted = {(r["series_key"], r["sop_uid"]): r["partition_name"] for r in found}
    originals = [
        (o["series_key"], o["sop_uid"], o["version"])
        for o in kept
        if (o["series_key"], o["sop_uid"]) in deleted
    ]
    if originals:
        yield many(DELETE_ORIGINAL, [(s, sop) for s, sop, _ in originals])
    yield many(
        QUEUE_BLOB_DELETION,
        [(blob_key(r["partition_name"], r["version"]), due) for r in found]
        + [(blob_key(deleted[s, sop], v), due) for s, sop, v in originals],
    )
    removed: dict[int, int] = {}  # series key -> instances removed
    for r in found:
        removed[r["series_key"]] = removed.get(r["series_key"], 0) + 1
    for series_key, count in removed.items():
        study_key, emptied = yield one(COUNT_SERIES_DELETE, count, series_key)
        yield run(COUNT_STUDY_DELETE, count, int(emptied), study_key)
        yield run(DELETE_EMPTY_SERIES, series_key)
        yield run(DELETE_EMPTY_STUDY, study_key)
    changes = [
        (
            InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
            r["version"],
        )
        for r in found
    ]
    yield from log_changes(Action.DELETE, changes)
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
    """Stored DICOM JSON of the scope's instances (their originals when ``scope.original``) and
    its ETag (run in one snapshot)."""
    select = SELECT_ORIGINAL_METADATA if scope.original else SELECT_METADATA
    sql, params = scoped(select, scope)
    found = yield rows(sql, *params)
    tag_sql, tag_params = etag_query(scope)
    tag = yield one(tag_sql, *tag_params)
    if tag is None:
        return [r[0] for r in found], ""
    etag = str(tag[0]) if scope.sop else f"{tag[0]}-{tag[1]}"
    # the originals' ETag: another text (a revision moves on with every version, so it
    # changes with them too)
    return [r[0] for r in found], etag + "-original" if scope.original else etag


# -- migrations --------------------------------------------------------------------------------


def rebuild_search() -> Op:
    """Re-derive every search column, level document and counter from the stored metadata
    (after a migration that adds search columns)."""
    for sql in RESET_LEVELS:
        yield run(sql)
    for r in (yield rows(ALL_INSTANCES)):
        record = sk.describe(json.loads(r["metadata"]))
        yield run(
            REBUILD_INSTANCE,
            record.instance.get("instance_number"),
            record.instance.get("acquisition_datetime"),
            record.instance_doc,
            r["version"],
        )
        study_key, first, series_doc = yield one(COUNT_SERIES_STORE, r["series_key"])
        (study_doc,) = yield one(COUNT_STUDY_STORE, int(first), study_key)
        yield from merge_attributes(Level.SERIES, r["series_key"], series_doc, record.series_doc)
        yield from merge_attributes(Level.STUDY, study_key, study_doc, record.study_doc)
