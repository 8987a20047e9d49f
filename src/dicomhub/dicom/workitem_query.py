"""Search for workitems (PS3.18 11.9): the matching keys Microsoft's server offers, the values
the index records for each workitem, the parsed query, and what each result returns.

Each matching key is a path of tags (``0040A370.00080050`` for
ReferencedRequestSequence.AccessionNumber: dotted sequence paths are accepted here). The index
keeps one row per (path, item, value) of a workitem, normalised as QIDO-RS normalises them
(``search_keys``), so matching in SQL is plain comparison: exact, wildcard, UID list, range
(ScheduledProcedureStepStartDateTime, in UTC) and fuzzy (PatientName word prefixes). Keys in
the same sequence must match within one item (PS3.4 C.2.2.2.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.query import Match, range_match, resolve
from dicomhub.dicom.uids import is_valid_uid
from dicomhub.dicom.workitems import INVALID_VALUE, TRANSACTION, key
from dicomhub.errors import WorkitemInvalid

DEFAULT_LIMIT, MAX_LIMIT = 100, 200  # Microsoft's: a limit over 200 is refused
MAX_VALUES = 100
WORDS = "#words"  # suffix of the path whose rows are a name's words (fuzzy matching)
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}


@dataclass(frozen=True)
class WorkitemKey:
    path: tuple[str, ...]  # keywords: one, or a sequence and the attribute in its items
    kind: str  # text, pn, uid, datetime

    @property
    def hex_path(self) -> str:
        return ".".join(key(k) for k in self.path)

    @property
    def sequence(self) -> str | None:
        return self.path[0] if len(self.path) > 1 else None


KEYS = [
    WorkitemKey(("PatientName",), "pn"),
    WorkitemKey(("PatientID",), "text"),
    WorkitemKey(("ReferencedRequestSequence", "AccessionNumber"), "text"),
    WorkitemKey(("ReferencedRequestSequence", "RequestedProcedureID"), "text"),
    WorkitemKey(("ScheduledProcedureStepStartDateTime",), "datetime"),
    WorkitemKey(("ScheduledStationNameCodeSequence", "CodeValue"), "text"),
    WorkitemKey(("ScheduledStationClassCodeSequence", "CodeValue"), "text"),
    WorkitemKey(("ScheduledStationGeographicLocationCodeSequence", "CodeValue"), "text"),
    WorkitemKey(("ProcedureStepState",), "text"),
    WorkitemKey(("StudyInstanceUID",), "uid"),
]
KEYS_BY_PATH = {k.hex_path: k for k in KEYS}
# What a result holds besides the matching keys and includefield's attributes.
DEFAULT_RETURN = frozenset(
    tag_for_keyword(k)
    for k in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "ProcedureStepState",
        "ScheduledProcedureStepPriority",
        "ProcedureStepLabel",
        "WorklistLabel",
        "ScheduledProcedureStepStartDateTime",
        "ExpectedCompletionDateTime",
        "ScheduledProcedureStepModificationDateTime",
        "InputReadinessState",
        "ScheduledWorkitemCodeSequence",
        "ScheduledStationNameCodeSequence",
        "ScheduledStationClassCodeSequence",
        "ScheduledStationGeographicLocationCodeSequence",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedRequestSequence",
        "StudyInstanceUID",
    )
)


@dataclass(frozen=True)
class WorkitemCondition:
    key: WorkitemKey
    alternatives: tuple[Match, ...]  # any of them matches (op: eq, wildcard, range, words)


@dataclass
class WorkitemQuery:
    conditions: list[WorkitemCondition] = field(default_factory=list)
    includes: set[int] | None = field(default_factory=set)  # None: every attribute
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)  # parameters not used, for the warning
    partition: str = "Microsoft.Default"  # the data partition searched


def parse(params: list[tuple[str, str]]) -> WorkitemQuery:
    """The query of ``GET /workitems?...``; raises WorkitemInvalid (400) for a malformed one."""
    query = WorkitemQuery()
    controls = {name.lower(): value for name, value in params if name.lower() in _CONTROL}
    fuzzy = controls.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise _bad("fuzzymatching", controls["fuzzymatching"], "is not true or false")
    query.limit = _number("limit", controls.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT)
    query.offset = _number("offset", controls.get("offset"), 0, 0, 2**31 - 1)
    for name, value in params:
        lowered = name.lower()
        if lowered == "includefield":
            _include(query, value)
        elif lowered not in _CONTROL:
            _condition(query, name, value, fuzzy == "true")
    return query


def _bad(name: str, value: str, why: str) -> WorkitemInvalid:
    return WorkitemInvalid(INVALID_VALUE, f"Invalid query parameter {name}: {value[:60]!r} {why}")


def _number(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not low <= int(text) <= high:
        raise _bad(name, raw, f"is not an integer from {low} to {high}")
    return int(text)


def _include(query: WorkitemQuery, value: str) -> None:
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() == "all":
            query.includes = None
            continue
        tags = [resolve(p) for p in part.split(".")]
        if None in tags:
            query.ignored.append(f"includefield={part}")
        elif query.includes is not None:
            query.includes.add(tags[0])  # a sequence is returned whole


def _condition(query: WorkitemQuery, name: str, value: str, fuzzy: bool) -> None:
    tags = [resolve(part) for part in name.split(".")]
    found = None if None in tags else KEYS_BY_PATH.get(".".join(f"{t:08X}" for t in tags))
    if found is None:
        query.ignored.append(name)
        return
    if any(c.key == found for c in query.conditions):
        raise _bad(name, value, "names an attribute given twice")
    if query.includes is not None:
        query.includes.add(tags[0])
    value = value.strip()
    if value in ("", "*"):
        return  # universal matching: returned, not filtered
    separators = r"[\\,]" if found.kind == "uid" else r"\\"
    pieces = [p for p in re.split(separators, value) if p]
    if len(pieces) > MAX_VALUES:
        raise _bad(name, value, f"has more than {MAX_VALUES} values")
    query.conditions.append(
        WorkitemCondition(found, tuple(_match(found, name, p, fuzzy) for p in pieces))
    )


def _match(found: WorkitemKey, name: str, value: str, fuzzy: bool) -> Match:
    wildcard = "*" in value or "?" in value
    if found.kind == "uid":
        if not is_valid_uid(value):
            raise _bad(name, value, "is not a UID")
        return Match("eq", value)
    if found.kind == "pn":
        if fuzzy and not wildcard:
            words = tuple(sorted(sk.name_words(value)))
            if len(words) > 16:
                raise _bad(name, value, "has more than 16 words")
            return Match("words", words) if words else Match("eq", sk.person_name(value))
        folded = sk.person_name(value)
        return Match("wildcard", _glob(folded)) if wildcard else Match("eq", folded)
    if found.kind == "datetime":
        return _range(name, value.replace(" ", "+"))
    return Match("wildcard", _glob(value)) if wildcard else Match("eq", value)


def _range(name: str, value: str) -> Match:
    """A DT value covers its precision; ``a-b``, ``a-`` and ``-b`` are inclusive ranges (a
    range in every case: the workitem search has no equality on date-times)."""
    found = range_match(
        value,
        sk.datetime_bounds,
        None,
        lambda why: _bad(name, value, why),
        "is not a date-time (YYYYMMDDHHMMSS) or a range of them",
    )
    return Match("range", (found.value, found.value)) if found.op == "eq" else found


def _glob(value: str) -> str:
    return value.replace("[", "[[]")


# -- what the index records, and what a result returns -----------------------------------------


def index_values(ds: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(path, item, value) of every matching key's values in ``ds`` (item 0 at the top level),
    normalised; a person name adds its words under ``path + WORDS``."""
    offset = sk.timezone_offset(ds)
    out: list[tuple[str, int, str]] = []
    for found in KEYS:
        if found.sequence:
            items = (ds.get(key(found.sequence)) or {}).get("Value") or []
            owners = list(enumerate(items))
        else:
            owners = [(0, ds)]
        for item, owner in owners:
            if not isinstance(owner, dict):
                continue
            for value in (owner.get(key(found.path[-1])) or {}).get("Value") or []:
                out += _normalised(found, item, value, offset)
    return out


def _normalised(found: WorkitemKey, item: int, value: Any, offset: str | None) -> list:
    path = found.hex_path
    if found.kind == "pn":
        name = sk.pn_text(value)
        folded = sk.person_name(name) if name else ""
        if not folded:
            return []
        return [(path, item, folded)] + [
            (path + WORDS, item, w) for w in sorted(sk.name_words(name))
        ]
    if found.kind == "datetime":
        bounds = sk.datetime_bounds(str(value), offset) if value else None
        return [(path, item, bounds[0])] if bounds else []
    text = str(value).strip() if value is not None else ""
    return [(path, item, text)] if text else []


def result(ds: dict[str, Any], query: WorkitemQuery) -> dict[str, Any]:
    """A match as returned: the default attributes, the matching keys and the included ones
    (every one for ``includefield=all``), never the Transaction UID."""
    wanted = None if query.includes is None else DEFAULT_RETURN | query.includes
    return {
        k: v for k, v in ds.items() if k != TRANSACTION and (wanted is None or int(k, 16) in wanted)
    }
