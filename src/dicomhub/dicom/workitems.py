"""UPS workitems (PS3.4 Annex CC, PS3.18 chapter 11) as pure functions over DICOM JSON
datasets: what a new workitem must hold (Table CC.2.5-3, N-CREATE), what an update may change
(N-SET), and the state machine (Table CC.1.1-2) as Microsoft's server applies it, with the
status codes of Annex CC. Every refusal is a ``WorkitemError`` naming its status code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomhub.dicom.uids import is_valid_uid
from dicomhub.dicom.validate import validate_string
from dicomhub.errors import WorkitemConflict, WorkitemInvalid

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"  # UPS Push SOP Class: the class of every workitem

# Annex CC status codes (warnings B3xx succeed; the others fail)
ALREADY_CANCELED = ("B304", "The UPS is already in the requested state of CANCELED")
ALREADY_COMPLETED = ("B306", "The UPS is already in the requested state of COMPLETED")
NO_LONGER_UPDATABLE = ("C300", "The UPS may no longer be updated")
WRONG_TRANSACTION = ("C301", "The correct Transaction UID was not provided")
ALREADY_IN_PROGRESS = ("C302", "The UPS is already IN PROGRESS")
FINAL_STATE_UNMET = (
    "C304",
    "The UPS has not met final state requirements for the requested state change",
)
ONLY_CREATE_SCHEDULES = (
    "C303",
    "The UPS may only become SCHEDULED via create, not via update or state change",
)
NOT_IN_PROGRESS = ("C310", "The UPS is not yet IN PROGRESS")
IS_COMPLETED = ("C311", "The UPS is already COMPLETED")
PERFORMER_UNREACHABLE = ("C312", "The performer cannot be contacted")
DUPLICATE = "0111"  # Duplicate SOP Instance
INVALID_VALUE = "0106"  # Invalid attribute value
MISSING = "0120"  # Missing attribute
MISSING_VALUE = "0121"  # Missing attribute value
_VR = re.compile(r"^[A-Z]{2}$")
_HEX = re.compile(r"^[0-9A-Fa-f]{8}$")


def key(keyword: str) -> str:
    """The DICOM JSON key (8 uppercase hex digits) of ``keyword``."""
    return f"{tag_for_keyword(keyword):08X}"


SOP_CLASS, SOP_INSTANCE = key("SOPClassUID"), key("SOPInstanceUID")
STATE, TRANSACTION = key("ProcedureStepState"), key("TransactionUID")
MODIFIED = key("ScheduledProcedureStepModificationDateTime")
PROGRESS = key("ProcedureStepProgressInformationSequence")

# Table CC.2.5-3, the N-CREATE requirements: Type 1 (present with a value; the enumerated ones
# with one of their values) and Type 2 (present, possibly empty). The conditional ones that the
# dataset alone decides are checked by _check_conditions (below); conformance section 11 lists
# them, and those only the SCU can decide.
REQUIRED = (
    "ScheduledProcedureStepPriority",
    "ProcedureStepLabel",
    "ScheduledProcedureStepStartDateTime",
    "InputReadinessState",
)
ENUMERATED = {
    "ScheduledProcedureStepPriority": ("HIGH", "MEDIUM", "LOW"),
    "InputReadinessState": ("READY", "UNAVAILABLE", "INCOMPLETE"),
}
PRESENT = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "ReferencedRequestSequence",
    "ScheduledWorkitemCodeSequence",
    "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence",
)
# What an update (N-SET) may not carry: identity, and the state (changed by change-state only).
NOT_UPDATABLE = ("SOPClassUID", "SOPInstanceUID", "TransactionUID")
# What a cancellation request (Table CC.2.2-1) may carry, kept in the progress information.
CANCEL_INFORMATION = (
    "ReasonForCancellation",
    "ProcedureStepDiscontinuationReasonCodeSequence",
    "ContactURI",
    "ContactDisplayName",
)


def invalid(code: str, message: str) -> WorkitemInvalid:
    return WorkitemInvalid(code, message)


def conflict(status: tuple[str, str], detail: str = "") -> WorkitemConflict:
    return WorkitemConflict(status[0], status[1] + (f": {detail}" if detail else ""))


# -- the request body ----------------------------------------------------------------------------


def dataset(body: Any, required: bool = True) -> dict[str, Any]:
    """The one dataset of a request body: a DICOM JSON object, or an array holding one (as
    Microsoft's clients send). Checks its structure and each value against its VR."""
    if not required and body in (None, [], {}):
        return {}  # a cancellation request may come without information (or as [])
    if isinstance(body, list):
        if len(body) != 1:
            raise invalid(INVALID_VALUE, f"the body must hold one dataset, not {len(body)}")
        body = body[0]
    if not isinstance(body, dict):
        raise invalid(INVALID_VALUE, "the body must be a DICOM JSON dataset (PS3.18 F.2)")
    _check(body, "")
    return _upper(body)


def _upper(ds: dict[str, Any]) -> dict[str, Any]:
    """Keys in uppercase hex, in every item (lookups use that form)."""
    out = {}
    for tag, element in ds.items():
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [_upper(item) for item in element["Value"]]}
        out[tag.upper()] = element
    return out


