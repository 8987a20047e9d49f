"""UPS-RS Push and Pull over real sockets, on `dicomhub serve` with SQLite (two server processes
sharing one writer) and with PostgreSQL: create (PS3.4 Table CC.2.5-3), retrieve without the
Transaction UID, update, every transition of the state machine with its status and warning,
cancellation requests, concurrent claims of one workitem (exactly one wins), search by every
kind of key, bad input refused with nothing changed, the audit of each operation; and the
index's conditional write itself, on both engines."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from dicomhub.clock import utcnow
from dicomhub.web.app import routes
from tests.conftest import index_database, running_server
from tests.synthetic import uid

JSON = {"Content-Type": "application/dicom+json"}
KEYWORDS = {  # keyword: (tag, VR)
    "SOPInstanceUID": ("00080018", "UI"),
    "AccessionNumber": ("00080050", "SH"),
    "CodeValue": ("00080100", "SH"),
    "CodingSchemeDesignator": ("00080102", "SH"),
    "TransactionUID": ("00081195", "UI"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "AdmissionID": ("00380010", "LO"),
    "IssuerOfAdmissionIDSequence": ("00380014", "SQ"),
    "ScheduledProcedureStepStartDateTime": ("00404005", "DT"),
    "ScheduledWorkitemCodeSequence": ("00404018", "SQ"),
    "ScheduledStationNameCodeSequence": ("00404025", "SQ"),
    "ScheduledStationClassCodeSequence": ("00404026", "SQ"),
    "ScheduledStationGeographicLocationCodeSequence": ("00404027", "SQ"),
    "ScheduledHumanPerformersSequence": ("00404034", "SQ"),
    "HumanPerformerName": ("00404037", "PN"),
    "ExpectedCompletionDateTime": ("00404011", "DT"),
    "InputReadinessState": ("00404041", "CS"),
    "RequestedProcedureID": ("00401001", "SH"),
    "ReferencedRequestSequence": ("0040A370", "SQ"),
    "ProcedureStepState": ("00741000", "CS"),
    "ProcedureStepProgressInformationSequence": ("00741002", "SQ"),
    "ReasonForCancellation": ("00741238", "LT"),
    "ScheduledProcedureStepPriority": ("00741200", "CS"),
    "CodeMeaning": ("00080104", "LO"),
    "PerformedWorkitemCodeSequence": ("00404019", "SQ"),
    "PerformedStationNameCodeSequence": ("00404028", "SQ"),
    "OutputInformationSequence": ("00404033", "SQ"),
    "PerformedProcedureStepStartDateTime": ("00404050", "DT"),
    "PerformedProcedureStepEndDateTime": ("00404051", "DT"),
    "ProcedureStepDiscontinuationReasonCodeSequence": ("0074100E", "SQ"),
    "UnifiedProcedureStepPerformedProcedureSequence": ("00741216", "SQ"),
    "WorklistLabel": ("00741202", "LO"),
    "ProcedureStepLabel": ("00741204", "LO"),
    "HumanPerformerCodeSequence": ("00404009", "SQ"),
    "IssuerOfAccessionNumberSequence": ("00080051", "SQ"),
    "RequestedProcedureDescription": ("00321060", "LO"),
    "RequestedProcedureCodeSequence": ("00321064", "SQ"),
    "ScheduledProcessingParametersSequence": ("00741210", "SQ"),
    "ValueType": ("0040A040", "CS"),
    "ConceptNameCodeSequence": ("0040A043", "SQ"),
    "NumericValue": ("0040A30A", "DS"),
    "MeasurementUnitsCodeSequence": ("004008EA", "SQ"),
    "TextValue": ("0040A160", "UT"),
    "LongCodeValue": ("00080119", "UC"),
    "URNCodeValue": ("00080120", "UR"),
    "ConceptCodeSequence": ("0040A168", "SQ"),
}


def element(keyword: str, *values) -> tuple[str, dict]:
    tag, vr = KEYWORDS[keyword]
    if vr == "PN":
        values = tuple({"Alphabetic": v} for v in values)
    elif vr == "SQ":
        values = tuple(dataset(**item) for item in values)
    return tag, ({"vr": vr, "Value": list(values)} if values else {"vr": vr})


def dataset(**attributes) -> dict:
    """A DICOM JSON dataset; a keyword set to None is left out, a list of dicts is a sequence."""
    out = {}
    for keyword, value in attributes.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        tag, el = element(keyword, *values)
        out[tag] = el
    return out


def workitem(**overrides) -> dict:
    """A dataset meeting Table CC.2.5-3's N-CREATE requirements; ``overrides`` change it."""
    attributes = {
        "ScheduledProcedureStepPriority": "MEDIUM",
        "ProcedureStepLabel": "Read the CT",
        "WorklistLabel": "AI",
        "ScheduledProcedureStepStartDateTime": "20260301090000",
        "InputReadinessState": "READY",
        "PatientName": "Doe^John",
        "PatientID": "P0",
        "PatientBirthDate": [],
        "PatientSex": [],
        "AdmissionID": [],
        "IssuerOfAdmissionIDSequence": [],
        "ReferencedRequestSequence": [
            {"StudyInstanceUID": uid(1), "AccessionNumber": "A0", "RequestedProcedureID": "R0"}
        ],
        "ScheduledWorkitemCodeSequence": [],
        "ScheduledStationNameCodeSequence": [{"CodeValue": "STATION-A"}],
        "ScheduledStationClassCodeSequence": [],
        "ScheduledStationGeographicLocationCodeSequence": [],
    }
    attributes.update(overrides)
    return dataset(**{k: complete(k, v) for k, v in attributes.items()})


