"""The attributes QIDO-RS matches on, how their values are normalised, and what the index records
for each stored instance (``describe``). Stored values and query values go through the same
normalisation, so matching in SQL is plain comparison.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from functools import cache, cached_property
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomhub.dicom.json_model import compact
from dicomhub.dicom.levels import INSTANCE_SUMMARY, SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, Level
from dicomhub.dicom.validate import valid_date
from dicomhub.model import SearchRecord


class Kind(Enum):
    TEXT = "text"  # exact and wildcard, case-sensitive
    PN = "pn"  # exact and wildcard, case- and accent-insensitive; fuzzy word-prefix
    UID = "uid"  # exact and UID list
    DATE = "date"  # exact and range
    TIME = "time"  # range (a single value covers its precision)
    DATETIME = "datetime"  # range, compared in UTC
    INT = "int"  # exact
    NUMBER = "number"  # exact and range, compared as numbers (extended query tags)
    MODALITIES = "modalities"  # any series of the study
    ITEM = "item"  # an attribute inside an item of RequestAttributesSequence


@dataclass(frozen=True)
class Key:
    keyword: str
    level: Level
    kind: Kind
    column: str | None = None
    sequence: str | None = None  # keyword of the enclosing sequence for ITEM keys
    extended: int | None = None  # an extended query tag's key in the index
    extended_tag: int | None = None  # its tag (a private tag has no keyword)

    @cached_property
    def tag(self) -> int:
        return self.extended_tag if self.extended_tag is not None else tag_for_keyword(self.keyword)

    @property
    def path(self) -> str:
        return f"{self.sequence}.{self.keyword}" if self.sequence else self.keyword

    @property
    def orderable(self) -> bool:
        return self.column is not None and self.kind is not Kind.ITEM

    @property
    def listed(self) -> bool:
        """Does a ``,`` separate values too (UIDs and code strings), not only ``\\``?"""
        return self.kind in (Kind.UID, Kind.MODALITIES) or self.keyword == "Modality"


REQUEST_SEQUENCE = "RequestAttributesSequence"
KEYS = [
    Key("StudyInstanceUID", Level.STUDY, Kind.UID, "study_uid"),
    Key("PatientName", Level.STUDY, Kind.PN, "patient_name"),
    Key("PatientID", Level.STUDY, Kind.TEXT, "patient_id"),
    Key("PatientBirthDate", Level.STUDY, Kind.DATE, "patient_birth_date"),
    Key("StudyDate", Level.STUDY, Kind.DATE, "study_date"),
    Key("StudyTime", Level.STUDY, Kind.TIME, "study_time"),
    Key("AccessionNumber", Level.STUDY, Kind.TEXT, "accession_number"),
    Key("ReferringPhysicianName", Level.STUDY, Kind.PN, "referring_physician"),
    Key("StudyDescription", Level.STUDY, Kind.TEXT, "study_description"),
    Key("StudyID", Level.STUDY, Kind.TEXT, "study_id"),
    Key("ModalitiesInStudy", Level.STUDY, Kind.MODALITIES),
    Key("SeriesInstanceUID", Level.SERIES, Kind.UID, "series_uid"),
    Key("Modality", Level.SERIES, Kind.TEXT, "modality"),
    Key("SeriesNumber", Level.SERIES, Kind.INT, "series_number"),
    Key("PerformedProcedureStepStartDate", Level.SERIES, Kind.DATE, "pps_start_date"),
    Key("PerformedProcedureStepStartTime", Level.SERIES, Kind.TIME, "pps_start_time"),
    Key("ManufacturerModelName", Level.SERIES, Kind.TEXT, "manufacturer_model_name"),
    Key("ScheduledProcedureStepID", Level.SERIES, Kind.ITEM, "scheduled_step_id", REQUEST_SEQUENCE),
    Key(
        "RequestedProcedureID", Level.SERIES, Kind.ITEM, "requested_procedure_id", REQUEST_SEQUENCE
    ),
    Key("SOPInstanceUID", Level.INSTANCE, Kind.UID, "sop_uid"),
    Key("SOPClassUID", Level.INSTANCE, Kind.UID, "sop_class_uid"),
    Key("InstanceNumber", Level.INSTANCE, Kind.INT, "instance_number"),
    Key("AcquisitionDateTime", Level.INSTANCE, Kind.DATETIME, "acquisition_datetime"),
]
KEYS_BY_PATH = {k.path.lower(): k for k in KEYS}
PN_KEYS = [k for k in KEYS if k.kind is Kind.PN]

# -- normalisation -------------------------------------------------------------------------------

_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DATETIME = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:([+-])(\d{2})(\d{2}))?$"
)
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
_WORD_SPLIT = re.compile(r"[\s^=,]+")


def person_name(value: str) -> str:
    """Case- and accent-folded form of a name's first non-empty component group."""
    group = next((g for g in value.split("=") if g.strip("^ ")), "")
    folded = unicodedata.normalize("NFKD", group)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    parts = [" ".join(p.split()) for p in folded.split("^")]
    return "^".join(parts).rstrip("^")


