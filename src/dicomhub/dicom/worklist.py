"""Modality Worklist (PS3.4 Annex K, Basic Worklist Management) answered from UPS workitems
(PS3.4 Annex CC), and the UPS C-FIND identifier (UPS Pull, CC.2.8), as pure functions.

A worklist query becomes a workitem search (``workitem_query``): its matching keys are mapped to
the workitem's matching keys (``MATCHED``), always with ProcedureStepState SCHEDULED, so the
index does the matching. Each SCHEDULED workitem found is one worklist item: one Scheduled
Procedure Step of one Requested Procedure, its attributes mapped back from the workitem
(``response``). The mapping is the table of docs/conformance.md (section 7.5).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomhub.dicom.cfind import SKIPPED
from dicomhub.dicom.workitem_query import KEYS_BY_PATH
from dicomhub.dicom.workitems import SCHEDULED, TRANSACTION, key
from dicomhub.errors import InvalidRequest

MWL_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
SPS = "ScheduledProcedureStepSequence"
REQUEST = "ReferencedRequestSequence"

# worklist matching key -> workitem matching key (workitem_query.KEYS); SPS keys are in the
# Scheduled Procedure Step Sequence item
MATCHED = {
    "PatientName": "PatientName",
    "PatientID": "PatientID",
    "AccessionNumber": f"{REQUEST}.AccessionNumber",
    "RequestedProcedureID": f"{REQUEST}.RequestedProcedureID",
    "StudyInstanceUID": "StudyInstanceUID",
}
SPS_MATCHED = {
    "ScheduledStationAETitle": "ScheduledStationNameCodeSequence.CodeValue",
    "Modality": "ScheduledStationClassCodeSequence.CodeValue",
}
START_DATE, START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"
START = "ScheduledProcedureStepStartDateTime"
# Scheduled Procedure Step attributes, as the worklist item holds them: (workitem sequence, the
# attribute of its first item) or a function of the workitem
SPS_FROM_CODES = {
    "ScheduledStationAETitle": ("ScheduledStationNameCodeSequence", "CodeValue"),
    "ScheduledStationName": ("ScheduledStationNameCodeSequence", "CodeMeaning"),
    "Modality": ("ScheduledStationClassCodeSequence", "CodeValue"),
    "ScheduledProcedureStepLocation": (
        "ScheduledStationGeographicLocationCodeSequence",
        "CodeValue",
    ),
    "ScheduledPerformingPhysicianName": ("ScheduledHumanPerformersSequence", "HumanPerformerName"),
}
SPS_RENAMED = {  # worklist attribute -> the workitem attribute that holds its value
    "ScheduledProcedureStepDescription": "ProcedureStepLabel",
    "ScheduledProtocolCodeSequence": "ScheduledWorkitemCodeSequence",
}
SPS_RETURNED = (  # what an empty (universal) Scheduled Procedure Step Sequence returns
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    START_DATE,
    START_TIME,
    "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep",
)
NOT_KEYS = {*SKIPPED, 0x00080201}  # charset, level, RetrieveAETitle, TimezoneOffsetFromUTC
_DT = re.compile(r"^(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$")


@dataclass(frozen=True)
class WorklistQuery:
    params: list[tuple[str, str]]  # the workitem search (workitem_query.parse)
    times: tuple[str, str] | None  # a time-of-day range each match's start must be in
    unsupported: tuple[str, ...]  # keys with a value that do not filter (pending 0xFF01)


def _text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value).strip()


def query(identifier: Dataset) -> WorklistQuery:
    """The workitem search of a worklist C-FIND identifier (InvalidRequest: a malformed one)."""
    params = [("ProcedureStepState", SCHEDULED), ("includefield", "all")]
    unsupported: list[str] = []
    for elem in identifier:
        if elem.tag in NOT_KEYS or elem.tag.group == 0x0002 or elem.keyword == SPS:
            continue
        if elem.keyword in MATCHED:
            if not elem.is_empty:
                params.append((MATCHED[elem.keyword], _text(elem.value)))
        elif not elem.is_empty and elem.VR != "SQ":
            unsupported.append(elem.keyword or f"{elem.tag:08X}")
    times = None
    steps = identifier[SPS] if SPS in identifier else None
    items = list(steps.value or []) if steps is not None and steps.VR == "SQ" else []
    if len(items) > 1:
        raise InvalidRequest("the Scheduled Procedure Step Sequence holds more than one item")
    item = items[0] if items else None
    if item is not None:
        zone = "TimezoneOffsetFromUTC"
        offset = _text(identifier[zone].value) if zone in identifier else ""
        date = _text(item[START_DATE].value) if START_DATE in item else ""
        time = _text(item[START_TIME].value) if START_TIME in item else ""
        start, times = _start(date, time, offset)
        if start:
            params.append((START, start))
        for elem in item:
            name = elem.keyword
            if name in SPS_MATCHED:
                if not elem.is_empty:
                    params.append((SPS_MATCHED[name], _text(elem.value)))
            elif name == "ScheduledProcedureStepStatus":
                status = _text(elem.value)
                if status not in ("", "*") and not fnmatchcase(SCHEDULED, status):
                    params[0] = ("ProcedureStepState", "NONE")  # only SCHEDULED ones are
            elif name not in (START_DATE, START_TIME) and not elem.is_empty and elem.VR != "SQ":
                unsupported.append(f"{SPS}.{name or f'{elem.tag:08X}'}")
    return WorklistQuery(params, times, tuple(unsupported))


def _start(date: str, time: str, offset: str) -> tuple[str, tuple[str, str] | None]:
    """The ScheduledProcedureStepStartDateTime range of a date and a time key (DA and TM
    values or ranges), and the time-of-day range left to check on each match: dates and times
    match independently (PS3.4 C.2.2.2.5), so a time is pushed into the date-time range only
    with a single date."""
    for value, what in ((date, "date"), (time, "time")):
        if value.count("-") > 1 or "*" in value or "?" in value or "\\" in value:
            raise InvalidRequest(f"{value[:40]!r} is not a {what} or a range of them")
    if time in ("", "-"):
        time = ""
    if date in ("", "-"):
        date = ""
    zone = offset if re.fullmatch(r"[+-]\d{4}", offset) else ""
    if time and date and "-" not in date:
        low, _, high = time.partition("-") if "-" in time else (time, "", time)
        low_dt = f"{date}{low.replace(':', '')}{zone}" if low else f"{date}{zone}"
        high_dt = f"{date}{high.replace(':', '')}{zone}" if high else f"{date}{zone}"
        return f"{low_dt}-{high_dt}", None
    start = ""
    if date:
        low, dash, high = date.partition("-")
        start = (f"{low}{zone}" if low else "") + (
            f"-{high}{zone}" if high else ("-" if dash else "")
        )
    times = None
    if time:
        low, dash, high = time.partition("-") if "-" in time else (time, "", time)
        times = (_clock(low, "0"), _clock(high, "9") if high else "999999.999999")
    return start, times


def _clock(value: str, fill: str) -> str:
    """A TM value as HHMMSS.ffffff: its first (``fill`` 0) or last (9) instant."""
    value = value.replace(":", "")
    head, _, frac = value.partition(".")
    if not re.fullmatch(r"\d{2}(\d{2}){0,2}", head) or not re.fullmatch(r"\d{0,6}", frac):
        raise InvalidRequest(f"{value[:40]!r} is not a time (HHMMSS)")
    if fill == "0":
        return head.ljust(6, "0") + "." + frac.ljust(6, "0")
    if not frac:
        head = head + "5959"[: 6 - len(head)] if len(head) < 6 else head
        return head + ".999999"
    return head + "." + frac.ljust(6, "9")


def _split(value: str | None) -> tuple[str, str] | None:
    """(DA, TM) of a DT value, as its wall clock (the offset dropped)."""
    m = _DT.match(value or "")
    return (m.group(1), m.group(2) or "") if m else None


def in_times(workitem: dict[str, Any], times: tuple[str, str] | None) -> bool:
    """Is the workitem's start time of day within ``times`` (HHMMSS.ffffff bounds)?"""
    if times is None:
        return True
    split = _split(_first(workitem, key(START)))
    if split is None or not split[1]:
        return False
    return times[0] <= _clock(split[1], "0") <= times[1]


