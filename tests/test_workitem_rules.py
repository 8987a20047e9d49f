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


# -- Table CC.2.5-3's conditional requirements (N-CREATE), decided from the dataset ------------


def _raw(keyword: str, *items: dict) -> dict:
    """``keyword`` as a sequence of ``items`` as given (no completion of what they lack)."""
    return dataset(**{keyword: list(items)})


def _refused(ds: dict, status: str, *named: str) -> None:
    with pytest.raises(WorkitemInvalid) as refused:
        ups.new_workitem(ds, None, "2.25.1", NOW)
    assert refused.value.code == status
    for name in named:
        assert name in str(refused.value), (name, str(refused.value))


CODE = {"CodeValue": "CT1", "CodingSchemeDesignator": "99DH", "CodeMeaning": "CT one"}
NO_VALUE = {"CodingSchemeDesignator": "99DH", "CodeMeaning": "CT one"}
CONDITIONS = {  # case: (the attribute as sent, status, what the message names)
    "a code item without a code value": (
        _raw("ScheduledStationNameCodeSequence", NO_VALUE),
        "0120",
        ("ScheduledStationNameCodeSequence[1]", "CodeValue"),
    ),
    "a code item with an empty code value": (
        _raw("ScheduledStationNameCodeSequence", {**NO_VALUE, "CodeValue": []}),
        "0121",
        ("ScheduledStationNameCodeSequence[1]",),
    ),
    "a code item with two code values": (
        _raw("ScheduledWorkitemCodeSequence", {**CODE, "URNCodeValue": "urn:x"}),
        "0106",
        ("ScheduledWorkitemCodeSequence[1]", "CodeValue and URNCodeValue"),
    ),
    "a code value without its coding scheme": (
        _raw("ScheduledStationClassCodeSequence", {"CodeValue": "CT", "CodeMeaning": "CT"}),
        "0120",
        ("ScheduledStationClassCodeSequence[1].CodingSchemeDesignator", "00080102", "1C"),
    ),
    "a long code value without its coding scheme": (
        _raw(
            "ScheduledStationGeographicLocationCodeSequence",
            {"LongCodeValue": "A" * 20, "CodeMeaning": "West wing"},
        ),
        "0120",
        ("CodingSchemeDesignator", "with LongCodeValue"),
    ),
    "a code item without its meaning (the second item)": (
        _raw("ScheduledStationNameCodeSequence", CODE, {**CODE, "CodeMeaning": None}),
        "0120",
        ("ScheduledStationNameCodeSequence[2].CodeMeaning", "00080104"),
    ),
    "a code item with an empty meaning": (
        _raw("ScheduledStationNameCodeSequence", {**CODE, "CodeMeaning": []}),
        "0121",
        ("CodeMeaning",),
    ),
    "a human performer without a code": (
        _raw("ScheduledHumanPerformersSequence", {"HumanPerformerName": "Smith^Jo"}),
        "0120",
        ("ScheduledHumanPerformersSequence[1].HumanPerformerCodeSequence", "00404009"),
    ),
    "a human performer code without a meaning": (
        _raw(
            "ScheduledHumanPerformersSequence",
            {"HumanPerformerCodeSequence": [{"CodeValue": "X", "CodingSchemeDesignator": "L"}]},
        ),
        "0120",
        ("HumanPerformerCodeSequence[1].CodeMeaning",),
    ),
    "a request without its study": (
        _raw(
            "ReferencedRequestSequence",
            {
                "AccessionNumber": "A1",
                "IssuerOfAccessionNumberSequence": [],
                "RequestedProcedureID": "R1",
                "RequestedProcedureDescription": [],
                "RequestedProcedureCodeSequence": [],
            },
        ),
        "0120",
        ("ReferencedRequestSequence[1].StudyInstanceUID", "Type 1"),
    ),
    "a request without a Type 2 attribute": (
        _raw(
            "ReferencedRequestSequence",
            {"StudyInstanceUID": "1.2.3", "AccessionNumber": "A1", "RequestedProcedureID": "R1"},
        ),
        "0120",
        ("ReferencedRequestSequence[1].IssuerOfAccessionNumberSequence", "Type 2"),
    ),
    "a processing parameter without a value type": (
        _raw("ScheduledProcessingParametersSequence", {"ConceptNameCodeSequence": [CODE]}),
        "0120",
        ("ScheduledProcessingParametersSequence[1].ValueType",),
    ),
    "a processing parameter of an unknown value type": (
        _raw(
            "ScheduledProcessingParametersSequence",
            {"ValueType": "CONTAINER", "ConceptNameCodeSequence": [CODE]},
        ),
        "0106",
        ("ValueType", "CONTAINER"),
    ),
    "a processing parameter without its concept name": (
        _raw("ScheduledProcessingParametersSequence", {"ValueType": "TEXT", "TextValue": "x"}),
        "0120",
        ("ConceptNameCodeSequence",),
    ),
    "a TEXT parameter without its text": (
        _raw(
            "ScheduledProcessingParametersSequence",
            {"ValueType": "TEXT", "ConceptNameCodeSequence": [CODE]},
        ),
        "0120",
        ("ScheduledProcessingParametersSequence[1].TextValue", "for ValueType TEXT"),
    ),
    "a NUMERIC parameter without its units": (
        _raw(
            "ScheduledProcessingParametersSequence",
            {"ValueType": "NUMERIC", "ConceptNameCodeSequence": [CODE], "NumericValue": "3"},
        ),
        "0120",
        ("MeasurementUnitsCodeSequence", "for ValueType NUMERIC"),
    ),
    "a CODE parameter whose concept lacks its meaning": (
        _raw(
            "ScheduledProcessingParametersSequence",
            {
                "ValueType": "CODE",
                "ConceptNameCodeSequence": [CODE],
                "ConceptCodeSequence": [{"CodeValue": "X", "CodingSchemeDesignator": "L"}],
            },
        ),
        "0120",
        ("ConceptCodeSequence[1].CodeMeaning",),
    ),
}