def _check(ds: dict[str, Any], where: str, depth: int = 0) -> None:
    if depth > 8:
        raise invalid(INVALID_VALUE, "the dataset nests sequences more than 8 deep")
    for tag, element in ds.items():
        path = where + tag
        if not isinstance(tag, str) or not _HEX.match(tag):
            raise invalid(INVALID_VALUE, f"{path[:40]!r} is not a tag (8 hex digits)")
        if not isinstance(element, dict) or not _VR.match(str(element.get("vr", ""))):
            raise invalid(INVALID_VALUE, f"{path}: an element needs a 'vr'")
        vr = element["vr"]
        known = _dictionary_vr(int(tag, 16))
        if known and vr not in known:
            raise invalid(INVALID_VALUE, f"{path}: VR {vr}, the dictionary says {known}")
        if "BulkDataURI" in element:
            raise invalid(INVALID_VALUE, f"{path}: a workitem takes no BulkDataURI")
        values = element.get("Value", [])
        if not isinstance(values, list):
            raise invalid(INVALID_VALUE, f"{path}: Value must be an array")
        for value in values:
            if vr == "SQ":
                if not isinstance(value, dict):
                    raise invalid(INVALID_VALUE, f"{path}: a sequence item must be an object")
                _check(value, path + ".", depth + 1)
            elif vr == "PN":
                if not isinstance(value, dict) or not all(
                    isinstance(v, str) for v in value.values()
                ):
                    raise invalid(INVALID_VALUE, f"{path}: a person name is an object of strings")
            elif isinstance(value, str):
                why = validate_string(vr, value)
                if why:
                    raise invalid(INVALID_VALUE, f"{path}: {value[:64]!r} {why}")
            elif value is not None and not isinstance(value, int | float):
                raise invalid(INVALID_VALUE, f"{path}: {value!r} is not a {vr} value")


def _dictionary_vr(tag: int) -> tuple[str, ...]:
    try:
        return tuple(dictionary_VR(tag).split(" or "))
    except KeyError:
        return ()


