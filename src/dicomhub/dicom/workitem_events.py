"""UPS Watch and Event (PS3.18 11.10 to 11.14, PS3.4 CC.2.3 and CC.2.4) as pure functions:
subscriber AE titles, the filter of a Filtered Global Subscription, and the event reports a
workitem change gives, as DICOM JSON datasets.

An event report is the N-EVENT-REPORT of PS3.4 CC.2.4 in DICOM JSON: the Affected SOP Class
UID (0000,0002: UPS Push), the Affected SOP Instance UID (0000,1000: the workitem), the Event
Type ID (0000,1002) and the Event Information of Table CC.2.4-1. Each report queued for a
subscriber also carries its sequence number, in a private element (0009,1001 under creator
``DICOMHUB``): reports are delivered at least once, and a client drops the ones it saw.
"""

from __future__ import annotations

import re
from typing import Any

from dicomhub.dicom import workitems as ups
from dicomhub.dicom.workitem_query import WorkitemQuery, parse
from dicomhub.errors import WorkitemInvalid

GLOBAL = "1.2.840.10008.5.1.4.34.5"  # the Global Subscription's well-known UID
FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"  # the Filtered Global Subscription's
# Event Type IDs (PS3.4 CC.2.4)
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5
AFFECTED_CLASS, AFFECTED_INSTANCE, EVENT_TYPE = "00000002", "00001000", "00001002"
MESSAGE_ID = "00000110"  # Message ID (PS3.7 Table 10.3-1)
CREATOR, SEQUENCE = "00090010", "00091001"  # private block 0x10 of group 0009
CREATOR_NAME = "DICOMHUB"
INPUT_READINESS = ups.key("InputReadinessState")
REASON = ups.key("ReasonForCancellation")
DISCONTINUATION = ups.key("ProcedureStepDiscontinuationReasonCodeSequence")
# What an assignment changes (UPS Assigned, Table CC.2.4-1): the station and the performers
PERFORMERS = (
    ups.key("ScheduledStationNameCodeSequence"),
    ups.key("ScheduledHumanPerformersSequence"),
)
_FILTER_CONTROLS = {"limit", "offset", "includefield"}
_AE_BAD = re.compile(r"[\x00-\x1f\x7f\\]")


def subscriber(text: str) -> str:
    """The AE title of a subscription (VR AE: 1 to 16 characters, no backslash or control
    character; leading and trailing spaces are not significant). WorkitemInvalid (400)."""
    title = text.strip(" ")
    if not title or len(title) > 16 or _AE_BAD.search(title) or not title.isascii():
        raise WorkitemInvalid(
            ups.INVALID_VALUE, f"{text[:40]!r} is not an AE title (1-16 characters)"
        )
    return title


def split_filter(values: list[str]) -> list[tuple[str, str]]:
    """The query keys of ``filter`` parameters: each is ``key=value[,key=value]...`` (a comma
    starts a new key only when a ``key=`` follows it: UID lists keep theirs)."""
    out = []
    for value in values:
        for part in re.split(r",(?=[^,=]+=)", value):
            name, sep, wanted = part.partition("=")
            if not sep or not name.strip():
                raise WorkitemInvalid(ups.INVALID_VALUE, f"filter {part[:60]!r} is not key=value")
            out.append((name.strip(), wanted))
    return out


def filter_query(params: list[tuple[str, str]]) -> WorkitemQuery:
    """The query of a Filtered Global Subscription: the matching keys of a search (11.9);
    an unknown key, or a page or return control, is refused (WorkitemInvalid, 400): a
    subscription silently wider than asked would report workitems the client did not want."""
    if not params:
        raise WorkitemInvalid(
            ups.INVALID_VALUE, f"a subscription to {FILTERED_GLOBAL} needs a filter"
        )
    controls = [name for name, _ in params if name.lower() in _FILTER_CONTROLS]
    if controls:
        raise WorkitemInvalid(ups.INVALID_VALUE, f"a filter takes no {controls[0]}")
    query = parse(params)
    if query.ignored:
        raise WorkitemInvalid(
            ups.INVALID_VALUE, f"the filter names unknown matching keys: {', '.join(query.ignored)}"
        )
    return query


