"""SQL of the index, kept as data: one text for SQLite and PostgreSQL (see dialect.py for the
few differences). Parameters are ``?``; the PostgreSQL driver numbers them."""

from dataclasses import dataclass

from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.model import Scope

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
# lock them (see index_ops.delete).
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
QUEUE_BLOB_DELETION = "INSERT INTO blob_deletion (blob_key, cleanup_after) VALUES (?, ?)"
DUE_BLOB_DELETIONS = (
    "SELECT id, blob_key FROM blob_deletion WHERE cleanup_after <= ? ORDER BY cleanup_after LIMIT ?"
)
FINISH_BLOB_DELETION = "DELETE FROM blob_deletion WHERE id = ?"
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