def text(ds: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` as stripped text; None when absent or empty."""
    values = (ds.get(tag) or {}).get("Value") or []
    if not values or values[0] is None:
        return None
    return str(values[0]).strip() or None


def _set(ds: dict[str, Any], keyword: str, vr: str, value: Any) -> None:
    ds[key(keyword)] = {"vr": vr, "Value": [value]}


def timestamp(now: datetime) -> str:
    """``now`` (UTC) as a DT value."""
    return now.strftime("%Y%m%d%H%M%S.%f") + "+0000"


# Table CC.2.5-3's Final State requirements (the codes Microsoft's server checks): R, present
# with a value in COMPLETED and CANCELED; P, in COMPLETED; X, in CANCELED; for a sequence, in
# each of its items too. (The server sets the R ones of the SOP Common and Progress modules.)
FINAL_STATE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "R": (
        ("SOPClassUID", ()),
        ("SOPInstanceUID", ()),
        ("ScheduledProcedureStepPriority", ()),
        ("ScheduledProcedureStepModificationDateTime", ()),
        ("ScheduledProcedureStepStartDateTime", ()),
        ("InputReadinessState", ()),
        ("ProcedureStepState", ()),
    ),
    "P": (
        (
            "UnifiedProcedureStepPerformedProcedureSequence",
            (
                "PerformedStationNameCodeSequence",
                "PerformedProcedureStepStartDateTime",
                "PerformedWorkitemCodeSequence",
                "PerformedProcedureStepEndDateTime",
                "OutputInformationSequence",
            ),
        ),
    ),
    "X": (
        (
            "ProcedureStepProgressInformationSequence",
            ("ProcedureStepCancellationDateTime", "ProcedureStepDiscontinuationReasonCodeSequence"),
        ),
    ),
}


def check_final_state(ds: dict[str, Any], state: str) -> None:
    """Raise C304 (409) when ``ds`` lacks what Table CC.2.5-3 requires of a workitem in
    ``state`` (COMPLETED or CANCELED): the performer sets it by an update first."""
    codes = ("R", "P") if state == COMPLETED else ("R", "X") if state == CANCELED else ()
    for code in codes:
        for keyword, inner in FINAL_STATE[code]:
            if not _has_value(ds, key(keyword)):
                raise conflict(FINAL_STATE_UNMET, f"{state} needs {keyword} ({key(keyword)})")
            for item in ds[key(keyword)]["Value"]:
                for needed in inner:
                    if not isinstance(item, dict) or not _has_value(item, key(needed)):
                        where = f"{keyword}.{needed}"
                        raise conflict(FINAL_STATE_UNMET, f"{state} needs {where} in each item")


def _has_value(ds: dict[str, Any], tag: str) -> bool:
    values = (ds.get(tag) or {}).get("Value") or []
    return any(v not in (None, "", {}) for v in values)


# -- create, retrieve, update --------------------------------------------------------------------


def new_workitem(body: Any, uid: str | None, generated: str, now: datetime) -> tuple[str, dict]:
    """The UID and dataset of a new workitem (SCHEDULED) from a create request: the UID of the
    query, else the dataset's SOPInstanceUID, else ``generated``."""
    ds = dataset(body)
    given = text(ds, SOP_INSTANCE)
    if uid is not None and given is not None and uid != given:
        raise invalid(INVALID_VALUE, f"the query names workitem {uid}, the dataset {given}")
    uid = uid or given or generated
    if not is_valid_uid(uid):
        raise invalid(INVALID_VALUE, f"{uid[:80]!r} is not a valid UID")
    if TRANSACTION in ds:
        raise invalid(INVALID_VALUE, "a new workitem has no Transaction UID (0008,1195)")
    state = text(ds, STATE)
    if state not in (None, SCHEDULED):
        raise invalid(ONLY_CREATE_SCHEDULES[0], f"a new workitem is SCHEDULED, not {state}")
    _check_requirements(ds)
    _set(ds, "SOPClassUID", "UI", UPS_PUSH)
    _set(ds, "SOPInstanceUID", "UI", uid)
    _set(ds, "ProcedureStepState", "CS", SCHEDULED)
    _set(ds, "ScheduledProcedureStepModificationDateTime", "DT", timestamp(now))
    return uid, dict(sorted(ds.items()))


def _check_requirements(ds: dict[str, Any]) -> None:
    """The Type 1 and Type 2 requirements a workitem meets from its creation on."""
    for keyword in REQUIRED:
        tag = key(keyword)
        if tag not in ds:
            raise invalid(MISSING, f"{keyword} ({tag}) is required (Type 1)")
        value = text(ds, tag)
        if value is None:
            raise invalid(MISSING_VALUE, f"{keyword} ({tag}) needs a value (Type 1)")
        if keyword in ENUMERATED and value not in ENUMERATED[keyword]:
            allowed = ", ".join(ENUMERATED[keyword])
            raise invalid(INVALID_VALUE, f"{keyword} is {value!r}, not one of {allowed}")
    for keyword in PRESENT:
        if key(keyword) not in ds:
            raise invalid(MISSING, f"{keyword} ({key(keyword)}) is required (Type 2)")
    _check_conditions(ds)


# -- Table CC.2.5-3's conditional requirements (N-CREATE) that the dataset decides -------------

# the code sequences of the Scheduled Procedure Information module, whose items are codes
SCHEDULED_CODES = (
    "ScheduledWorkitemCodeSequence",
    "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence",
)
# Referenced Request Sequence: what each of its items holds (Type 1; Type 2)
REQUEST_TYPE1 = ("StudyInstanceUID",)
REQUEST_TYPE2 = (
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
)
# Content Item Macro (PS3.3 Table 10-2), of Scheduled Processing Parameters Sequence items:
# the attribute(s) each Value Type requires (1C)
CONTENT_VALUES = {
    "DATETIME": ("DateTime",),
    "DATE": ("Date",),
    "TIME": ("Time",),
    "PNAME": ("PersonName",),
    "UIDREF": ("UID",),
    "TEXT": ("TextValue",),
    "CODE": ("ConceptCodeSequence",),
    "NUMERIC": ("NumericValue", "MeasurementUnitsCodeSequence"),
    "COMPOSITE": ("ReferencedSOPSequence",),
    "IMAGE": ("ReferencedSOPSequence",),
}
CODE_VALUES = ("CodeValue", "LongCodeValue", "URNCodeValue")


def _items(ds: dict[str, Any], keyword: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, item) of each item of ``keyword`` in ``ds`` (none when absent or empty)."""
    values = (ds.get(key(keyword)) or {}).get("Value") or []
    return [(f"{where}{keyword}[{n}]", item) for n, item in enumerate(values, 1)]


def _type1(ds: dict[str, Any], keyword: str, where: str, why: str = "Type 1") -> None:
    tag = key(keyword)
    if tag not in ds:
        raise invalid(MISSING, f"{where}.{keyword} ({tag}) is required ({why})")
    if not _has_value(ds, tag):
        raise invalid(MISSING_VALUE, f"{where}.{keyword} ({tag}) needs a value ({why})")


def _type2(ds: dict[str, Any], keyword: str, where: str) -> None:
    if key(keyword) not in ds:
        raise invalid(MISSING, f"{where}.{keyword} ({key(keyword)}) is required (Type 2)")


def check_code(item: dict[str, Any], where: str) -> None:
    """A code item (the Code Sequence Macro, PS3.3 Table 8.8-1): exactly one of CodeValue,
    LongCodeValue, URNCodeValue (1C, which one depends on the code's form); the Coding Scheme
    Designator with a CodeValue or LongCodeValue (1C); the Code Meaning (1)."""
    given = [k for k in CODE_VALUES if _has_value(item, key(k))]
    if not given:
        if any(key(k) in item for k in CODE_VALUES):
            raise invalid(MISSING_VALUE, f"{where}: the code value is empty (1C)")
        raise invalid(MISSING, f"{where} needs CodeValue, LongCodeValue or URNCodeValue (1C)")
    if len(given) > 1:
        raise invalid(INVALID_VALUE, f"{where} holds {' and '.join(given)}: one code value only")
    if given[0] != "URNCodeValue":
        _type1(item, "CodingSchemeDesignator", where, f"1C, with {given[0]}")
    _type1(item, "CodeMeaning", where)


def _codes(ds: dict[str, Any], keyword: str, where: str) -> None:
    for path, item in _items(ds, keyword, where):
        check_code(item, path)


def _check_conditions(ds: dict[str, Any]) -> None:
    """Table CC.2.5-3's conditional requirements that the dataset decides: what the items of
    its sequences hold once they are there. 400 with 0120 (missing), 0121 (empty) or 0106."""
    for keyword in SCHEDULED_CODES:
        _codes(ds, keyword, "")
    for path, item in _items(ds, "ScheduledHumanPerformersSequence", ""):
        _type1(item, "HumanPerformerCodeSequence", path)
        _codes(item, "HumanPerformerCodeSequence", path + ".")
    for path, item in _items(ds, "ReferencedRequestSequence", ""):
        for keyword in REQUEST_TYPE1:
            _type1(item, keyword, path)
        for keyword in REQUEST_TYPE2:
            _type2(item, keyword, path)
        _codes(item, "RequestedProcedureCodeSequence", path + ".")
    for path, item in _items(ds, "ScheduledProcessingParametersSequence", ""):
        _content_item(item, path)


def _content_item(item: dict[str, Any], where: str) -> None:
    """A Content Item Macro item (PS3.3 Table 10-2): Value Type and Concept Name (1), and the
    value its Value Type requires (1C)."""
    _type1(item, "ValueType", where)
    value_type = text(item, key("ValueType"))
    if value_type not in CONTENT_VALUES:
        allowed = ", ".join(CONTENT_VALUES)
        raise invalid(INVALID_VALUE, f"{where}.ValueType is {value_type!r}, not one of {allowed}")
    _type1(item, "ConceptNameCodeSequence", where)
    _codes(item, "ConceptNameCodeSequence", where + ".")
    for keyword in CONTENT_VALUES[value_type]:
        _type1(item, keyword, where, f"1C, for ValueType {value_type}")
    for keyword in ("ConceptCodeSequence", "MeasurementUnitsCodeSequence"):
        _codes(item, keyword, where + ".")


def public(ds: dict[str, Any]) -> dict[str, Any]:
    """A workitem as clients see it: never its Transaction UID (PS3.4 CC.2.7: the lock is
    known only to the performer)."""
    return {k: v for k, v in ds.items() if k != TRANSACTION}


def check_update(state: str, lock: str | None, transaction: str | None) -> None:
    """May a workitem in ``state``, locked by ``lock``, be updated with ``transaction``?
    (PS3.18 11.6: every refusal is a 400.)"""
    if state in (COMPLETED, CANCELED):
        raise invalid(NO_LONGER_UPDATABLE[0], f"{NO_LONGER_UPDATABLE[1]}: it is {state}")
    if state == SCHEDULED and transaction is not None:
        raise invalid(
            WRONG_TRANSACTION[0], "a SCHEDULED workitem is updated without a Transaction UID"
        )
    if state == IN_PROGRESS and transaction is None:
        raise invalid(
            WRONG_TRANSACTION[0], "the workitem is IN PROGRESS: the Transaction UID is missing"
        )
    if state == IN_PROGRESS and transaction != lock:
        raise invalid(WRONG_TRANSACTION[0], "the Transaction UID is incorrect")


def updated(stored: dict[str, Any], body: Any, now: datetime) -> dict[str, Any]:
    """``stored`` with the attributes of an update request: each replaces the stored one whole
    (a sequence with all its items)."""
    changes = dataset(body)
    if STATE in changes:
        raise invalid(
            ONLY_CREATE_SCHEDULES[0], "an update may not change ProcedureStepState: use /state"
        )
    for keyword in NOT_UPDATABLE:
        if key(keyword) in changes:
            raise invalid(INVALID_VALUE, f"an update may not change {keyword}")
    out = {**stored, **changes}
    _check_requirements(out)  # an update may not empty a Type 1 value, nor leave its values
    _set(out, "ScheduledProcedureStepModificationDateTime", "DT", timestamp(now))
    return dict(sorted(out.items()))


# -- state changes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """What a state change does: the new state and lock (None: nothing changes), the warning
    of a success that changed nothing (B304, B306), and whether the subscribers are to be told
    that a cancellation was requested (the workitem itself unchanged)."""

    state: str | None
    lock: str | None = None
    warning: tuple[str, str] | None = None
    cancel_requested: bool = False


def state_request(body: Any) -> tuple[str, str]:
    """The requested state and Transaction UID of a change-state request (Table CC.2.1-1)."""
    ds = dataset(body)
    transaction = text(ds, TRANSACTION)
    target = text(ds, STATE)
    if transaction is None:
        raise invalid(MISSING, "the Transaction UID (00081195) is missing")
    if not is_valid_uid(transaction):
        raise invalid(INVALID_VALUE, f"the Transaction UID {transaction[:80]!r} is not a UID")
    if target is None:
        raise invalid(MISSING, "the ProcedureStepState (00741000) is missing")
    if target == SCHEDULED:
        raise invalid(ONLY_CREATE_SCHEDULES[0], ONLY_CREATE_SCHEDULES[1])
    if target not in STATES:
        allowed = ", ".join((IN_PROGRESS, COMPLETED, CANCELED))
        raise invalid(INVALID_VALUE, f"ProcedureStepState {target[:40]!r} is not one of {allowed}")
    return target, transaction


def change_state(state: str, lock: str | None, target: str, transaction: str) -> Transition:
    """Table CC.1.1-2 for N-ACTION Change UPS State, as Microsoft applies it; every refusal is
    a conflict with the current state (409)."""
    if state == SCHEDULED:
        if target == IN_PROGRESS:
            return Transition(IN_PROGRESS, transaction)  # the Transaction UID becomes the lock
        raise conflict(NOT_IN_PROGRESS, f"it is SCHEDULED; claim it (IN PROGRESS) before {target}")
    if state == IN_PROGRESS and target == IN_PROGRESS:
        raise conflict(ALREADY_IN_PROGRESS)
    if transaction != lock:
        raise conflict(WRONG_TRANSACTION)
    if state == IN_PROGRESS:
        return Transition(target, lock)
    if state == target:
        return Transition(
            None, warning=ALREADY_COMPLETED if state == COMPLETED else ALREADY_CANCELED
        )
    raise conflict(NO_LONGER_UPDATABLE, f"it is {state}")


def request_cancel(state: str, subscribers: int) -> Transition:
    """Request Cancel (PS3.18 11.8, PS3.4 CC.2.4.3): a SCHEDULED workitem is canceled at once;
    for one IN PROGRESS, its subscribers (the performer among them) are sent UPS Cancel
    Requested, the workitem unchanged; with no subscriber, nobody could tell the performer:
    refused, C312, as by Microsoft's server."""
    if state == SCHEDULED:
        return Transition(CANCELED)
    if state == CANCELED:
        return Transition(None, warning=ALREADY_CANCELED)
    if state == COMPLETED:
        raise conflict(IS_COMPLETED)
    if subscribers:
        return Transition(None, cancel_requested=True)
    raise conflict(
        PERFORMER_UNREACHABLE, "the workitem is IN PROGRESS and has no subscriber to tell"
    )


def with_state(stored: dict[str, Any], transition: Transition, now: datetime) -> dict[str, Any]:
    """``stored`` in the transition's state, locked by its Transaction UID."""
    out = dict(stored)
    _set(out, "ProcedureStepState", "CS", transition.state)
    if transition.lock is not None:
        _set(out, "TransactionUID", "UI", transition.lock)
    if transition.state == CANCELED:
        _progress(out)[key("ProcedureStepCancellationDateTime")] = {
            "vr": "DT",
            "Value": [timestamp(now)],
        }
    return dict(sorted(out.items()))


def cancelled(stored: dict[str, Any], body: Any, now: datetime) -> dict[str, Any]:
    """A SCHEDULED workitem canceled on request: the request's reason and contact (Table
    CC.2.2-1) go into its progress information."""
    request = dataset(body, required=False)
    out = with_state(stored, Transition(CANCELED), now)
    progress = _progress(out)
    for keyword in CANCEL_INFORMATION:
        if key(keyword) in request:
            progress[key(keyword)] = request[key(keyword)]
    out[PROGRESS]["Value"][0] = dict(sorted(progress.items()))
    return out


def _progress(ds: dict[str, Any]) -> dict[str, Any]:
    """The item of ProcedureStepProgressInformationSequence (made when absent), a copy that
    ``ds`` holds."""
    items = (ds.get(PROGRESS) or {}).get("Value") or [{}]
    item = json.loads(json.dumps(items[0]))
    ds[PROGRESS] = {"vr": "SQ", "Value": [item]}
    return item