SCHEDULED_CODES = (
    "ScheduledWorkitemCodeSequence",
    "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence",
)


def code(value: str, meaning: str | None = None) -> dict:
    """A code item as Table CC.2.5-3 (the Code Sequence Macro) requires it."""
    return {"CodeValue": value, "CodingSchemeDesignator": "99DH", "CodeMeaning": meaning or value}


def complete(keyword: str, value):
    """The items of a workitem's sequence with what Table CC.2.5-3 requires of them, where a
    test leaves it out (a code's designator and meaning, a request's Type 1 and 2 attributes,
    a performer's code): tests name what they are about."""
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return value
    if keyword in SCHEDULED_CODES:
        return [{**code(item.get("CodeValue", "X")), **item} for item in value]
    if keyword == "ScheduledHumanPerformersSequence":
        return [{"HumanPerformerCodeSequence": [code("HP")], **item} for item in value]
    if keyword == "ReferencedRequestSequence":
        request = {
            "StudyInstanceUID": uid(1),
            "AccessionNumber": [],
            "IssuerOfAccessionNumberSequence": [],
            "RequestedProcedureID": [],
            "RequestedProcedureDescription": [],
            "RequestedProcedureCodeSequence": [],
        }
        return [{**request, **item} for item in value]
    return value


_numbers = iter(range(1, 10**6))


def new_uid() -> str:
    return uid(900, next(_numbers))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(tmp_path_factory, request):
    """`dicomhub serve`: on SQLite, two server processes (their writes go through the one
    writer); on PostgreSQL, one."""
    data = tmp_path_factory.mktemp("ups")
    if request.param == "sqlite":
        with running_server(data, workers="2") as (url, _):
            yield url + "/v2"
        return
    with index_database("postgresql") as index, running_server(data, index_url=index) as (url, _):
        yield url + "/v2"


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served, timeout=30) as client:
        yield client


def create(http, body: dict | list, query: str = "") -> httpx.Response:
    return http.post("/workitems" + query, content=json.dumps(body), headers=JSON)


def scheduled(http, **overrides) -> str:
    item = new_uid()
    assert create(http, [workitem(**overrides)], "?" + item).status_code == 201
    return item


def change(http, item: str, state: str, transaction: str) -> httpx.Response:
    body = dataset(ProcedureStepState=state, TransactionUID=transaction)
    return http.put(f"/workitems/{item}/state", content=json.dumps([body]), headers=JSON)


def cancel(http, item: str, body: dict | None = None) -> httpx.Response:
    if body is None:
        return http.post(f"/workitems/{item}/cancelrequest")
    return http.post(f"/workitems/{item}/cancelrequest", content=json.dumps(body), headers=JSON)


def update(http, item: str, body: dict, transaction: str | None = None) -> httpx.Response:
    query = f"?{transaction}" if transaction else ""
    return http.post(f"/workitems/{item}{query}", content=json.dumps([body]), headers=JSON)


def retrieve(http, item: str) -> dict:
    r = http.get(f"/workitems/{item}")
    assert r.status_code == 200, r.text
    (found,) = r.json()
    return found


def state_of(http, item: str) -> str:
    return retrieve(http, item)["00741000"]["Value"][0]


