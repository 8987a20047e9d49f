"""UPS workitems in the index (operations of ``instance_ops``'s kind, SQL kept as data).

A workitem is one row (its DICOM JSON dataset, state, lock and revision) plus one row per
value of its matching keys in ``workitem_value`` (``dicom.workitem_query.index_values``). A
change is a conditional UPDATE of the revision and state it was decided on: of two concurrent
changes (two performers claiming one workitem), exactly one finds its row and wins, on every
engine; the other changes nothing and is told so.
"""

from __future__ import annotations

from datetime import datetime

from dicomhub.clock import to_micros
from dicomhub.dicom.workitem_query import WORDS, WorkitemCondition, WorkitemQuery
from dicomhub.errors import WorkitemConflict
from dicomhub.model import DEFAULT_PARTITION, StoredWorkitem
from dicomhub.storage import workitem_event_ops as events
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.search_sql import range_clause
from dicomhub.storage.statements import Op, many, one, run

Values = list[tuple[str, int, str]]

INSERT = (
    "INSERT INTO workitem (partition_name, workitem_uid, state, transaction_uid, revision, "
    "created, updated, dataset) VALUES (?, ?, ?, NULL, 1, ?, ?, ?) "
    "ON CONFLICT DO NOTHING RETURNING workitem_key"
)
INSERT_VALUES = "INSERT INTO workitem_value (workitem_key, path, item, value) VALUES (?, ?, ?, ?)"
GET = (
    "SELECT workitem_uid, state, transaction_uid, revision, dataset FROM workitem "
    "WHERE partition_name = ? AND workitem_uid = ?"
)
SET = (
    "UPDATE workitem SET state = ?, transaction_uid = ?, revision = revision + 1, updated = ?, "
    "dataset = ? WHERE partition_name = ? AND workitem_uid = ? AND revision = ? AND state = ? "
    "RETURNING workitem_key"
)
DELETE_VALUES = "DELETE FROM workitem_value WHERE workitem_key = ?"


def add(
    d: Dialect,
    uid: str,
    state: str,
    dataset: str,
    values: Values,
    now: datetime,
    reports: list[str],
    partition: str = DEFAULT_PARTITION,
) -> Op:
    """A new workitem of data ``partition``; the partition's global subscribers (not
    suspended, their filter matching) join its subscription list and are sent ``reports``, in
    the same transaction."""
    micros = to_micros(now)
    row = yield one(INSERT, partition, uid, state, micros, micros, dataset)
    if row is None:
        raise WorkitemConflict("0111", f"workitem {uid} exists already")
    if values:
        yield many(INSERT_VALUES, [(row[0], *v) for v in values])
    yield from events.join_global(d, row[0], now, partition)
    yield from events.queue(row[0], uid, reports, now)


def get(uid: str, partition: str = DEFAULT_PARTITION) -> Op:
    row = yield one(GET, partition, uid)
    if row is None:
        return None
    return StoredWorkitem(
        uid=row["workitem_uid"],
        state=row["state"],
        lock=row["transaction_uid"],
        revision=row["revision"],
        dataset=row["dataset"],
    )


def replace(
    uid: str,
    revision: int,
    state_before: str,
    state: str,
    lock: str | None,
    dataset: str,
    values: Values,
    now: datetime,
    reports: list[str],
    partition: str = DEFAULT_PARTITION,
) -> Op:
    """The workitem's new state, lock, dataset and values, if it is still at ``revision`` in
    ``state_before``, and ``reports`` queued for its subscribers; False (nothing written) when
    another change came first."""
    row = yield one(
        SET, state, lock, to_micros(now), dataset, partition, uid, revision, state_before
    )
    if row is None:
        return False
    yield run(DELETE_VALUES, row[0])
    if values:
        yield many(INSERT_VALUES, [(row[0], *v) for v in values])
    yield from events.queue(row[0], uid, reports, now)
    return True


# -- search --------------------------------------------------------------------------------------


def search_sql(query: WorkitemQuery, d: Dialect) -> tuple[str, list]:
    """One page of matching datasets, in creation order."""
    clauses, params = where(query, d)
    sql = (
        f"SELECT w.dataset FROM workitem w WHERE {' AND '.join(clauses)} "
        "ORDER BY w.workitem_key LIMIT ? OFFSET ?"
    )
    return sql, [*params, query.limit, query.offset]


def where(query: WorkitemQuery, d: Dialect) -> tuple[list[str], list]:
    """The conditions of ``query`` on workitem ``w`` (ANDed), and their parameters."""
    clauses, params = ["w.partition_name = ?"], [query.partition]
    groups: dict[str, list[WorkitemCondition]] = {}
    for condition in query.conditions:
        if any(m.op == "words" for m in condition.alternatives):
            clause, values = _fuzzy(condition, d)
            clauses.append(clause)
            params += values
        else:  # the keys of one sequence match within one item
            group = condition.key.sequence or condition.key.hex_path
            groups.setdefault(group, []).append(condition)
    for conditions in groups.values():
        clause, values = _group(conditions, d)
        clauses.append(clause)
        params += values
    return clauses, params


def _group(conditions: list[WorkitemCondition], d: Dialect) -> tuple[str, list]:
    joins, wheres, params = [], ["v0.workitem_key = w.workitem_key"], []
    for n, condition in enumerate(conditions):
        if n:
            joins.append(
                f"JOIN workitem_value v{n} ON v{n}.workitem_key = v0.workitem_key "
                f"AND v{n}.item = v0.item"
            )
        clause, values = _alternatives(f"v{n}.value", condition, d)
        wheres += [f"v{n}.path = ?", clause]
        params += [condition.key.hex_path, *values]
    head = "EXISTS (SELECT 1 FROM workitem_value v0 " + " ".join(joins)
    return f"{head} WHERE {' AND '.join(wheres)})", params


def _alternatives(column: str, condition: WorkitemCondition, d: Dialect) -> tuple[str, list]:
    clauses, params = [], []
    for match in condition.alternatives:
        if match.op == "eq":
            clauses.append(f"{column} = ?")
            params.append(match.value)
        elif match.op == "wildcard":
            clauses.append(d.wildcard.format(column=column))
            params.append(d.pattern(match.value))
        elif match.op == "range":
            clauses.append(range_clause(column, *match.value, params))
    return "(" + " OR ".join(clauses) + ")", params


def _fuzzy(condition: WorkitemCondition, d: Dialect) -> tuple[str, list]:
    """A person name, fuzzily: each alternative's words each start a word of the name."""
    path = condition.key.hex_path
    clauses, params = [], []
    plain = WorkitemCondition(
        condition.key, tuple(m for m in condition.alternatives if m.op != "words")
    )
    if plain.alternatives:
        clause, values = _group([plain], d)
        clauses.append(clause)
        params += values
    for match in condition.alternatives:
        if match.op != "words":
            continue
        words = []
        for word in match.value:
            words.append(
                "EXISTS (SELECT 1 FROM workitem_value x WHERE x.workitem_key = w.workitem_key "
                "AND x.path = ? AND x.value >= ? AND x.value <= ?)"
            )
            params += [path + WORDS, word, word + "\U0010ffff"]
        clauses.append("(" + " AND ".join(words) + ")")
    return "(" + " OR ".join(clauses) + ")", params