@pytest.mark.parametrize("case", CONDITIONS)
def test_conditional_requirements_are_checked(case):
    attribute, status, named = CONDITIONS[case]
    _refused({**workitem(), **attribute}, status, *named)


def test_datasets_meeting_the_conditions_are_taken():
    urn = {"URNCodeValue": "urn:oid:1.2.3", "CodeMeaning": "by URN"}  # no designator needed
    long_code = {"LongCodeValue": "A" * 20, "CodingSchemeDesignator": "L", "CodeMeaning": "long"}
    ds = {
        **workitem(),
        **_raw("ScheduledWorkitemCodeSequence", CODE, urn, long_code),
        **_raw("ScheduledHumanPerformersSequence", {"HumanPerformerCodeSequence": [CODE]}),
        **_raw(
            "ScheduledProcessingParametersSequence",
            {"ValueType": "TEXT", "ConceptNameCodeSequence": [CODE], "TextValue": "fast"},
            {
                "ValueType": "NUMERIC",
                "ConceptNameCodeSequence": [CODE],
                "NumericValue": "2.5",
                "MeasurementUnitsCodeSequence": [CODE],
            },
            {"ValueType": "CODE", "ConceptNameCodeSequence": [CODE], "ConceptCodeSequence": [urn]},
        ),
        **_raw("ScheduledStationNameCodeSequence"),  # Type 2, empty: no item to check
    }
    uid, created = ups.new_workitem(ds, None, "2.25.1", NOW)
    assert uid == "2.25.1" and created[ups.STATE]["Value"] == ["SCHEDULED"]


def test_an_update_may_not_break_the_conditions():
    _, stored = ups.new_workitem(workitem(), None, "2.25.1", NOW)
    change = _raw("ScheduledStationNameCodeSequence", {"CodeValue": "CT2"})
    with pytest.raises(WorkitemInvalid) as refused:
        ups.updated(stored, change, NOW)
    assert refused.value.code == "0120" and "CodingSchemeDesignator" in str(refused.value)