def refused(r: httpx.Response, status: int, code: str) -> None:
    """A refusal: the HTTP status, the Annex CC status in the problem body and the Warning."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["dicomStatus"] == code, r.text
    assert r.headers["warning"].startswith("299 ")


A, B = uid(990, 1), uid(990, 2)  # two performers' Transaction UIDs


# What Table CC.2.5-3 requires of a COMPLETED workitem (P) and of a CANCELED one (X), set by the
# performer's update before it changes the state
PERFORMED = dataset(
    UnifiedProcedureStepPerformedProcedureSequence=[
        {
            "PerformedStationNameCodeSequence": [{"CodeValue": "STATION-A"}],
            "PerformedProcedureStepStartDateTime": "20260301091000",
            "PerformedWorkitemCodeSequence": [{"CodeValue": "AI-READ"}],
            "PerformedProcedureStepEndDateTime": "20260301092000",
            "OutputInformationSequence": [{"StudyInstanceUID": uid(1)}],
        }
    ]
)
DISCONTINUED = dataset(
    ProcedureStepProgressInformationSequence=[
        {"ProcedureStepDiscontinuationReasonCodeSequence": [{"CodeValue": "110513"}]}
    ]
)


def in_state(http, state: str) -> str:
    """A new workitem brought to ``state`` by the performer of Transaction UID A (IN PROGRESS,
    with what completing or canceling it needs)."""
    item = scheduled(http)
    if state != "SCHEDULED":
        assert change(http, item, "IN PROGRESS", A).status_code == 200
        assert update(http, item, {**PERFORMED, **DISCONTINUED}, A).status_code == 200
    if state in ("COMPLETED", "CANCELED"):
        assert change(http, item, state, A).status_code == 200
    assert state_of(http, item) == state
    return item


# -- create and retrieve -------------------------------------------------------------------------


def test_create_and_retrieve(http):
    item = new_uid()
    r = create(http, [workitem()], "?" + item)
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/v2/workitems/{item}")
    assert r.headers["content-location"] == r.headers["location"]
    found = retrieve(http, item)
    assert found["00080018"]["Value"] == [item]
    assert found["00080016"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]  # UPS Push
    assert found["00741000"]["Value"] == ["SCHEDULED"]
    assert found["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    # the same UID again: 409, the workitem unchanged
    refused(create(http, [workitem(PatientID="other")], "?" + item), 409, "0111")
    assert retrieve(http, item)["00100020"]["Value"] == ["P0"]
    # the UID from the dataset (a single object), from ?workitem=, or made by the server
    other = new_uid()
    assert create(http, workitem(SOPInstanceUID=other)).status_code == 201
    assert state_of(http, other) == "SCHEDULED"
    third = new_uid()
    assert create(http, [workitem()], f"?workitem={third}").status_code == 201
    made = create(http, [workitem()])
    assert made.status_code == 201
    assert state_of(http, made.headers["location"].rsplit("/", 1)[1]) == "SCHEDULED"
    assert http.get(f"/workitems/{new_uid()}").status_code == 404
    assert http.get("/workitems/not-a-uid").status_code == 400


INVALID = {
    "a Type 1 attribute missing": (workitem(ProcedureStepLabel=None), "0120"),
    "a Type 1 attribute empty": (workitem(ScheduledProcedureStepPriority=[]), "0121"),
    "a priority outside its values": (workitem(ScheduledProcedureStepPriority="URGENT"), "0106"),
    "an input readiness outside its values": (workitem(InputReadinessState="SOON"), "0106"),
    "a Type 2 attribute missing": (workitem(ScheduledStationClassCodeSequence=None), "0120"),
    "a patient name missing": (workitem(PatientName=None), "0120"),
    "a Transaction UID": (workitem(TransactionUID=A), "0106"),
    "a state other than SCHEDULED": (workitem(ProcedureStepState="IN PROGRESS"), "C303"),
    "a bad date-time": (workitem(ScheduledProcedureStepStartDateTime="tomorrow"), "0106"),
    "a bad UID in an item": (
        workitem(ReferencedRequestSequence=[{"StudyInstanceUID": "1.2.x"}]),
        "0106",
    ),
    "a wrong VR": ({**workitem(), "00741000": {"vr": "LO", "Value": ["SCHEDULED"]}}, "0106"),
    "not a tag": ({**workitem(), "PatientName": {"vr": "PN"}}, "0106"),
    "two datasets": ([workitem(), workitem()], "0106"),
    "not a dataset": ("SCHEDULED", "0106"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_datasets_are_refused_and_nothing_is_created(http, case):
    body, code = INVALID[case]
    item = new_uid()
    refused(create(http, body, "?" + item), 400, code)
    assert http.get(f"/workitems/{item}").status_code == 404


def test_conditional_requirements_are_checked_over_http(http):
    """Table CC.2.5-3's conditions the dataset decides (conformance section 11): a code item
    without its coding scheme designator is refused, 400 0120, naming it; nothing created."""
    item = new_uid()
    station = {"vr": "SQ", "Value": [dataset(CodeValue="CT1", CodeMeaning="CT one")]}
    r = create(http, [{**workitem(), "00404025": station}], "?" + item)
    refused(r, 400, "0120")
    detail = r.json()["detail"]
    assert "ScheduledStationNameCodeSequence[1].CodingSchemeDesignator (00080102)" in detail
    assert http.get(f"/workitems/{item}").status_code == 404
    # an update may not break them either: the workitem unchanged
    assert create(http, [workitem()], "?" + item).status_code == 201
    performers = {"vr": "SQ", "Value": [dataset(HumanPerformerName="Smith^Jo")]}
    r = update(http, item, {"00404034": performers})
    refused(r, 400, "0120")
    assert "HumanPerformerCodeSequence" in r.json()["detail"]
    assert "00404034" not in retrieve(http, item)


def test_bad_create_requests(http):
    item = new_uid()
    r = http.post(
        f"/workitems?{item}",
        content=json.dumps(workitem()),
        headers={"Content-Type": "application/dicom"},
    )
    assert r.status_code == 415
    r = http.post(f"/workitems?{item}", content=b"{not json", headers=JSON)
    assert r.status_code == 400
    other = new_uid()
    r = create(http, workitem(SOPInstanceUID=other), "?" + item)  # two UIDs
    refused(r, 400, "0106")
    searched = http.get("/workitems?1.2.x&limit=1")  # a search (its key ignored), not a create
    assert searched.status_code == 200 and "1.2.x" in searched.headers["warning"]
    assert (
        http.post("/workitems?1.2.x", content=json.dumps(workitem()), headers=JSON).status_code
        == 400
    )
    for uid_ in (item, other):
        assert http.get(f"/workitems/{uid_}").status_code == 404


# -- the state machine ---------------------------------------------------------------------------

# (state before, requested state, Transaction UID, HTTP status, Annex CC status, state after)
TRANSITIONS = [
    ("SCHEDULED", "IN PROGRESS", A, 200, None, "IN PROGRESS"),
    ("SCHEDULED", "COMPLETED", A, 409, "C310", "SCHEDULED"),
    ("SCHEDULED", "CANCELED", A, 409, "C310", "SCHEDULED"),
    ("SCHEDULED", "SCHEDULED", A, 400, "C303", "SCHEDULED"),
    ("IN PROGRESS", "IN PROGRESS", B, 409, "C302", "IN PROGRESS"),
    ("IN PROGRESS", "IN PROGRESS", A, 409, "C302", "IN PROGRESS"),
    ("IN PROGRESS", "COMPLETED", B, 409, "C301", "IN PROGRESS"),
    ("IN PROGRESS", "CANCELED", B, 409, "C301", "IN PROGRESS"),
    ("IN PROGRESS", "SCHEDULED", A, 400, "C303", "IN PROGRESS"),
    ("IN PROGRESS", "COMPLETED", A, 200, None, "COMPLETED"),
    ("IN PROGRESS", "CANCELED", A, 200, None, "CANCELED"),
    ("COMPLETED", "COMPLETED", A, 200, "B306", "COMPLETED"),
    ("COMPLETED", "COMPLETED", B, 409, "C301", "COMPLETED"),
    ("COMPLETED", "CANCELED", A, 409, "C300", "COMPLETED"),
    ("COMPLETED", "IN PROGRESS", A, 409, "C300", "COMPLETED"),
    ("CANCELED", "CANCELED", A, 200, "B304", "CANCELED"),
    ("CANCELED", "CANCELED", B, 409, "C301", "CANCELED"),
    ("CANCELED", "COMPLETED", A, 409, "C300", "CANCELED"),
    ("CANCELED", "IN PROGRESS", A, 409, "C300", "CANCELED"),
]
WARNINGS = {
    "B306": "The UPS is already in the requested state of COMPLETED",
    "B304": "The UPS is already in the requested state of CANCELED",
}


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda r: f"{r[0]}->{r[1]}-{r[4] or r[3]}")
def test_change_state(http, row):
    before, target, transaction, status, code, after = row
    item = in_state(http, before)
    r = change(http, item, target, transaction)
    if status == 200:
        assert r.status_code == 200, r.text
        if code:
            assert r.headers["warning"].endswith(f'"{WARNINGS[code]}"')
        else:
            assert "warning" not in r.headers
    else:
        refused(r, status, code)
    assert state_of(http, item) == after


@pytest.mark.parametrize(
    ("target", "needed"), [("COMPLETED", PERFORMED), ("CANCELED", DISCONTINUED)]
)
def test_final_state_requirements(http, target, needed):
    """COMPLETED needs the performed procedure information, CANCELED a discontinuation reason
    (Table CC.2.5-3, P and X): without them 409 C304 and the workitem stays IN PROGRESS."""
    item = scheduled(http)
    assert change(http, item, "IN PROGRESS", A).status_code == 200
    refused(change(http, item, target, A), 409, "C304")
    assert state_of(http, item) == "IN PROGRESS"
    incomplete = json.loads(json.dumps(needed))
    first = next(iter(incomplete.values()))["Value"][0]
    first.pop(sorted(first)[-1])  # one attribute of the item missing
    assert update(http, item, incomplete, A).status_code == 200
    refused(change(http, item, target, A), 409, "C304")
    assert update(http, item, needed, A).status_code == 200
    assert change(http, item, target, A).status_code == 200
    assert state_of(http, item) == target


def test_the_transaction_uid_is_never_shown(http):
    item = in_state(http, "IN PROGRESS")
    assert "00081195" not in retrieve(http, item)
    found = http.get(
        "/workitems", params={"ProcedureStepState": "IN PROGRESS", "includefield": "all"}
    )
    assert found.status_code == 200
    assert all("00081195" not in d for d in found.json())


BAD_STATE_BODIES = {
    "no Transaction UID": dataset(ProcedureStepState="IN PROGRESS"),
    "no state": dataset(TransactionUID=A),
    "an unknown state": dataset(ProcedureStepState="PAUSED", TransactionUID=A),
    "a bad Transaction UID": dataset(ProcedureStepState="IN PROGRESS", TransactionUID="x"),
}


@pytest.mark.parametrize("case", BAD_STATE_BODIES, ids=list(BAD_STATE_BODIES))
def test_bad_state_requests(http, case):
    item = scheduled(http)
    r = http.put(
        f"/workitems/{item}/state", content=json.dumps(BAD_STATE_BODIES[case]), headers=JSON
    )
    assert r.status_code == 400 and r.json()["dicomStatus"] in ("0120", "0106"), r.text
    assert state_of(http, item) == "SCHEDULED"


def test_unknown_workitems(http):
    item = new_uid()
    refused(change(http, item, "IN PROGRESS", A), 404, "C307")
    refused(cancel(http, item), 404, "C307")
    refused(update(http, item, dataset(WorklistLabel="x")), 404, "C307")
    refused(http.get(f"/workitems/{item}"), 404, "C307")
    assert http.get(f"/workitems/{item}").status_code == 404


# -- cancellation requests -----------------------------------------------------------------------


def test_cancel_request_of_a_scheduled_workitem(http):
    item = scheduled(http)
    r = cancel(http, item, dataset(ReasonForCancellation="patient left"))
    assert r.status_code == 202, r.text
    assert "warning" not in r.headers
    found = retrieve(http, item)
    assert found["00741000"]["Value"] == ["CANCELED"]
    (progress,) = found["00741002"]["Value"]
    assert progress["00741238"]["Value"] == ["patient left"]
    assert progress["00404052"]["Value"][0].startswith(str(utcnow().year))
    # again: accepted with the warning, nothing changed (the docs' 202; Microsoft's test: 409)
    r = cancel(http, item)
    assert r.status_code == 202
    assert r.headers["warning"].endswith(f'"{WARNINGS["B304"]}"')
    # canceled by request, it has no lock: no Transaction UID completes it
    refused(change(http, item, "CANCELED", A), 409, "C301")


@pytest.mark.parametrize(("state", "code"), [("IN PROGRESS", "C312"), ("COMPLETED", "C311")])
def test_cancel_request_refused(http, state, code):
    item = in_state(http, state)
    refused(cancel(http, item), 409, code)
    assert state_of(http, item) == state


def test_cancel_request_with_a_bad_body(http):
    item = scheduled(http)
    r = http.post(f"/workitems/{item}/cancelrequest", content=b"[1, 2]", headers=JSON)
    refused(r, 400, "0106")
    r = http.post(
        f"/workitems/{item}/cancelrequest", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    assert state_of(http, item) == "SCHEDULED"


# -- update --------------------------------------------------------------------------------------


def test_update_a_scheduled_workitem(http):
    item = scheduled(http)
    stations = [code("STATION-B"), code("STATION-C")]
    r = update(
        http, item, dataset(WorklistLabel="NIGHT", ScheduledStationNameCodeSequence=stations)
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-location"].endswith(f"/workitems/{item}")
    found = retrieve(http, item)
    assert found["00741202"]["Value"] == ["NIGHT"]
    codes = [i["00080100"]["Value"][0] for i in found["00404025"]["Value"]]
    assert codes == ["STATION-B", "STATION-C"]  # the sequence replaced whole
    assert found["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]  # the rest kept
    # the search sees the new values
    hits = http.get(
        "/workitems", params={"ScheduledStationNameCodeSequence.CodeValue": "STATION-C"}
    )
    assert item in [d["00080018"]["Value"][0] for d in hits.json()]
    # a Transaction UID is for a workitem IN PROGRESS
    refused(update(http, item, dataset(WorklistLabel="X"), A), 400, "C301")
    assert retrieve(http, item)["00741202"]["Value"] == ["NIGHT"]


def test_update_a_workitem_in_progress(http):
    item = in_state(http, "IN PROGRESS")
    refused(update(http, item, dataset(WorklistLabel="X")), 400, "C301")  # missing
    refused(update(http, item, dataset(WorklistLabel="X"), B), 400, "C301")  # wrong
    r = update(http, item, dataset(WorklistLabel="DONE SOON"), A)
    assert r.status_code == 200, r.text
    r = http.post(
        f"/workitems/{item}?transaction={A}",
        content=json.dumps(dataset(PatientID="P9")),
        headers=JSON,
    )
    assert r.status_code == 200, r.text
    found = retrieve(http, item)
    assert found["00741202"]["Value"] == ["DONE SOON"] and found["00100020"]["Value"] == ["P9"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (dataset(ProcedureStepState="COMPLETED"), "C303"),
        (dataset(SOPInstanceUID=uid(5)), "0106"),
        (dataset(TransactionUID=B), "0106"),
        ({"00741202": {"vr": "LO", "Value": "not an array"}}, "0106"),
        (dataset(ScheduledProcedureStepPriority="URGENT"), "0106"),
        (dataset(ProcedureStepLabel=[]), "0121"),
    ],
    ids=["state", "uid", "transaction", "malformed", "enumerated", "type 1 emptied"],
)
def test_update_may_not_change_identity_or_state(http, body, code):
    item = in_state(http, "IN PROGRESS")
    refused(update(http, item, body, A), 400, code)
    found = retrieve(http, item)
    assert found["00741000"]["Value"] == ["IN PROGRESS"] and found["00741202"]["Value"] == ["AI"]


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELED"])
def test_final_workitems_may_no_longer_be_updated(http, state):
    item = in_state(http, state)
    refused(update(http, item, dataset(WorklistLabel="X"), A), 400, "C300")
    refused(update(http, item, dataset(WorklistLabel="X")), 400, "C300")
    assert retrieve(http, item)["00741202"]["Value"] == ["AI"]


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_claims_of_one_workitem_one_wins(served):
    """Two performers claim each workitem at the same moment (on SQLite, through two server
    processes): one gets 200, the other 409 (already IN PROGRESS); the winner's lock holds."""
    with httpx.Client(base_url=served, timeout=30) as setup:
        items = [scheduled(setup) for _ in range(8)]
    for item in items:
        barrier = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def claim(transaction: str, item=item, barrier=barrier, answers=answers) -> None:
            with httpx.Client(base_url=served, timeout=30) as own:
                own.get("/workitems", params={"PatientID": "none"})  # connected before the race
                barrier.wait()
                answers[transaction] = change(own, item, "IN PROGRESS", transaction)

        threads = [threading.Thread(target=claim, args=(t,)) for t in (A, B)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in answers.values())
        assert statuses == [200, 409], {t: r.text for t, r in answers.items()}
        winner = next(t for t, r in answers.items() if r.status_code == 200)
        loser = B if winner == A else A
        assert answers[loser].json()["dicomStatus"] == "C302"
        with httpx.Client(base_url=served, timeout=30) as http:
            refused(update(http, item, PERFORMED, loser), 400, "C301")
            assert update(http, item, PERFORMED, winner).status_code == 200
            refused(change(http, item, "COMPLETED", loser), 409, "C301")
            assert change(http, item, "COMPLETED", winner).status_code == 200