def name_words(value: str) -> set[str]:
    return {w for w in _WORD_SPLIT.split(person_name(value)) if w}


def date(value: str) -> str | None:
    value = value.strip().replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    return value if valid_date(value) else None


def time_bounds(value: str) -> tuple[str, str] | None:
    """The first and last canonical times (HHMMSS.ffffff) a possibly partial TM value covers."""
    m = _TIME.match(value.strip().replace(":", ""))
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        return None
    low = f"{hh}{mm or '00'}{ss or '00'}.{(frac or '').ljust(6, '0')}"
    high = f"{hh}{mm or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
    return low, high


def time(value: str) -> str | None:
    bounds = time_bounds(value)
    return bounds[0] if bounds else None


def datetime_bounds(value: str, default_offset: str | None = None) -> tuple[str, str] | None:
    """The first and last instants (UTC, YYYYMMDDHHMMSS.ffffff) a possibly partial DT value covers.

    A value without a UTC offset takes ``default_offset`` (e.g. TimezoneOffsetFromUTC), else UTC.
    """
    m = _DATETIME.match(value.strip())
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, sign, oh, om = m.groups()
    if sign is None and default_offset:
        offset = _OFFSET.match(default_offset.strip())
        if offset:
            sign, oh, om = offset.groups()
    try:
        low = dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hh or 0),
            int(mm or 0),
            min(int(ss or 0), 59),
            int((frac or "").ljust(6, "0")),
        )
        end_month = int(month or 12)
        last_day = _last_day(int(year), end_month) if day is None else int(day)
        high = dt.datetime(
            int(year),
            end_month,
            last_day,
            int(hh or 23),
            int(mm or 59),
            min(int(ss or 59), 59),
            int((frac or "").ljust(6, "9")),
        )
    except ValueError:
        return None
    if sign:
        shift = dt.timedelta(hours=int(oh), minutes=int(om))
        if sign == "+":
            shift = -shift
        try:
            low, high = low + shift, high + shift
        except OverflowError:
            return None
    return _canonical(low), _canonical(high)


def _last_day(year: int, month: int) -> int:
    if month == 12:
        return 31
    return (dt.date(year, month + 1, 1) - dt.timedelta(days=1)).day