def _first(ds: dict[str, Any], tag: str) -> Any:
    values = (ds.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def step_id(uid: str) -> str:
    """A Scheduled Procedure Step ID (SH, 16 characters) for a workitem without one: the first
    16 hex digits of the SHA-256 of its UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16].upper()


def _request_item(workitem: dict[str, Any], identifier: Dataset) -> dict[str, Any]:
    """The Referenced Request Sequence item the worklist item reports: the first whose
    AccessionNumber and RequestedProcedureID the identifier's keys match, else the first."""
    items = (workitem.get(key(REQUEST)) or {}).get("Value") or []
    items = [i for i in items if isinstance(i, dict)]
    wanted = [
        (key(k), _text(identifier[k].value))
        for k in ("AccessionNumber", "RequestedProcedureID")
        if k in identifier and not identifier[k].is_empty
    ]
    for item in items:
        if all(
            any(fnmatchcase(str(_first(item, tag) or ""), p) for p in pattern.split("\\"))
            for tag, pattern in wanted
        ):
            return item
    return items[0] if items else {}


def response(identifier: Dataset, workitem: dict[str, Any]) -> Dataset:
    """The worklist item of a SCHEDULED workitem (DICOM JSON), with exactly the keys of
    ``identifier`` (empty where the workitem has no value)."""
    found = Dataset.from_json({k: v for k, v in workitem.items() if k != TRANSACTION})
    request = Dataset.from_json(_request_item(workitem, identifier))
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    for elem in identifier:
        if elem.tag in NOT_KEYS or elem.tag.group == 0x0002:
            continue
        if elem.keyword == SPS:
            item = elem.value[0] if elem.VR == "SQ" and elem.value else None
            wanted = [e.keyword for e in item] if item is not None else list(SPS_RETURNED)
            out.add_new(elem.tag, "SQ", [_step(found, wanted)])
        elif elem.tag in found:
            out.add(found[elem.tag])
        elif elem.tag in request:
            out.add(request[elem.tag])
        else:
            out.add_new(elem.tag, elem.VR, None)
    return out


def _step(found: Dataset, wanted: list[str]) -> Dataset:
    item = Dataset()
    split = _split(_text(found[START].value) if START in found else "")
    expected = "ExpectedCompletionDateTime"
    end = _split(_text(found[expected].value)) if expected in found else None
    for name in wanted:
        if not name:
            continue
        value: Any = None
        if name in SPS_FROM_CODES:
            sequence, inner = SPS_FROM_CODES[name]
            items = (found[sequence].value or []) if sequence in found else []
            value = items[0][inner].value if items and inner in items[0] else None
        elif name in SPS_RENAMED:
            source = SPS_RENAMED[name]
            if source in found:
                element = found[source]
                item.add_new(tag_for_keyword(name), element.VR, element.value)
                continue
        elif name in (START_DATE, START_TIME):
            value = split[0 if name == START_DATE else 1] if split else None
        elif name in ("ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime"):
            value = end[0 if name.endswith("Date") else 1] if end else None
        elif name == "ScheduledProcedureStepStatus":
            value = SCHEDULED
        elif name == "ScheduledProcedureStepID":
            own = name in found and found[name].value
            value = own or step_id(str(found.SOPInstanceUID))
        elif name in found:
            item.add(found[name])
            continue
        item.add_new(tag_for_keyword(name), dictionary_VR(name), value or None)
    return item


# -- UPS C-FIND (UPS Pull) -----------------------------------------------------------------------


def ups_query(identifier: Dataset) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """The workitem search of a UPS C-FIND identifier (the same keys as UPS-RS search: a key
    with a value matches, an empty one is returned), and the keys with a value that do not
    filter (pending 0xFF01)."""
    params, unsupported = [("includefield", "all")], []
    for elem in identifier:
        if elem.tag in NOT_KEYS or elem.tag.group == 0x0002:
            continue
        tag = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            item = elem.value[0] if elem.value else None
            for inner in item or []:
                if inner.is_empty or inner.VR == "SQ":
                    continue
                path = f"{tag}.{inner.tag:08X}"
                if path in KEYS_BY_PATH:
                    params.append((path, _text(inner.value)))
                else:
                    unsupported.append(f"{elem.keyword}.{inner.keyword or path}")
        elif not elem.is_empty:
            if tag in KEYS_BY_PATH:
                params.append((tag, _text(elem.value)))
            else:
                unsupported.append(elem.keyword or tag)
    return params, tuple(unsupported)


def ups_response(identifier: Dataset, workitem: dict[str, Any]) -> Dataset:
    """A UPS C-FIND response: the keys of ``identifier`` with the workitem's values (a sequence
    whole), never the Transaction UID."""
    found = Dataset.from_json({k: v for k, v in workitem.items() if k != TRANSACTION})
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    for elem in identifier:
        if elem.tag in NOT_KEYS or elem.tag.group == 0x0002 or elem.tag == int(TRANSACTION, 16):
            continue
        if elem.tag in found:
            out.add(found[elem.tag])
        else:
            out.add_new(elem.tag, elem.VR, None)
    if "SOPInstanceUID" not in out and "SOPInstanceUID" in found:
        out.SOPInstanceUID = found.SOPInstanceUID  # which workitem it is, always
    return out