# -- search --------------------------------------------------------------------------------------

SEARCHED = {  # label: overrides of workitem()
    "s1": {
        "PatientName": "Müller^Anna",
        "PatientID": "S1",
        "ScheduledProcedureStepStartDateTime": "20250110083000",
        "ReferencedRequestSequence": [
            {
                "StudyInstanceUID": uid(71),
                "AccessionNumber": "ACC-1",
                "RequestedProcedureID": "RP-1",
            },
            {
                "StudyInstanceUID": uid(72),
                "AccessionNumber": "ACC-2",
                "RequestedProcedureID": "RP-2",
            },
        ],
        "ScheduledStationNameCodeSequence": [{"CodeValue": "CT1"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "CT"}],
        "StudyInstanceUID": uid(71),
    },
    "s2": {
        "PatientName": "Smith^Anne^Marie",
        "PatientID": "S2",
        "ScheduledProcedureStepStartDateTime": "20250111120000+0100",
        "ReferencedRequestSequence": [
            {
                "StudyInstanceUID": uid(73),
                "AccessionNumber": "ACC-3",
                "RequestedProcedureID": "RP-1",
            }
        ],
        "ScheduledStationNameCodeSequence": [{"CodeValue": "MR1"}],
        "ScheduledStationGeographicLocationCodeSequence": [{"CodeValue": "WEST"}],
        "StudyInstanceUID": uid(73),
    },
    "s3": {
        "PatientName": "Doe^Jane",
        "PatientID": "S3",
        "ScheduledProcedureStepStartDateTime": "20250212070000",
        "ReferencedRequestSequence": [],
        "ScheduledStationNameCodeSequence": [],
    },
}


