"""A parsed QIDO-RS query as one SQL statement over the index (any engine: see dialect.py).

Every matching key is a column of its level's table (or of ``series_request`` and
``person_name_word``), so a search reads index rows only; metadata is read only when the caller
needs an attribute the level documents do not hold.
"""

from __future__ import annotations

from typing import Any

from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import Condition, Match, Query
from dicomhub.dicom.search_keys import Kind
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.instance_ops import uid_clauses

ALIAS = {Level.STUDY: "st", Level.SERIES: "se", Level.INSTANCE: "i"}
_FROM = {
    Level.STUDY: "FROM study st",
    Level.SERIES: "FROM series se JOIN study st ON st.study_key = se.study_key",
    Level.INSTANCE: (
        "FROM instance i JOIN series se ON se.series_key = i.series_key "
        "JOIN study st ON st.study_key = se.study_key"
    ),
}
# Storage order: keys and versions are allocated in the order things are first stored.
_ORDER = {Level.STUDY: "st.study_key", Level.SERIES: "se.series_key", Level.INSTANCE: "i.version"}
_COLUMNS = {
    Level.STUDY: (
        "st.study_uid, st.doc AS study_doc, st.instance_count AS study_instances, "
        "st.series_count AS study_series"
    ),
    Level.SERIES: (", se.series_uid, se.doc AS series_doc, se.instance_count AS series_instances"),
    Level.INSTANCE: ", i.sop_uid, i.doc AS instance_doc",
}
_OPTIONAL = {
    "modalities": ("(SELECT {list} FROM series m WHERE m.study_key = st.study_key) AS modalities"),
    "sop_classes": (
        "(SELECT {list} FROM instance c JOIN series cs ON cs.series_key = c.series_key "
        "WHERE cs.study_key = st.study_key) AS sop_classes"
    ),
    "series_doc": (
        "(SELECT r.doc FROM series r WHERE r.study_key = st.study_key "
        "ORDER BY r.series_key DESC LIMIT 1) AS series_doc"
    ),
}
_LISTED = {"modalities": "m.modality", "sop_classes": "c.sop_class_uid"}  # in {list} above
_LATEST_METADATA = {
    Level.STUDY: (
        "(SELECT r.metadata FROM instance r JOIN series rs ON rs.series_key = r.series_key "
        "WHERE rs.study_key = st.study_key ORDER BY r.version DESC LIMIT 1)"
    ),
    Level.SERIES: (
        "(SELECT r.metadata FROM instance r WHERE r.series_key = se.series_key "
        "ORDER BY r.version DESC LIMIT 1)"
    ),
    Level.INSTANCE: "i.metadata",
}


def search_sql(query: Query, needs: set[str], d: Dialect) -> tuple[str, list]:
    """Rows of one page, and one more row when more matches follow."""
    level = query.level
    columns = "".join(_COLUMNS[lv] for lv in Level if lv <= level)
    extra = [
        _OPTIONAL[n].format(list=d.distinct_list.format(column=_LISTED[n]))
        for n in ("modalities", "sop_classes")
        if n in needs
    ]
    if "series_doc" in needs and level is Level.STUDY:
        extra.append(_OPTIONAL["series_doc"])
    if "metadata" in needs:
        extra.append(_LATEST_METADATA[level] + " AS metadata")
    select = "SELECT " + ", ".join([columns, *extra])
    where, params = _where(query, d)
    order = [
        f"{_column(key)}{' DESC' + d.nulls_last if desc else d.nulls_first}"
        for key, desc in query.order
    ]
    sql = (
        f"{select} {_FROM[level]} WHERE {where} "
        f"ORDER BY {', '.join([*order, _ORDER[level]])} LIMIT ? OFFSET ?"
    )
    return sql, [*params, query.limit + 1, query.offset]


def count_sql(query: Query, d: Dialect) -> tuple[str, list]:
    where, params = _where(query, d)
    return f"SELECT count(*) {_FROM[query.level]} WHERE {where}", params


