"""A subscription's QIDO-style study filter (``filter.study``): study-level matching keys
(keywords or tags) and values, matched as QIDO-RS matches them (PS3.18 10.6, PS3.4 C.2.2.2:
wildcards, lists, date and time ranges, UID lists), by the index's own QIDO search: the
event's study must be one a ``GET /studies`` with these parameters finds. Pure: it checks the
filter and builds the query; the delivery runs it."""

from __future__ import annotations

from typing import Any

from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import Query, parse_query
from dicomhub.errors import InvalidRequest

FIELD = "study"
CONTROLS = {"includefield", "limit", "offset", "fuzzymatching", "orderby"}
MAX_KEYS = 32


def check(value: Any) -> dict[str, str]:
    """The filter as stored (its keys as given); InvalidRequest naming what is wrong."""
    if not isinstance(value, dict) or not value:
        raise InvalidRequest(
            "filter study is an object of study-level attributes and QIDO values, e.g. "
            '{"StudyDescription": "*CHEST*", "ModalitiesInStudy": "CT"}'
        )
    if len(value) > MAX_KEYS:
        raise InvalidRequest(f"filter study: at most {MAX_KEYS} attributes")
    out = {}
    for name, wanted in value.items():
        if name.lower() in CONTROLS:
            raise InvalidRequest(f"filter study: {name} is no matching attribute")
        if not isinstance(wanted, str) or not wanted.strip():
            raise InvalidRequest(f"filter study {name}: a non-empty QIDO value (a string)")
        out[name] = wanted.strip()
    try:
        query(out, "Microsoft.Default", None)
    except InvalidRequest as exc:
        raise InvalidRequest(f"filter study: {exc}") from None
    return out


def query(filter: dict[str, str], partition: str, study: str | None) -> Query:
    """The study-level QIDO query of the filter, within ``study`` of ``partition``
    (strict: an attribute that is no study-level matching key is refused, not ignored)."""
    found = parse_query(list(filter.items()), Level.STUDY, study=study, strict=True)
    found.partition = partition
    found.limit = 1
    return found
