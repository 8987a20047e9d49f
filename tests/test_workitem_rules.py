"""The pure UPS rules (dicom/workitems, dicom/workitem_query), without a server: the state
machine of every (state, requested state, Transaction UID) against conformance section 11, what
the index records of a dataset, and how a search query is read."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from dicomhub.dicom import workitem_query as wq
from dicomhub.dicom import workitems as ups
from dicomhub.errors import WorkitemConflict, WorkitemInvalid
from tests.test_workitems import DISCONTINUED, PERFORMED, dataset, workitem

LOCK, OTHER = "1.2.3", "1.2.4"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def expected(state: str, target: str, transaction: str):
    """Conformance section 11's table: (new state or None, status code or None)."""
    if state == "SCHEDULED":
        return ("IN PROGRESS", None) if target == "IN PROGRESS" else (None, "C310")
    if state == "IN PROGRESS" and target == "IN PROGRESS":
        return None, "C302"
    if transaction != LOCK:
        return None, "C301"
    if state == "IN PROGRESS":
        return target, None
    if state == target:
        return None, "B306" if state == "COMPLETED" else "B304"
    return None, "C300"


@pytest.mark.parametrize(
    ("state", "target", "transaction"),
    list(itertools.product(ups.STATES, ("IN PROGRESS", "COMPLETED", "CANCELED"), (LOCK, OTHER))),
)
def test_change_state_table(state, target, transaction):
    lock = None if state == "SCHEDULED" else LOCK
    new_state, code = expected(state, target, transaction)
    try:
        found = ups.change_state(state, lock, target, transaction)
    except WorkitemConflict as refusal:
        assert (None, refusal.code) == (new_state, code)
        return
    assert found.state == new_state
    assert (found.warning[0] if found.warning else None) == code
    if new_state == "IN PROGRESS":
        assert found.lock == transaction  # the claim's Transaction UID becomes the lock


def test_a_new_workitem_is_scheduled_and_identified():
    uid, ds = ups.new_workitem([workitem()], None, "2.25.7", NOW)
    assert uid == "2.25.7"
    assert ds["00741000"]["Value"] == ["SCHEDULED"] and ds["00080018"]["Value"] == ["2.25.7"]
    assert ds["00404010"]["Value"] == ["20260301090000.000000+0000"]
    with pytest.raises(WorkitemInvalid):
        ups.new_workitem(workitem(), "1.2.x", "2.25.7", NOW)


def test_cancellation_information_goes_into_the_progress_item():
    _, ds = ups.new_workitem(workitem(), "1.2.9", "", NOW)
    request = dataset(ReasonForCancellation="duplicate order")
    canceled = ups.cancelled(ds, [request], NOW)
    (progress,) = canceled["00741002"]["Value"]
    assert progress["00741238"]["Value"] == ["duplicate order"]
    assert progress["00404052"]["Value"] == ["20260301090000.000000+0000"]
    assert canceled["00741000"]["Value"] == ["CANCELED"]
    assert "00741002" not in ds  # the stored dataset is not changed in place


def test_index_values():
    ds = {
        **workitem(
            PatientName="Müller^Anna Lena",
            ScheduledProcedureStepStartDateTime="20250111120000",
            ReferencedRequestSequence=[
                {"AccessionNumber": "A1", "RequestedProcedureID": "R1"},
                {"AccessionNumber": "A2"},
            ],
        ),
        "00080201": {"vr": "SH", "Value": ["+0100"]},  # TimezoneOffsetFromUTC
    }
    values = set(wq.index_values(ds))
    assert ("00100010", 0, "muller^anna lena") in values
    assert {v for p, _, v in values if p == "00100010" + wq.WORDS} == {"muller", "anna", "lena"}
    assert ("00404005", 0, "20250111110000.000000") in values  # in UTC
    assert ("0040A370.00080050", 1, "A2") in values
    assert ("0040A370.00401001", 0, "R1") in values
    assert ("00100020", 0, "P0") in values


def test_parse():
    query = wq.parse(
        [
            ("patientname", "doe*"),
            ("00404005", "20250101-"),
            ("ReferencedRequestSequence.AccessionNumber", "A1\\A2"),
            ("includefield", "AdmissionID,IssuerOfAdmissionIDSequence.LocalNamespaceEntityID"),
            ("Modality", "CT"),
            ("limit", "5"),
        ]
    )
    kinds = {c.key.hex_path: [m.op for m in c.alternatives] for c in query.conditions}
    assert kinds == {
        "00100010": ["wildcard"],
        "00404005": ["range"],
        "0040A370.00080050": ["eq", "eq"],
    }
    assert query.limit == 5 and query.ignored == ["Modality"]
    assert {0x00380010, 0x00380014, 0x0040A370} <= query.includes
    assert wq.parse([("includefield", "all")]).includes is None
    with pytest.raises(WorkitemInvalid):
        wq.parse([("PatientID", "1"), ("patientid", "2")])


def test_final_state_requirements():
    _, ds = ups.new_workitem(workitem(), "1.2.9", "", NOW)
    claimed = ups.with_state(ds, ups.Transition("IN PROGRESS", LOCK), NOW)
    for state, needed in (("COMPLETED", PERFORMED), ("CANCELED", DISCONTINUED)):
        final = ups.with_state(claimed, ups.Transition(state), NOW)
        with pytest.raises(WorkitemConflict) as refused:
            ups.check_final_state(final, state)
        assert refused.value.code == "C304"
        ready = {**claimed, **needed}
        ups.check_final_state(ups.with_state(ready, ups.Transition(state), NOW), state)
    with pytest.raises(WorkitemConflict):  # each item of the sequence
        empty_item = {"00741216": {"vr": "SQ", "Value": [{}]}}
        ups.check_final_state({**claimed, **PERFORMED, **empty_item}, "COMPLETED")