def _where(query: Query, d: Dialect) -> tuple[str, list]:
    # The unary + keeps the planner from choosing a scan of the partition over a matching key's
    # index; a study UID goes through the (partition, study UID) unique index.
    by_study = query.study is not None or any(
        c.key.keyword == "StudyInstanceUID" for c in query.conditions
    )
    partition = "st.partition_name = ?" if by_study else d.partition_hint + "st.partition_name = ?"
    scope, params = uid_clauses(query.study, query.series)
    clauses = [partition, *scope]
    params = [query.partition, *params]
    items: list[Condition] = []
    for condition in query.conditions:
        if condition.key.kind is Kind.ITEM:
            items.append(condition)
            continue
        clause, values = _condition(condition, d)
        clauses.append(clause)
        params += values
    if items:  # all keys of the sequence must match within one item (PS3.4 C.2.2.2.6)
        parts = []
        for condition in items:
            clause, values = _alternatives(f"r.{condition.key.column}", condition.alternatives, d)
            parts.append(clause)
            params += values
        clauses.append(
            "se.series_key IN (SELECT r.series_key FROM series_request r WHERE "
            + " AND ".join(parts)
            + ")"
        )
    return " AND ".join(clauses), params


def _column(key) -> str:
    return f"{ALIAS[key.level]}.{key.column}"


_OWNER = {Level.STUDY: "st.study_key", Level.SERIES: "se.series_key", Level.INSTANCE: "i.version"}
_EXTENDED = {
    Level.STUDY: "extended_query_tag_study",
    Level.SERIES: "extended_query_tag_series",
    Level.INSTANCE: "extended_query_tag_instance",
}


def _extended(condition: Condition, d: Dialect) -> tuple[str, list]:
    """An extended query tag's condition: a value row of the tag matches (or, for a fuzzy
    name, every word starts a word row)."""
    key = condition.key
    head = (
        f"EXISTS (SELECT 1 FROM {_EXTENDED[key.level]} v "
        f"WHERE v.tag_key = ? AND v.owner_key = {_OWNER[key.level]} AND v.kind = {{kind}} AND "
    )
    column = "v.num_value" if key.kind is Kind.NUMBER else "v.text_value"
    clauses, params = [], []
    plain = tuple(m for m in condition.alternatives if m.op != "words")
    if plain:
        clause, values = _alternatives(column, plain, d)
        clauses.append(head.format(kind=0) + clause + ")")
        params += [key.extended, *values]
    for match in condition.alternatives:
        if match.op == "words":
            words = [head.format(kind=1) + "v.text_value >= ? AND v.text_value <= ?)"] * len(
                match.value
            )
            clauses.append("(" + " AND ".join(words) + ")")
            for word in match.value:
                params += [key.extended, word, word + "\U0010ffff"]
    return "(" + " OR ".join(clauses) + ")", params


def _condition(condition: Condition, d: Dialect) -> tuple[str, list]:
    key = condition.key
    if key.extended is not None:
        return _extended(condition, d)
    if key.kind is Kind.MODALITIES:
        clause, params = _alternatives("m.modality", condition.alternatives, d)
        return f"st.study_key IN (SELECT m.study_key FROM series m WHERE {clause})", params
    return _alternatives(_column(key), condition.alternatives, d, key.tag)


def range_clause(column: str, low: Any, high: Any, params: list) -> str:
    """``column`` within inclusive bounds (None: open on that side); their values go to
    ``params``."""
    bounds = []
    if low is not None:
        bounds.append(f"{column} >= ?")
        params.append(low)
    if high is not None:
        bounds.append(f"{column} <= ?")
        params.append(high)
    return "(" + (" AND ".join(bounds) or "1 = 1") + ")"


def _alternatives(
    column: str, alternatives: tuple[Match, ...], d: Dialect, tag: int = 0
) -> tuple[str, list]:
    equal = [m.value for m in alternatives if m.op == "eq"]
    clauses: list[str] = []
    params: list = []
    if len(equal) == 1:
        clauses.append(f"{column} = ?")
    elif equal:
        clauses.append(f"{column} IN ({', '.join('?' * len(equal))})")
    params += equal
    for match in alternatives:
        if match.op == "wildcard":
            clauses.append(d.wildcard.format(column=column))
            params.append(d.pattern(match.value))
        elif match.op == "range":
            clauses.append(range_clause(column, *match.value, params))
        elif match.op == "words":  # every word is the start of a word of the name
            words = []
            for word in match.value:
                words.append(
                    "st.study_key IN (SELECT w.study_key FROM person_name_word w "
                    "WHERE w.tag = ? AND w.word >= ? AND w.word <= ?)"
                )
                params += [tag, word, word + "\U0010ffff"]
            clauses.append("(" + " AND ".join(words) + ")")
    return "(" + " OR ".join(clauses) + ")", params
