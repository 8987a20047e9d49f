"""QIDO-RS query parameters (PS3.18 8.3.4, 10.6.1) parsed into a query the index can run.

Matching follows PS3.4 C.2.2.2: single value, list of values (``\\``-separated, and
``,``-separated for UIDs and code strings), universal (empty value or ``*``), wildcard ``*``/``?``,
range ``a-b``/``a-``/``-b`` for DA, TM and DT, and sequence item matching on
RequestAttributesSequence. Unknown or unsupported keys are ignored and reported; malformed values
raise InvalidRequest naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from pydicom.datadict import keyword_dict, keyword_for_tag, tag_for_keyword

from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.dicom.search_keys import KEYS_BY_PATH, Key, Kind
from dicomhub.dicom.uids import is_valid_uid
from dicomhub.errors import InvalidRequest

ALL = "all"
DEFAULT_LIMIT = 100
MAX_VALUES = 500  # values in one list, and words in one fuzzy name: keeps each query bounded
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "orderby"}


@dataclass(frozen=True)
class Match:
    """One alternative of a condition. ``op`` is eq, wildcard, range or words."""

    op: str
    value: object  # eq: value; wildcard: GLOB pattern; range: (low|None, high|None); words: tuple


@dataclass(frozen=True)
class Condition:
    key: Key
    alternatives: tuple[Match, ...]  # any of them matches


@dataclass
class Query:
    level: Level
    study: str | None = None  # scope from the URL
    series: str | None = None
    partition: str = "Microsoft.Default"
    conditions: list[Condition] = field(default_factory=list)
    includes: set[int] | str = field(default_factory=set)  # tags, or ALL
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    order: list[tuple[Key, bool]] = field(default_factory=list)  # (key, descending)
    fuzzy: bool = False
    ignored: list[str] = field(default_factory=list)  # parameters not used, for the warning
    capped: bool = True  # the client did not choose the page size (or chose one over the maximum)
    extended: dict[int, Level] = field(default_factory=dict)  # extended query tags' attributes


def parse_query(
    params: list[tuple[str, str]],
    level: Level,
    *,
    study: str | None = None,
    series: str | None = None,
    max_limit: int = 1000,
    strict: bool = False,
    extended: dict[str, Key] | None = None,
) -> Query:
    """``extended``: the extended query tags that can be searched, by path (``hex_path``)."""
    query = Query(level, study, series)
    query.extended = {key.extended_tag: key.level for key in (extended or {}).values()}
    controls = {name.lower(): value for name, value in params if name.lower() in _CONTROL}
    query.fuzzy = _boolean("fuzzymatching", controls.get("fuzzymatching", "false"))
    if "limit" in controls:
        limit = _number("limit", controls["limit"], 1)
        query.limit, query.capped = min(limit, max_limit), limit > max_limit
    else:
        query.limit = min(DEFAULT_LIMIT, max_limit)
    query.offset = _number("offset", controls.get("offset", "0"), 0)
    if controls.get("orderby"):
        query.order = [_order_key(part, level) for part in controls["orderby"].split(",")]
    for name, value in params:
        lowered = name.lower()
        if lowered == "includefield":
            _include(query, value, strict)
        elif lowered not in _CONTROL:
            _condition(query, name, value, strict, extended or {})
    return query


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise InvalidRequest(f"Invalid query parameter {name}: {value!r} is not true or false")
    return value.lower() == "true"


def _number(name: str, value: str, minimum: int) -> int:
    text = value.strip()  # ASCII digits: int() takes others (²: ValueError) and any length
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not (
        minimum <= int(text) < 2**31
    ):
        raise InvalidRequest(
            f"Invalid query parameter {name}: {value!r} is not an integer from {minimum}"
        )
    return int(text)


@cache
def _keywords() -> dict[str, str]:
    return {keyword.lower(): keyword for keyword in keyword_dict}


def resolve(attribute: str) -> int | None:
    """Tag of a keyword (any case) or of an 8-digit hex tag; None when unknown."""
    attribute = attribute.strip()
    if _HEX_TAG.match(attribute):
        return int(attribute, 16)
    keyword = _keywords().get(attribute.lower())
    return keyword_dict[keyword] if keyword else None


def hex_path(name: str) -> str | None:
    """``00101030`` or ``0040A730.0040A160`` for a tag, keyword or dotted path of them."""
    tags = [resolve(part) for part in name.split(".")]
    return None if None in tags else ".".join(f"{tag:08X}" for tag in tags)


def _path(name: str) -> str | None:
    """Canonical keyword path (``Seq.Keyword``) of a parameter name, or None."""
    parts = []
    for part in name.split("."):
        tag = resolve(part)
        keyword = keyword_for_tag(tag) if tag is not None else ""
        if not keyword:
            return None
        parts.append(keyword)
    return ".".join(parts)


def _unsupported(query: Query, name: str, why: str, strict: bool) -> None:
    if strict:
        raise InvalidRequest(f"Unsupported query parameter {name}: {why}")
    query.ignored.append(name)


def _include(query: Query, value: str, strict: bool) -> None:
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() == ALL:
            query.includes = ALL
            continue
        tag = resolve(part)
        if tag is None:
            _unsupported(query, f"includefield={part}", "unknown attribute", strict)
        elif query.includes != ALL:
            query.includes.add(tag)


def _order_key(part: str, level: Level) -> tuple[Key, bool]:
    part = part.strip()
    descending = part.startswith("-")
    path = _path(part.lstrip("-+"))
    key = KEYS_BY_PATH.get(path.lower()) if path else None
    if key is None or not key.orderable or key.level > level:
        raise InvalidRequest(
            f"Invalid query parameter orderby: {part!r} is not a sortable attribute at this level"
        )
    return key, descending


def _condition(query: Query, name: str, value: str, strict: bool, extended: dict[str, Key]) -> None:
    key = extended.get(hex_path(name) or "")
    if key is None:
        path = _path(name)
        if path is None:
            _unsupported(query, name, "not a DICOM attribute", strict)
            return
        key = KEYS_BY_PATH.get(path.lower())
    if key is None or key.level > query.level:
        _unsupported(query, name, "not a matching key at this level", strict)
        return
    if any(c.key == key for c in query.conditions):
        raise InvalidRequest(f"Invalid query parameter {name}: the attribute is given twice")
    if query.includes != ALL:
        query.includes.add(tag_for_keyword(key.sequence) if key.sequence else key.tag)
    value = value.strip()
    if value in ("", "*"):
        return  # universal matching: returned, not filtered
    separators = r"[\\,]" if key.listed else r"\\"
    pieces = [piece for piece in re.split(separators, value) if piece]
    if len(pieces) > MAX_VALUES:
        raise InvalidRequest(f"Invalid query parameter {name}: more than {MAX_VALUES} values")
    alternatives = tuple(_match(key, name, piece, query.fuzzy) for piece in pieces)
    if alternatives:
        query.conditions.append(Condition(key, alternatives))


def _match(key: Key, name: str, value: str, fuzzy: bool) -> Match:
    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"Invalid query parameter {name}: {value!r} {why}")

    kind = key.kind
    wildcard = "*" in value or "?" in value
    if kind is Kind.UID:
        if not is_valid_uid(value):
            raise bad("is not a UID (UIDs match exactly or as a list)")
        return Match("eq", value)
    if kind is Kind.INT:
        number = sk.integer(value)
        if number is None:
            raise bad("is not an integer")
        return Match("eq", number)
    if kind is Kind.PN:
        if fuzzy and not wildcard:
            words = tuple(sorted(sk.name_words(value)))
            if len(words) > 16:
                raise bad("has more than 16 words")
            return Match("words", words) if words else Match("eq", sk.person_name(value))
        normalised = sk.person_name(value)
        return Match("wildcard", _glob(normalised)) if wildcard else Match("eq", normalised)
    if kind in (Kind.TEXT, Kind.MODALITIES, Kind.ITEM):
        return Match("wildcard", _glob(value)) if wildcard else Match("eq", value)
    if kind is Kind.DATE:
        return range_match(
            value, sk.date, lambda v: (v, v), bad, "is not a date (YYYYMMDD) or range"
        )
    if kind is Kind.TIME:
        return range_match(
            value, sk.time_bounds, None, bad, "is not a time (HHMMSS.FFFFFF) or range"
        )
    if kind is Kind.NUMBER:
        return range_match(value, sk.number, lambda v: (v, v), bad, "is not a number or range")
    # an unencoded '+' of a UTC offset arrives as a space; a date-time has no other spaces
    value = value.replace(" ", "+")
    return range_match(value, sk.datetime_bounds, None, bad, "is not a date-time or range")


def range_match(value: str, parse, bounds_of, bad, why: str) -> Match:
    """A single value covers its precision; ``a-b``, ``a-`` and ``-b`` are inclusive ranges."""

    def bounds(text: str):
        parsed = parse(text)
        if parsed is None:
            return None
        return bounds_of(parsed) if bounds_of else parsed

    single = bounds(value)
    if single is not None:
        return Match("range", single) if single[0] != single[1] else Match("eq", single[0])
    for i, char in enumerate(value):  # the first '-' that splits into two valid bounds
        if char != "-":
            continue
        low_text, high_text = value[:i], value[i + 1 :]
        if not low_text and not high_text:
            break
        low = bounds(low_text) if low_text else (None, None)
        high = bounds(high_text) if high_text else (None, None)
        if low is None or high is None:
            continue
        if low[0] is not None and high[1] is not None and low[0] > high[1]:
            raise bad("is a range whose start is after its end")
        return Match("range", (low[0], high[1]))
    raise bad(why)


def _glob(value: str) -> str:
    """A DICOM wildcard value as a GLOB pattern (``[`` is the only other GLOB metacharacter)."""
    return value.replace("[", "[[]")