@pytest.fixture(scope="module")
def searched(served):
    """The three workitems of SEARCHED (s3 claimed), by label; every other test's workitems have
    PatientID P0 or P9."""
    with httpx.Client(base_url=served, timeout=30) as http:
        made = {}
        for label, overrides in SEARCHED.items():
            made[label] = scheduled(http, **overrides)
        assert change(http, made["s3"], "IN PROGRESS", A).status_code == 200
        yield {v: k for k, v in made.items()}


def labels(http, searched, **params) -> list[str]:
    params.setdefault("PatientID", "S*")
    r = http.get("/workitems", params=params)
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    return sorted(searched[d["00080018"]["Value"][0]] for d in r.json())


SEARCHES = [
    ({}, ["s1", "s2", "s3"]),
    ({"PatientID": "S2"}, ["s2"]),
    ({"PatientID": "S1\\S3"}, ["s1", "s3"]),
    ({"PatientName": "muller^anna"}, ["s1"]),  # case- and accent-insensitive
    ({"PatientName": "SMITH*"}, ["s2"]),
    ({"PatientName": "ann", "fuzzymatching": "true"}, ["s1", "s2"]),  # word prefixes
    ({"PatientName": "mar smi", "fuzzymatching": "true"}, ["s2"]),
    ({"PatientName": "ann", "fuzzymatching": "false"}, []),
    ({"ReferencedRequestSequence.AccessionNumber": "ACC-2"}, ["s1"]),
    ({"0040A370.00080050": "ACC-3"}, ["s2"]),  # tags instead of keywords
    ({"ReferencedRequestSequence.RequestedProcedureID": "RP-1"}, ["s1", "s2"]),
    # keys of one sequence match within one item
    (
        {
            "ReferencedRequestSequence.AccessionNumber": "ACC-2",
            "ReferencedRequestSequence.RequestedProcedureID": "RP-1",
        },
        [],
    ),
    (
        {
            "ReferencedRequestSequence.AccessionNumber": "ACC-1",
            "ReferencedRequestSequence.RequestedProcedureID": "RP-1",
        },
        ["s1"],
    ),
    ({"ScheduledStationNameCodeSequence.CodeValue": "MR1"}, ["s2"]),
    ({"ScheduledStationNameCodeSequence.CodeValue": "?R1"}, ["s2"]),
    ({"ScheduledStationClassCodeSequence.CodeValue": "CT"}, ["s1"]),
    ({"ScheduledStationGeographicLocationCodeSequence.CodeValue": "WEST"}, ["s2"]),
    ({"ScheduledProcedureStepStartDateTime": "20250101-20250131"}, ["s1", "s2"]),
    ({"ScheduledProcedureStepStartDateTime": "20250111"}, ["s2"]),  # a day covers the day
    ({"ScheduledProcedureStepStartDateTime": "20250111110000"}, ["s2"]),  # compared in UTC
    ({"ScheduledProcedureStepStartDateTime": "20250201-"}, ["s3"]),
    ({"ScheduledProcedureStepStartDateTime": "-20250110235959"}, ["s1"]),
    ({"ProcedureStepState": "IN PROGRESS"}, ["s3"]),
    ({"ProcedureStepState": "SCHEDULED"}, ["s1", "s2"]),
    ({"StudyInstanceUID": f"{uid(71)},{uid(73)}"}, ["s1", "s2"]),
    ({"StudyInstanceUID": uid(72)}, []),
    ({"PatientName": "", "StudyInstanceUID": "*"}, ["s1", "s2", "s3"]),  # universal
]