# -- event reports -----------------------------------------------------------------------------


def report(event_type: int, uid: str, information: dict[str, Any]) -> dict[str, Any]:
    """The event report of ``event_type`` for workitem ``uid``."""
    out = {
        AFFECTED_CLASS: {"vr": "UI", "Value": [ups.UPS_PUSH]},
        AFFECTED_INSTANCE: {"vr": "UI", "Value": [uid]},
        EVENT_TYPE: {"vr": "US", "Value": [event_type]},
        **information,
    }
    return dict(sorted(out.items()))


def state_report(ds: dict[str, Any]) -> dict[str, Any]:
    """UPS State Report: the workitem's state and input readiness; when CANCELED, the reason
    recorded in its progress information."""
    information = {k: ds[k] for k in (ups.STATE, INPUT_READINESS) if k in ds}
    if ups.text(ds, ups.STATE) == ups.CANCELED:
        progress = (ds.get(ups.PROGRESS) or {}).get("Value") or [{}]
        information.update(
            {k: progress[0][k] for k in (REASON, DISCONTINUATION) if k in progress[0]}
        )
    return report(STATE_REPORT, ups.text(ds, ups.SOP_INSTANCE) or "", information)


WARM_START = "WARM START"  # the lists were kept across the restart (PS3.4 CC.2.4.2)


def scp_status_change(status: str = "RESTARTED") -> dict[str, Any]:
    """SCP Status Change (Event Type ID 4, Table CC.2.4-1) about the well-known Global
    Subscription instance: the SCP's status, and that its subscription and UPS lists
    survived the restart (WARM START: they live in the index, which a node's restart does
    not touch)."""
    information = {
        ups.key("SCPStatus"): {"vr": "CS", "Value": [status]},
        ups.key("SubscriptionListStatus"): {"vr": "CS", "Value": [WARM_START]},
        ups.key("UnifiedProcedureStepListStatus"): {"vr": "CS", "Value": [WARM_START]},
    }
    return report(SCP_STATUS_CHANGE, GLOBAL, information)


def cancel_requested(uid: str, request: dict[str, Any]) -> dict[str, Any]:
    """UPS Cancel Requested: the request's reason and contact (Table CC.2.2-1)."""
    information = {
        ups.key(k): request[ups.key(k)] for k in ups.CANCEL_INFORMATION if ups.key(k) in request
    }
    return report(CANCEL_REQUESTED, uid, information)


def change_reports(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The reports of a change from ``before`` to ``after``, in order: a State Report when the
    state or the input readiness changed; UPS Assigned when the scheduled station or human
    performers changed; a Progress Report when the progress information changed (state
    unchanged: a cancellation's own date-time is part of its State Report)."""
    uid = ups.text(after, ups.SOP_INSTANCE) or ""
    out = []
    state_changed = before.get(ups.STATE) != after.get(ups.STATE)
    if state_changed or before.get(INPUT_READINESS) != after.get(INPUT_READINESS):
        out.append(state_report(after))
    if any(before.get(k) != after.get(k) for k in PERFORMERS):
        out.append(report(ASSIGNED, uid, {k: after[k] for k in PERFORMERS if k in after}))
    if not state_changed and before.get(ups.PROGRESS) != after.get(ups.PROGRESS):
        if ups.PROGRESS in after:
            out.append(report(PROGRESS_REPORT, uid, {ups.PROGRESS: after[ups.PROGRESS]}))
    return out


def numbered(report_: dict[str, Any], sequence: int) -> dict[str, Any]:
    """A queued report as sent: with its sequence number (the subscriber's, from 1) in the
    private element (0009,1001), and the Message ID (0000,0110) that PS3.18 11.13's example
    and PS3.7 Table 10.3-1 (N-EVENT-REPORT-RQ, mandatory) give it: the sequence number
    folded into the 1-65535 of its VR US."""
    out = {
        **report_,
        MESSAGE_ID: {"vr": "US", "Value": [(sequence - 1) % 65535 + 1]},
        CREATOR: {"vr": "LO", "Value": [CREATOR_NAME]},
        SEQUENCE: {"vr": "UL", "Value": [sequence]},
    }
    return dict(sorted(out.items()))