def _canonical(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S.") + f"{moment.microsecond:06d}"


def number(value: str) -> float | None:
    try:
        parsed = float(value.strip())
    except ValueError:
        return None
    return parsed if parsed == parsed and abs(parsed) != float("inf") else None


def integer(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


# -- what the index records for an instance --------------------------------------------------


def describe(js: dict[str, Any]) -> SearchRecord:
    """What the index records for one instance, from its DICOM JSON."""
    return SearchRecord(
        instance=columns(Level.INSTANCE, js),
        study_doc=_doc(js, STUDY_ATTRIBUTES),
        series_doc=_doc(js, SERIES_ATTRIBUTES),
        instance_doc=_doc(js, INSTANCE_SUMMARY),
    )


def multi_valued(js: dict[str, Any]) -> bool:
    """Does a searchable attribute have several values? Only the first is indexed."""
    return any(len((js.get(hex_key) or {}).get("Value") or ()) > 1 for hex_key in _COLUMN_HEX)


_COLUMN_HEX = [f"{k.tag:08X}" for k in KEYS if k.column is not None and k.kind is not Kind.ITEM]
# (key, its DICOM JSON key) of each level's columns, in KEYS order
_LEVEL_COLUMNS = {
    level: [
        (k, f"{k.tag:08X}")
        for k in KEYS
        if k.level is level and k.column is not None and k.kind is not Kind.ITEM
    ]
    for level in Level
}


def merge_docs(old: str | None, new: str) -> str:
    """A study's or series' document after storing an instance: the new instance's values win,
    attributes it lacks keep the value an earlier instance gave."""
    if not old or old == new:  # the usual case: every instance repeats the same attributes
        return new
    merged = json.loads(old)
    merged.update(json.loads(new))
    return compact(dict(sorted(merged.items())))


def columns(level: Level, js: dict[str, Any]) -> dict[str, Any]:
    """Normalised matching values of a level's keys (column -> value) from DICOM JSON."""
    offset = timezone_offset(js)
    out: dict[str, Any] = {}
    for key, hex_key in _LEVEL_COLUMNS[level]:
        values = (js.get(hex_key) or {}).get("Value")
        raw = values[0] if values else None
        if key.kind is Kind.PN:
            raw = pn_text(raw)
        out[key.column] = None if raw is None else normalise(key.kind, str(raw), offset)
    return out


def timezone_offset(js: dict[str, Any]) -> str | None:
    """TimezoneOffsetFromUTC of an instance: the offset of its DT values that carry none."""
    return _text(js, "TimezoneOffsetFromUTC")


def words(js: dict[str, Any]) -> list[tuple[int, str]]:
    """(tag, word) of every word of the study's person names, for fuzzy matching."""
    out = []
    for key in PN_KEYS:
        name = pn_text(_first(js, key.keyword))
        if name:
            out += [(key.tag, word) for word in sorted(name_words(name))]
    return out


def request_items(js: dict[str, Any]) -> list[tuple[str | None, ...]]:
    """The matching keys of each item of RequestAttributesSequence."""
    item_keys = [k.keyword for k in KEYS if k.sequence == REQUEST_SEQUENCE]
    items = (js.get(_hex_key(REQUEST_SEQUENCE)) or {}).get("Value") or []
    return [tuple(_text(item, keyword) for keyword in item_keys) for item in items]


def _first(js: dict[str, Any], keyword: str) -> Any:
    values = (js.get(_hex_key(keyword)) or {}).get("Value") or []
    return values[0] if values else None


@cache
def _hex_key(keyword: str) -> str:
    """A keyword's key in DICOM JSON ("00100010")."""
    return f"{tag_for_keyword(keyword):08X}"


def _text(js: dict[str, Any], keyword: str) -> str | None:
    value = _first(js, keyword)
    return None if value is None else str(value).strip() or None


def normalise(kind: Kind, value: str, offset: str | None) -> Any:
    if kind is Kind.PN:
        return person_name(value) or None
    if kind is Kind.DATE:
        return date(value)
    if kind is Kind.TIME:
        return time(value)
    if kind is Kind.DATETIME:
        bounds = datetime_bounds(value, offset)
        return bounds[0] if bounds else None
    if kind is Kind.INT:
        return integer(value)
    if kind is Kind.NUMBER:
        return number(value)
    return value.strip() or None


def pn_text(value: Any) -> str | None:
    if isinstance(value, dict):
        groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=") or None
    return value


def _doc(js: dict[str, Any], tags: frozenset[int]) -> str:
    picked = {}
    for key in sorted(_hex_keys(tags).intersection(js)):
        element = js[key]
        if "BulkDataURI" not in element:
            picked[key] = element
    return compact(picked)


@cache
def _hex_keys(tags: frozenset[int]) -> frozenset[str]:
    """The DICOM JSON keys of ``tags`` (upper-case hexadecimal, as DICOM JSON writes them)."""
    return frozenset(f"{tag:08X}" for tag in tags)