@pytest.mark.parametrize(("params", "expected"), SEARCHES, ids=[str(s[0]) for s in SEARCHES])
def test_search(http, searched, params, expected):
    assert labels(http, searched, **params) == expected


def test_search_pages_and_returns(http, searched):
    assert labels(http, searched, limit="2") == ["s1", "s2"]
    assert labels(http, searched, limit="2", offset="2") == ["s3"]
    assert labels(http, searched, offset="5") == []
    r = http.get("/workitems", params={"PatientID": "S1"})
    (found,) = r.json()
    assert r.headers["content-type"] == "application/dicom+json"
    assert "00741204" in found and "0040A370" in found  # default return attributes
    assert "00380010" not in found and "00081195" not in found
    r = http.get("/workitems", params={"PatientID": "S1", "includefield": "AdmissionID"})
    assert "00380010" in r.json()[0]
    r = http.get("/workitems", params={"PatientID": "S3", "includefield": "all"})
    assert "00380014" in r.json()[0] and "00081195" not in r.json()[0]
    r = http.get("/workitems", params={"PatientID": "nobody"})
    assert r.status_code == 204 and r.content == b""


def test_search_warns_of_ignored_keys_and_refuses_bad_ones(http, searched):
    r = http.get("/workitems", params={"PatientID": "S1", "Modality": "CT", "NoSuchKey": "1"})
    assert r.status_code == 200
    assert "Modality" in r.headers["warning"] and "NoSuchKey" in r.headers["warning"]
    for params in (
        {"limit": "201"},
        {"limit": "0"},
        {"offset": "-1"},
        {"fuzzymatching": "maybe"},
        {"ScheduledProcedureStepStartDateTime": "20250201-20250101"},
        {"ScheduledProcedureStepStartDateTime": "yesterday"},
        {"StudyInstanceUID": "1.2.x"},
    ):
        refused(http.get("/workitems", params=params), 400, "0106")
    assert http.get("/workitems", headers={"Accept": "image/png"}).status_code == 406


