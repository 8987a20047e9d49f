"""Extended query tags in the index (operations of ``instance_ops``'s kind, SQL kept as data).

A tag is added with status Adding and a reindex job in one transaction; instances stored from
then on are indexed as they arrive, and the job indexes those stored before, in batches, then
marks the tag Ready. A store that ran while the tag was added may not have seen it: the job
covers versions up to the highest stored once every such store has ended (``settled_version``
of the index). A value that fails validation is recorded as an error of that instance; the tag
stays usable for the others.
"""

from __future__ import annotations

import json
from datetime import datetime

from dicomhub.clock import from_micros, to_micros, utcnow
from dicomhub.dicom import extended_tags as et
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.levels import Level
from dicomhub.errors import Conflict, InvalidRequest, NotFound
from dicomhub.model import ExtendedTagError, JobType
from dicomhub.storage import job_ops as jobs
from dicomhub.storage.statements import Op, many, one, rows, run

TABLE = {
    Level.STUDY: "extended_query_tag_study",
    Level.SERIES: "extended_query_tag_series",
    Level.INSTANCE: "extended_query_tag_instance",
}
_TAG_COLUMNS = (
    "t.tag_key, t.path, t.vr, t.private_creator, t.level, t.status, t.query_status, "
    "t.operation_id, (SELECT count(*) FROM extended_query_tag_error e "
    "WHERE e.tag_key = t.tag_key) AS errors"
)
SELECT_TAGS = f"SELECT {_TAG_COLUMNS} FROM extended_query_tag t"
INSERT_TAG = (
    "INSERT INTO extended_query_tag (path, vr, private_creator, level, status, query_status, "
    "operation_id, indexed_until) VALUES (?, ?, ?, ?, 'Adding', 'Enabled', ?, ?) "
    "ON CONFLICT (path) DO NOTHING RETURNING tag_key"
)
MAX_VERSION = "SELECT coalesce(max(version), 0) FROM instance"
INDEXING = (  # on every store: without the error counts
    "SELECT t.tag_key, t.path, t.vr, t.private_creator, t.level, t.status, t.query_status, "
    "t.operation_id, 0 AS errors FROM extended_query_tag t WHERE t.status IN ('Adding', 'Ready')"
)
NEWER_VALUE = "SELECT 1 FROM {table} WHERE tag_key = ? AND owner_key = ? AND version > ? LIMIT 1"
DROP_VALUES = "DELETE FROM {table} WHERE tag_key = ? AND owner_key = ?"
INSERT_VALUE = (
    "INSERT INTO {table} (tag_key, owner_key, version, kind, text_value, num_value) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
DROP_ERROR = "DELETE FROM extended_query_tag_error WHERE tag_key = ? AND version = ?"
INSERT_ERROR = (
    "INSERT INTO extended_query_tag_error (tag_key, version, created, message) VALUES (?, ?, ?, ?)"
)
BATCH = (
    "SELECT i.version, i.series_key, se.study_key, i.metadata, i.invalid FROM instance i "
    "JOIN series se ON se.series_key = i.series_key "
    "WHERE i.version > ? AND i.version <= ? ORDER BY i.version LIMIT ?"
)
COUNT_UNTIL = "SELECT count(*) FROM instance WHERE version <= ?"
READY = "UPDATE extended_query_tag SET status = 'Ready', operation_id = NULL WHERE tag_key = ?"
ERRORS = (
    "SELECT st.study_uid, se.series_uid, i.sop_uid, e.created, e.message "
    "FROM extended_query_tag_error e JOIN instance i ON i.version = e.version "
    "JOIN series se ON se.series_key = i.series_key JOIN study st ON st.study_key = se.study_key "
    "WHERE e.tag_key = ? ORDER BY e.version LIMIT ? OFFSET ?"
)


def tag_of(row) -> ExtendedTag:
    return ExtendedTag(
        path=row["path"],
        vr=row["vr"],
        level=Level(row["level"]),
        private_creator=row["private_creator"],
        key=row["tag_key"],
        status=row["status"],
        query_status=row["query_status"],
        errors=row["errors"],
        operation=row["operation_id"],
    )


def add(
    tags: list[ExtendedTag],
    max_tags: int,
    operation_id: str,
    now: datetime,
    max_attempts: int,
) -> Op:
    """Add tags (status Adding) and their reindex job, all or nothing. ``indexed_until`` and the
    job's ``until`` are the highest version stored now: a lower bound of what the job covers."""
    if len({t.path for t in tags}) != len(tags):
        raise InvalidRequest("a tag is given twice")
    existing = {r["path"] for r in (yield rows(SELECT_TAGS))}
    taken = sorted(t.path for t in tags if t.path in existing)
    if taken:
        raise Conflict(f"extended query tag(s) {', '.join(taken)} exist already")
    if len(existing) + len(tags) > max_tags:
        raise InvalidRequest(f"at most {max_tags} extended query tags can be added")
    until = yield from max_version()
    keys = []
    for t in tags:
        row = yield one(
            INSERT_TAG, t.path, t.vr, t.private_creator, int(t.level), operation_id, until
        )
        if row is None:
            raise Conflict(f"extended query tag {t.path} exists already")
        keys.append(row[0])
    payload = {"tagKeys": keys, "until": until}
    yield from jobs.enqueue(operation_id, str(JobType.REINDEX), payload, max_attempts, now, False)
    return operation_id


def find(path: str) -> Op:
    row = yield one(SELECT_TAGS + " WHERE t.path = ?", path)
    if row is None:
        raise NotFound(f"extended query tag {path} not found")
    return tag_of(row)


def listing(offset: int, limit: int) -> Op:
    found = yield rows(SELECT_TAGS + " ORDER BY t.tag_key LIMIT ? OFFSET ?", limit, offset)
    return [tag_of(r) for r in found]


def set_query_status(path: str, status: str) -> Op:
    tag = yield from find(path)
    yield run("UPDATE extended_query_tag SET query_status = ? WHERE tag_key = ?", status, tag.key)
    return (yield from find(path))


def delete(path: str) -> Op:
    """Remove a tag with its values and errors (cascades)."""
    tag = yield from find(path)
    yield run("DELETE FROM extended_query_tag WHERE tag_key = ?", tag.key)


def errors(path: str, offset: int, limit: int) -> Op:
    tag = yield from find(path)
    return [
        ExtendedTagError(
            r["study_uid"], r["series_uid"], r["sop_uid"], from_micros(r["created"]), r["message"]
        )
        for r in (yield rows(ERRORS, tag.key, limit, offset))
    ]


def searchable() -> Op:
    """Tags a query can use: Ready and Enabled."""
    found = yield rows(SELECT_TAGS + " WHERE t.status = 'Ready' AND t.query_status = 'Enabled'")
    return [tag_of(r) for r in found]


# -- indexing ------------------------------------------------------------------------------------


def indexing() -> Op:
    """The tags a newly stored instance is indexed under: those being added or ready."""
    return [tag_of(r) for r in (yield rows(INDEXING))]


def index_instance(
    version: int, series_key: int, study_key: int, metadata: bytes | str, invalid: dict[str, str]
) -> Op:
    """Index a newly stored instance under every tag being added or ready."""
    tags = yield from indexing()
    if tags:
        yield from _index(tags, version, series_key, study_key, json.loads(metadata), invalid)


def assess(tags: list[ExtendedTag], js, invalid: dict[str, str]):
    """(tag, rows, problem) of each tag in an instance (DICOM JSON ``js``): the rows to index
    (see extended_tags.values), or why its value is invalid. ``invalid``: the values STOW left
    out of the metadata as invalid (tag path -> why)."""
    for tag in tags:
        if tag.path in invalid:
            yield tag, [], f"{tag.path} {invalid[tag.path]}"
        else:
            yield tag, *et.values(js, tag)


def _index(
    tags: list[ExtendedTag], version: int, series_key: int, study_key: int, js, invalid
) -> Op:
    owners = {Level.STUDY: study_key, Level.SERIES: series_key, Level.INSTANCE: version}
    now = to_micros(utcnow())
    for tag, found, problem in assess(tags, js, invalid):
        yield run(DROP_ERROR, tag.key, version)
        if problem is not None:
            yield run(INSERT_ERROR, tag.key, version, now, problem)
            continue
        if not found:
            continue  # a study's or series' value stays as an earlier instance gave it
        table, owner = TABLE[tag.level], owners[tag.level]
        if (yield one(NEWER_VALUE.format(table=table), tag.key, owner, version)) is not None:
            continue  # a newer instance's value is indexed already
        yield run(DROP_VALUES.format(table=table), tag.key, owner)
        yield many(
            INSERT_VALUE.format(table=table),
            [(tag.key, owner, version, kind, text, num) for kind, text, num in found],
        )


def reindex_batch(tag_keys: list[int], after: int, until: int, limit: int) -> Op:
    """Index the next ``limit`` instances stored before the tags were added; returns the last
    version done (None when there were none left) and how many were done."""
    placeholders = ", ".join("?" * len(tag_keys))
    tags = [
        tag_of(r)
        for r in (yield rows(SELECT_TAGS + f" WHERE t.tag_key IN ({placeholders})", *tag_keys))
    ]
    if not tags:  # deleted while being added: nothing left to index
        return None, 0
    found = yield rows(BATCH, after, until, limit)
    for r in found:
        invalid = json.loads(r["invalid"]) if r["invalid"] else {}
        yield from _index(
            tags, r["version"], r["series_key"], r["study_key"], json.loads(r["metadata"]), invalid
        )
    return (found[-1]["version"] if found else None), len(found)


def count_until(until: int) -> Op:
    return (yield one(COUNT_UNTIL, until))[0]


def max_version() -> Op:
    return (yield one(MAX_VERSION))[0]


def mark_ready(tag_keys: list[int]) -> Op:
    yield many(READY, [(k,) for k in tag_keys])
