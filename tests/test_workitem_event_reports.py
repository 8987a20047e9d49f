"""The pure side of UPS Watch and Event (dicom/workitem_events.py): AE titles, the filter of a
Filtered Global Subscription, and which event reports a change gives (PS3.4 CC.2.4)."""

from __future__ import annotations

import pytest

from dicomhub.dicom import workitem_events as wev
from dicomhub.errors import WorkitemInvalid

UID = "1.2.3.4"


def ds(**values) -> dict:
    tags = {
        "state": ("00741000", "CS"),
        "readiness": ("00404041", "CS"),
        "station": ("00404025", "SQ"),
        "progress": ("00741002", "SQ"),
    }
    out = {"00080018": {"vr": "UI", "Value": [UID]}}
    for name, value in values.items():
        tag, vr = tags[name]
        out[tag] = {"vr": vr, "Value": [value]}
    return out


@pytest.mark.parametrize("text", ["READER1", " padded ", "A" * 16, "with space"])
def test_ae_titles(text):
    assert wev.subscriber(text) == text.strip()


@pytest.mark.parametrize("text", ["", "   ", "A" * 17, "back\\slash", "tab\there", "é"])
def test_bad_ae_titles(text):
    with pytest.raises(WorkitemInvalid):
        wev.subscriber(text)


def test_filters_split_on_commas_that_start_a_key():
    assert wev.split_filter(["PatientID=P1,StudyInstanceUID=1.2,1.3", "ProcedureStepState=X"]) == [
        ("PatientID", "P1"),
        ("StudyInstanceUID", "1.2,1.3"),
        ("ProcedureStepState", "X"),
    ]
    query = wev.filter_query(wev.split_filter(["StudyInstanceUID=1.2,1.3"]))
    assert len(query.conditions[0].alternatives) == 2


@pytest.mark.parametrize(
    "filters", [[], ["PatientID"], ["Colour=red"], ["limit=5"], ["includefield=all"], ["=x"]]
)
def test_bad_filters(filters):
    with pytest.raises(WorkitemInvalid):
        wev.filter_query(wev.split_filter(filters))


def test_reports_of_changes():
    before = ds(state="SCHEDULED", readiness="READY")
    claimed = ds(state="IN PROGRESS", readiness="READY")
    (report,) = wev.change_reports(before, claimed)
    assert report["00001002"]["Value"] == [wev.STATE_REPORT]
    assert report["00001000"]["Value"] == [UID]
    assert report["00741000"]["Value"] == ["IN PROGRESS"]
    moved = ds(state="IN PROGRESS", readiness="READY", station={"00080100": {"vr": "SH"}})
    progressed = {**moved, **ds(progress={"00741004": {"vr": "DS", "Value": [5]}})}
    types = [r["00001002"]["Value"][0] for r in wev.change_reports(claimed, progressed)]
    assert types == [wev.ASSIGNED, wev.PROGRESS_REPORT]
    assert wev.change_reports(progressed, progressed) == []
    # a cancellation's own progress change is part of its State Report
    canceled = {**ds(state="CANCELED", readiness="READY"), **ds(progress={})}
    assert [r["00001002"]["Value"][0] for r in wev.change_reports(claimed, canceled)] == [1]


def test_a_numbered_report_carries_its_sequence():
    report = wev.numbered(wev.state_report(ds(state="SCHEDULED")), 7)
    assert report["00091001"] == {"vr": "UL", "Value": [7]}
    assert report["00090010"]["Value"] == ["DICOMHUB"]
    assert report["00000110"] == {"vr": "US", "Value": [7]}  # Message ID
    assert list(report) == sorted(report)


def test_the_message_id_stays_within_its_vr():
    report = wev.numbered(wev.state_report(ds(state="SCHEDULED")), 65536)
    assert report["00000110"]["Value"] == [1] and report["00091001"]["Value"] == [65536]


def test_the_scp_status_change_report():
    """Event Type ID 4 (Table CC.2.4-1) about the Global Subscription instance: RESTARTED,
    and both lists kept (WARM START)."""
    report = wev.scp_status_change()
    assert report["00001002"]["Value"] == [4]
    assert report["00001000"]["Value"] == ["1.2.840.10008.5.1.4.34.5"]
    assert report["00000002"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
    assert report["00741242"] == {"vr": "CS", "Value": ["RESTARTED"]}  # SCPStatus
    assert report["00741244"]["Value"] == ["WARM START"]  # SubscriptionListStatus
    assert report["00741246"]["Value"] == ["WARM START"]  # UnifiedProcedureStepListStatus
    assert list(report) == sorted(report)