# -- roles and audit -----------------------------------------------------------------------------


def test_data_actions_of_the_routes():
    actions = {
        r.name: r.action for r in routes() if "workitem" in r.name and r.name.startswith("v2-")
    }
    assert actions == {
        "v2-workitems-search": "read",
        "v2-workitem": "read",
        "v2-workitem-create": "write",
        "v2-workitem-update": "write",
        "v2-workitem-state": "write",
        "v2-workitem-cancel": "write",
        "v2-workitem-subscribe": "write",
        "v2-workitem-unsubscribe": "write",
        "v2-workitem-suspend": "write",
        # Push, Pull, Watch and Event in each data partition too
        "v2-partition-workitems-search": "read",
        "v2-partition-workitem": "read",
        "v2-partition-workitem-create": "write",
        "v2-partition-workitem-update": "write",
        "v2-partition-workitem-state": "write",
        "v2-partition-workitem-cancel": "write",
        "v2-partition-workitem-subscribe": "write",
        "v2-partition-workitem-unsubscribe": "write",
        "v2-partition-workitem-suspend": "write",
    }


def test_each_operation_is_audited(http, served):
    since = utcnow().isoformat()
    item = in_state(http, "COMPLETED")
    entries = []
    for _ in range(100):  # the audit log is written in batches
        r = http.get("/audit", params={"action": "write", "since": since})
        entries = [e for e in r.json() if (e.get("detail") or {}).get("workitem") == item]
        if len(entries) >= 4:  # create, claim, update, complete
            break
        threading.Event().wait(0.1)
    routes_seen = [(e["route"], e["status"]) for e in entries]
    assert ("v2-workitem-create", 201) in routes_seen
    assert routes_seen.count(("v2-workitem-state", 200)) == 2
    states = [e["detail"].get("state") for e in entries if e["route"] == "v2-workitem-state"]
    assert states == ["IN PROGRESS", "COMPLETED"]


def test_cancel_request_with_an_empty_dataset(http):
    """Microsoft's client sends a list of datasets: an empty one asks without information."""
    item = scheduled(http)
    r = http.post(f"/workitems/{item}/cancelrequest", content=b"[]", headers=JSON)
    assert r.status_code == 202, r.text
    assert state_of(http, item) == "CANCELED"
