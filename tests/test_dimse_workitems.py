"""The worklist over DIMSE, on `dicomhub serve` with SQLite and with PostgreSQL: Modality Worklist
C-FIND (PS3.4 Annex K) answered from SCHEDULED workitems, asked as a modality asks (DCMTK's
`findscu -W`) and by pynetdicom; the mapping of each worklist attribute from the workitem, the
matching keys pushed into the workitem search, the statuses and the audit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.components import Unavailable
from tests.conftest import free_port, index_database, ran, running_server, unavailable
from tests.synthetic import uid
from tests.test_dimse import _wait_for_port
from tests.test_workitems import JSON, dataset, workitem

CALLERS = "CT1=find,MR1=find,RIS=store+find,STORER=store"
MWL = "1.2.840.10008.5.1.4.31"


@pytest.fixture(autouse=True, scope="module")
def dcmtk_installed():
    if shutil.which("findscu") is None:
        unavailable(Unavailable("DCMTK", "Debian dcmtk is not installed"))
    ran("DCMTK")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(tmp_path_factory, request):
    """`dicomhub serve` with its DIMSE port: (HTTP base URL, DIMSE port)."""
    data = tmp_path_factory.mktemp("dimse-ups")
    port = free_port()
    settings = dict(dimse_port=str(port), dimse_callers=CALLERS)
    if request.param == "sqlite":
        with running_server(data, **settings) as (url, _):
            _wait_for_port(port)
            yield url, port
        return
    with index_database("postgresql") as index:
        with running_server(data, index_url=index, **settings) as (url, _):
            _wait_for_port(port)
            yield url, port


def _create(base: str, uid_: str, **overrides) -> None:
    r = httpx.post(
        f"{base}/v2/workitems?{uid_}",
        content=json.dumps([workitem(**overrides)]),
        headers=JSON,
    )
    assert r.status_code == 201, r.text


def _state(base: str, uid_: str, state: str, transaction: str) -> None:
    body = dataset(ProcedureStepState=state, TransactionUID=transaction)
    r = httpx.put(f"{base}/v2/workitems/{uid_}/state", content=json.dumps([body]), headers=JSON)
    assert r.status_code == 200, r.text


CODE = {"CodeValue": "CTHEAD", "CodingSchemeDesignator": "99LOCAL", "CodeMeaning": "CT head"}
SCHEDULE = {  # label: overrides of workitem(); every start in 2030, which no other test uses
    "w1": {
        "PatientName": "Müller^Anna",
        "PatientID": "W1",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "ProcedureStepLabel": "CT head without contrast",
        "ScheduledProcedureStepStartDateTime": "20300301090000",
        "ReferencedRequestSequence": [
            {
                "StudyInstanceUID": uid(501),
                "AccessionNumber": "ACC-W1",
                "RequestedProcedureID": "RP-W1",
            }
        ],
        "StudyInstanceUID": uid(501),
        "ScheduledStationNameCodeSequence": [{"CodeValue": "CT1", "CodeMeaning": "CT One"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "CT"}],
        "ScheduledWorkitemCodeSequence": [CODE],
        "ScheduledHumanPerformersSequence": [{"HumanPerformerName": "Smith^Jo"}],
        "ExpectedCompletionDateTime": "20300301093000",
    },
    "w2": {
        "PatientName": "Doe^Jane",
        "PatientID": "W2",
        "ScheduledProcedureStepStartDateTime": "20300301140000",
        "ReferencedRequestSequence": [{"AccessionNumber": "ACC-W2"}],
        "ScheduledStationNameCodeSequence": [{"CodeValue": "MR1"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "MR"}],
    },
    "w3": {
        "PatientName": "Doe^John",
        "PatientID": "W3",
        "ScheduledProcedureStepStartDateTime": "20300302080000",
        "ReferencedRequestSequence": [{"AccessionNumber": "ACC-W3"}],
        "ScheduledStationNameCodeSequence": [{"CodeValue": "CT1"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "CT"}],
    },
    "claimed": {  # IN PROGRESS: no longer on the worklist
        "PatientID": "W4",
        "ScheduledProcedureStepStartDateTime": "20300301100000",
        "ScheduledStationNameCodeSequence": [{"CodeValue": "CT1"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "CT"}],
    },
    "canceled": {
        "PatientID": "W5",
        "ScheduledProcedureStepStartDateTime": "20300301110000",
        "ScheduledStationNameCodeSequence": [{"CodeValue": "CT1"}],
        "ScheduledStationClassCodeSequence": [{"CodeValue": "CT"}],
    },
}


@pytest.fixture(scope="module")
def schedule(served):
    """The workitems of SCHEDULE, by label."""
    base, _ = served
    made = {label: uid(502, n) for n, label in enumerate(SCHEDULE, 1)}
    for label, overrides in SCHEDULE.items():
        _create(base, made[label], **overrides)
    _state(base, made["claimed"], "IN PROGRESS", uid(503))
    r = httpx.post(f"{base}/v2/workitems/{made['canceled']}/cancelrequest")
    assert r.status_code == 202, r.text
    return made


def findscu(port: int, folder: Path, *keys: str, calling: str = "CT1") -> list[Dataset]:
    """A worklist query as a modality makes it (``findscu -W``); the responses, by PatientID."""
    folder.mkdir(exist_ok=True)
    args = ["findscu", "-v", "-W", "-aet", calling, "-aec", "DICOMHUB", "-X", "-od", str(folder)]
    for k in keys:
        args += ["-k", k]
    done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Received Final Find Response (Success)" in done.stdout + done.stderr, done.stderr
    found = [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]
    return sorted(found, key=lambda d: str(d.PatientID))


SPS = "ScheduledProcedureStepSequence[0]."
MODALITY_KEYS = (  # what a modality asks for: its station's procedure steps of a day
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "StudyInstanceUID",
    SPS + "Modality",
    SPS + "ScheduledStationAETitle=CT1",
    SPS + "ScheduledStationName",
    SPS + "ScheduledProcedureStepStartDate=20300301",
    SPS + "ScheduledProcedureStepStartTime",
    SPS + "ScheduledProcedureStepID",
    SPS + "ScheduledProcedureStepDescription",
    SPS + "ScheduledProtocolCodeSequence",
    SPS + "ScheduledPerformingPhysicianName",
    SPS + "ScheduledProcedureStepStatus",
)


def test_a_modality_fetches_its_worklist(served, schedule, tmp_path):
    """findscu -W as CT1 for 2030-03-01: the one SCHEDULED step of its station that day, every
    worklist attribute mapped from the workitem."""
    _, port = served
    (found,) = findscu(port, tmp_path / "a", *MODALITY_KEYS)
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert (str(found.PatientName), found.PatientID) == ("Müller^Anna", "W1")
    assert (found.PatientBirthDate, found.PatientSex) == ("19700101", "F")
    assert (found.AccessionNumber, found.RequestedProcedureID) == ("ACC-W1", "RP-W1")
    assert found.StudyInstanceUID == uid(501)
    assert found.RequestedProcedureDescription == ""  # asked for, not in the workitem
    (step,) = found.ScheduledProcedureStepSequence
    assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "CT1")
    assert step.ScheduledStationName == "CT One"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (
        "20300301",
        "090000",
    )
    assert step.ScheduledProcedureStepDescription == "CT head without contrast"
    (code,) = step.ScheduledProtocolCodeSequence
    assert (code.CodeValue, code.CodeMeaning) == ("CTHEAD", "CT head")
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert len(step.ScheduledProcedureStepID) == 16
    assert step.ScheduledPerformingPhysicianName == "Smith^Jo"


@pytest.mark.parametrize(
    "keys, expected",
    [
        ([SPS + "ScheduledStationAETitle=CT1"], ["W1", "W3"]),
        ([SPS + "Modality=MR"], ["W2"]),
        ([SPS + "ScheduledProcedureStepStartDate=20300301"], ["W1", "W2"]),
        ([SPS + "ScheduledProcedureStepStartDate=20300301-20300302"], ["W1", "W2", "W3"]),
        (["PatientID=W*", SPS + "ScheduledProcedureStepStartDate=-20300301"], ["W1", "W2"]),
        (
            [
                SPS + "ScheduledProcedureStepStartDate=20300301",
                SPS + "ScheduledProcedureStepStartTime=1200-",
            ],
            ["W2"],
        ),
        (  # dates and times match independently: 08:00-10:00 on either day
            [
                SPS + "ScheduledProcedureStepStartDate=20300301-20300302",
                SPS + "ScheduledProcedureStepStartTime=0800-1000",
            ],
            ["W1", "W3"],
        ),
        ([SPS + "ScheduledProcedureStepStartTime=1400"], ["W2"]),
        (["PatientName=doe*"], ["W2", "W3"]),  # wildcard, case-insensitive
        (["PatientName=Muller^Anna"], ["W1"]),  # accent-insensitive
        (["PatientID=W3"], ["W3"]),
        (["AccessionNumber=ACC-W?"], ["W1", "W2", "W3"]),
        (["RequestedProcedureID=RP-W1"], ["W1"]),
        ([f"StudyInstanceUID={uid(501)}"], ["W1"]),
        (["PatientID=W4"], []),  # IN PROGRESS
        (["PatientID=W5"], []),  # CANCELED
        ([SPS + "ScheduledProcedureStepStatus=STARTED"], []),  # only SCHEDULED steps listed
    ],
)
def test_matching_keys(served, schedule, tmp_path, keys, expected):
    _, port = served
    date = (
        []
        if any("Date" in k or "ID=" in k or "Status" in k for k in keys)
        else [SPS + "ScheduledProcedureStepStartDate=20300301-20300302"]
    )
    found = findscu(port, tmp_path / "m", "PatientID", *date, *keys)
    assert [d.PatientID for d in found] == expected


def _pynetdicom_find(port: int, identifier: Dataset, calling: str = "RIS") -> list:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, MWL))
    finally:
        assoc.release()


def _identifier(**sps) -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    ds.PatientName = ""
    step = Dataset()
    for keyword, value in sps.items():
        setattr(step, keyword, value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_pynetdicom_statuses_and_audit(served, schedule):
    """Pending 0xFF00 per item then 0x0000; 0xFF01 when a key given does not filter; 0xA900 for
    a malformed date; 0x0124 for a caller without find; each query audited."""
    base, port = served
    answers = _pynetdicom_find(port, _identifier(ScheduledProcedureStepStartDate="20300302"))
    assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
    assert answers[0][1].PatientID == "W3"
    unfiltered = _identifier(ScheduledProcedureStepStartDate="20300302")
    unfiltered.PatientBirthDate = "19000101"  # not a matching key here
    assert [s.Status for s, _ in _pynetdicom_find(port, unfiltered)] == [0xFF01, 0x0000]
    everything = _identifier()  # no key with a value: every SCHEDULED item (others' too)
    statuses = [s.Status for s, _ in _pynetdicom_find(port, everything)]
    assert statuses[-1] == 0x0000 and len(statuses) >= 4
    started = _identifier(ScheduledProcedureStepStatus="STARTED")  # only SCHEDULED are listed
    assert [s.Status for s, _ in _pynetdicom_find(port, started)] == [0x0000]
    bad = _identifier(ScheduledProcedureStepStartDate="20301399")
    assert [s.Status for s, _ in _pynetdicom_find(port, bad)] == [0xA900]
    wild = _identifier(ScheduledProcedureStepStartDate="2030*")  # no wildcard in a date
    assert [s.Status for s, _ in _pynetdicom_find(port, wild)] == [0xA900]
    assert [s.Status for s, _ in _pynetdicom_find(port, everything, "STORER")] == [0x0124]
    entries = httpx.get(f"{base}/v2/audit", params={"principal": "RIS", "limit": 100}).json()
    worklist = [e for e in entries if e["method"] == "C-FIND"]
    assert {e["detail"]["level"] for e in worklist} == {"WORKLIST"}
    refusals = [e["detail"]["level"] for e in worklist if e["status"] == 0xA900]
    assert refusals == ["WORKLIST", "WORKLIST"]
    assert 1 in [e["detail"]["matches"] for e in worklist if e["status"] == 0]
    refused = httpx.get(f"{base}/v2/audit", params={"principal": "STORER"}).json()
    assert [(e["method"], e["status"]) for e in refused] == [("C-FIND", 0x0124)]


def test_an_empty_step_sequence_returns_every_step_attribute(served, schedule):
    _, port = served
    identifier = Dataset()
    identifier.PatientID = "W1"
    identifier.ScheduledProcedureStepSequence = []
    (pending, found), (final, _) = _pynetdicom_find(port, identifier)
    assert (pending.Status, final.Status) == (0xFF00, 0x0000)
    (step,) = found.ScheduledProcedureStepSequence
    assert step.ScheduledStationAETitle == "CT1"
    assert step.ScheduledProcedureStepStartDate == "20300301"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert (step.ScheduledProcedureStepEndDate, step.ScheduledProcedureStepEndTime) == (
        "20300301",
        "093000",
    )
    assert step.ScheduledProcedureStepDescription == "CT head without contrast"
    assert step.ScheduledProcedureStepLocation == ""


# -- UPS Push and Pull over DIMSE (pynetdicom as SCU) ---------------------------------------------

PUSH, PULL = "1.2.840.10008.5.1.4.34.6.1", "1.2.840.10008.5.1.4.34.6.3"
A, B = uid(990, 1), uid(990, 2)  # two performers' Transaction UIDs
_numbers = iter(range(1, 10**6))


def new_uid() -> str:
    return uid(504, next(_numbers))


class Ups:
    """One association, as a UPS SCU (Push and Pull)."""

    def __init__(self, port: int, calling: str = "RIS", classes: tuple = (PUSH, PULL)):
        from pynetdicom import AE

        ae = AE(ae_title=calling)
        for sop_class in classes:
            ae.add_requested_context(sop_class)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
        assert self.assoc.is_established

    def __enter__(self) -> Ups:
        return self

    def __exit__(self, *exc) -> None:
        self.assoc.release()

    def create(self, item: str | None, ds: Dataset) -> int:
        status, _ = self.assoc.send_n_create(ds, PUSH, item)
        return status.Status

    def get(self, item: str, tags: list | None = None) -> tuple[int, Dataset | None]:
        status, found = self.assoc.send_n_get(tags or [], PUSH, item)
        return status.Status, found

    def set(self, item: str, changes: dict, transaction: str | None = None) -> int:
        ds = Dataset.from_json(changes)
        if transaction:
            ds.TransactionUID = transaction
        status, _ = self.assoc.send_n_set(ds, PUSH, item)
        return status.Status

    def change(self, item: str, state: str, transaction: str) -> int:
        ds = Dataset()
        ds.ProcedureStepState = state
        ds.TransactionUID = transaction
        status, _ = self.assoc.send_n_action(ds, 1, PUSH, item)
        return status.Status

    def cancel(self, item: str, reason: str | None = None, action: int = 2) -> int:
        ds = None
        if reason:
            ds = Dataset()
            ds.ReasonForCancellation = reason
        status, _ = self.assoc.send_n_action(ds, action, PUSH, item)
        return status.Status

    def find(self, identifier: Dataset) -> list:
        return list(self.assoc.send_c_find(identifier, PULL))


def ups_dataset(**overrides) -> Dataset:
    ds = Dataset.from_json(workitem(**overrides))
    ds.ProcedureStepState = "SCHEDULED"
    return ds


def state_of(ups: Ups, item: str) -> str:
    status, found = ups.get(item, [0x00741000])
    assert status == 0x0000
    return found.ProcedureStepState


def test_n_create_and_n_get(served):
    base, port = served
    item = new_uid()
    with Ups(port) as ups:
        assert ups.create(item, ups_dataset(PatientID="U1", PatientName="Dimse^Una")) == 0
        assert ups.create(item, ups_dataset(PatientID="U1")) == 0x0111  # duplicate
        assert ups.create(None, ups_dataset(PatientID="U1-made-here")) == 0
        status, found = ups.get(item)
        assert status == 0x0000
        assert (found.PatientID, str(found.PatientName)) == ("U1", "Dimse^Una")
        assert (found.ProcedureStepState, found.SOPInstanceUID) == ("SCHEDULED", item)
        assert found.SOPClassUID == PUSH and "TransactionUID" not in found
        status, some = ups.get(item, [0x00100020, 0x00741000, 0x00081195, 0x00404011])
        assert status == 0x0000
        assert (some.PatientID, some.ProcedureStepState) == ("U1", "SCHEDULED")
        assert "TransactionUID" not in some and some.ExpectedCompletionDateTime == ""
    over_http = httpx.get(f"{base}/v2/workitems/{item}").json()[0]
    assert over_http["00100020"]["Value"] == ["U1"]
    made = httpx.get(f"{base}/v2/workitems", params={"PatientID": "U1-made-here"}).json()
    assert len(made) == 1 and made[0]["00080018"]["Value"][0].startswith("2.25.")


@pytest.mark.parametrize(
    "change, status",
    [
        ({"ProcedureStepLabel": None}, 0x0120),  # Type 1 missing
        ({"ProcedureStepLabel": []}, 0x0121),  # Type 1 empty
        ({"ScheduledProcedureStepPriority": "URGENT"}, 0x0106),
        ({"PatientID": None}, 0x0120),  # Type 2 missing
        ({"TransactionUID": uid(505)}, 0x0106),  # a new workitem has no lock
        ({"state": "IN PROGRESS"}, 0xC309),  # N-CREATE's status for it (UPS-RS: C303)
    ],
)
def test_n_create_refusals_create_nothing(served, change, status):
    base, port = served
    item = new_uid()
    change = dict(change)  # the parameter serves both engines
    state = change.pop("state", None)
    ds = ups_dataset(**{"PatientID": "U-refused", **change})
    if state:
        ds.ProcedureStepState = state
    with Ups(port) as ups:
        assert ups.create(item, ds) == status
        assert ups.get(item)[0] == 0xC307
    assert httpx.get(f"{base}/v2/workitems/{item}").status_code == 404


def test_n_create_checks_the_conditional_requirements(served):
    """Table CC.2.5-3's conditions (conformance section 11) over DIMSE: a code item without
    its meaning, a request without its study: 0x0120, nothing created."""
    base, port = served
    code = {"00080100": {"vr": "SH", "Value": ["CT1"]}, "00080102": {"vr": "SH", "Value": ["L"]}}
    request = {"00080050": {"vr": "SH", "Value": ["ACC-C"]}}
    for broken in (
        {"00404025": {"vr": "SQ", "Value": [code]}},
        {"0040A370": {"vr": "SQ", "Value": [request]}},
    ):
        item = new_uid()
        ds = Dataset.from_json({**workitem(PatientID="U-conditions"), **broken})
        ds.ProcedureStepState = "SCHEDULED"
        with Ups(port) as ups:
            assert ups.create(item, ds) == 0x0120, broken
            assert ups.get(item)[0] == 0xC307
        assert httpx.get(f"{base}/v2/workitems/{item}").status_code == 404


PERFORMED = {
    "00741216": {
        "vr": "SQ",
        "Value": [
            {
                "00404028": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["S1"]}}]},
                "00404050": {"vr": "DT", "Value": ["20260301091000"]},
                "00404019": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["R"]}}]},
                "00404051": {"vr": "DT", "Value": ["20260301092000"]},
                "00404033": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [uid(1)]}}]},
            }
        ],
    }
}
LABEL = {"00741202": {"vr": "LO", "Value": ["Worklist B"]}}


def test_the_state_machine_over_dimse(served):
    """Claim with N-ACTION, update with N-SET under the lock, complete: each refusal with its
    Annex CC status, nothing changed by a refused request."""
    base, port = served
    item = new_uid()
    with Ups(port) as ups:
        assert ups.create(item, ups_dataset(PatientID="U2")) == 0
        assert ups.set(item, LABEL) == 0  # SCHEDULED: without a Transaction UID
        assert ups.set(item, LABEL, A) == 0xC301  # SCHEDULED: with one
        assert ups.change(item, "COMPLETED", A) == 0xC310  # not yet IN PROGRESS
        assert ups.change(item, "SCHEDULED", A) == 0xC303
        assert ups.change(item, "IN PROGRESS", A) == 0
        assert ups.change(item, "IN PROGRESS", B) == 0xC302
        assert ups.set(item, PERFORMED) == 0xC301  # IN PROGRESS: the lock is missing
        assert ups.set(item, PERFORMED, B) == 0xC301  # another
        assert ups.change(item, "COMPLETED", A) == 0xC304  # final state requirements unmet
        assert ups.set(item, {"00741000": {"vr": "CS", "Value": ["COMPLETED"]}}, A) == 0xC303
        assert state_of(ups, item) == "IN PROGRESS"
        assert ups.set(item, PERFORMED, A) == 0
        assert ups.change(item, "COMPLETED", B) == 0xC301
        assert ups.change(item, "COMPLETED", A) == 0
        assert ups.change(item, "COMPLETED", A) == 0xB306  # already: a warning
        assert ups.change(item, "CANCELED", A) == 0xC300
        assert ups.set(item, LABEL, A) == 0xC300
        assert ups.cancel(item) == 0xC311
        assert state_of(ups, item) == "COMPLETED"
        status, found = ups.get(item)
        assert "TransactionUID" not in found
        assert found.WorklistLabel == "Worklist B"
    over_http = httpx.get(f"{base}/v2/workitems/{item}").json()[0]
    assert over_http["00741000"]["Value"] == ["COMPLETED"]


def test_request_cancel_over_dimse(served):
    _, port = served
    scheduled, claimed = new_uid(), new_uid()
    with Ups(port) as ups:
        assert ups.create(scheduled, ups_dataset(PatientID="U3")) == 0
        assert ups.create(claimed, ups_dataset(PatientID="U3")) == 0
        assert ups.cancel(scheduled, action=3) == 0x0123  # subscribe: UPS Watch is not offered
        assert ups.cancel(scheduled, "no longer needed") == 0
        assert ups.cancel(scheduled) == 0xB304  # already CANCELED: a warning
        status, found = ups.get(scheduled)
        (progress,) = found.ProcedureStepProgressInformationSequence
        assert progress.ReasonForCancellation == "no longer needed"
        assert ups.change(claimed, "IN PROGRESS", A) == 0
        assert ups.cancel(claimed) == 0xC312  # the performer cannot be told
        assert (state_of(ups, scheduled), state_of(ups, claimed)) == ("CANCELED", "IN PROGRESS")


def test_unknown_workitems_and_bad_requests(served):
    _, port = served
    missing = new_uid()
    with Ups(port) as ups:
        assert ups.get(missing)[0] == 0xC307
        assert ups.set(missing, LABEL) == 0xC307
        assert ups.change(missing, "IN PROGRESS", A) == 0xC307
        assert ups.cancel(missing) == 0xC307
        item = new_uid()
        assert ups.create(item, ups_dataset(PatientID="U4")) == 0
        no_lock = Dataset()
        no_lock.ProcedureStepState = "IN PROGRESS"
        status, _ = ups.assoc.send_n_action(no_lock, 1, PUSH, item)
        assert status.Status == 0x0120  # the Transaction UID is missing
        bad = Dataset()
        bad.ProcedureStepState = "DONE"
        bad.TransactionUID = A
        status, _ = ups.assoc.send_n_action(bad, 1, PUSH, item)
        assert status.Status == 0x0106
        assert ups.set(item, {"00080018": {"vr": "UI", "Value": [uid(506)]}}) == 0x0106
        assert state_of(ups, item) == "SCHEDULED"
        status, found = ups.get(item)
        assert found.SOPInstanceUID == item and "WorklistLabel" in found
        assert found.WorklistLabel == "AI"


def test_concurrent_claims_over_dimse_one_wins(served):
    """Two associations claim each workitem at the same moment: one succeeds, the other is
    told C302 (already IN PROGRESS), and only the winner's Transaction UID is the lock."""
    import threading

    _, port = served
    with Ups(port) as setup:
        items = [new_uid() for _ in range(6)]
        for item in items:
            assert setup.create(item, ups_dataset(PatientID="U5")) == 0
    for item in items:
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def claim(transaction: str, item=item, barrier=barrier, answers=answers) -> None:
            with Ups(port) as own:
                barrier.wait()
                answers[transaction] = own.change(item, "IN PROGRESS", transaction)

        threads = [threading.Thread(target=claim, args=(t,)) for t in (A, B)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers.values()) == [0x0000, 0xC302], answers
        winner = next(t for t, s in answers.items() if s == 0)
        loser = B if winner == A else A
        with Ups(port) as ups:
            assert ups.set(item, PERFORMED, loser) == 0xC301
            assert ups.set(item, PERFORMED, winner) == 0
            assert ups.change(item, "COMPLETED", winner) == 0


def test_a_performer_with_ups_pull_only(served):
    """A performer that negotiates UPS Pull alone (as PS3.4 CC.2 gives it N-GET, N-SET and
    N-ACTION) sends its requests for the workitem (SOP Class UPS Push) on that context."""
    _, port = served
    item = new_uid()
    with Ups(port) as ups:
        assert ups.create(item, ups_dataset(PatientID="U8")) == 0
    with Ups(port, classes=(PULL,)) as performer:
        assert performer.change(item, "IN PROGRESS", A) == 0
        assert performer.set(item, PERFORMED, A) == 0
        assert performer.change(item, "COMPLETED", A) == 0
        assert state_of(performer, item) == "COMPLETED"


def test_a_claim_over_dimse_and_one_over_http_at_once(served):
    """The same workitems and the same conditional write: a DIMSE performer and an HTTP one
    claiming one workitem at the same moment, exactly one wins."""
    import threading

    base, port = served
    items = [new_uid() for _ in range(4)]
    with Ups(port) as setup:
        for item in items:
            assert setup.create(item, ups_dataset(PatientID="U9")) == 0
    for item in items:
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def over_dimse(item=item, barrier=barrier, answers=answers) -> None:
            with Ups(port) as own:
                barrier.wait()
                answers["dimse"] = own.change(item, "IN PROGRESS", A)

        def over_http(item=item, barrier=barrier, answers=answers) -> None:
            body = dataset(ProcedureStepState="IN PROGRESS", TransactionUID=B)
            with httpx.Client(base_url=base, timeout=30) as http:
                http.get("/health/check")  # connected before the race
                barrier.wait()
                r = http.put(
                    f"/v2/workitems/{item}/state", content=json.dumps([body]), headers=JSON
                )
                answers["http"] = 0 if r.status_code == 200 else int(r.json()["dicomStatus"], 16)

        threads = [threading.Thread(target=f) for f in (over_dimse, over_http)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers.values()) == [0x0000, 0xC302], answers


def test_c_find_on_ups_pull(served):
    base, port = served
    with Ups(port) as ups:
        made = [new_uid(), new_uid()]
        assert ups.create(made[0], ups_dataset(PatientID="U6", PatientName="Find^Me")) == 0
        assert ups.create(made[1], ups_dataset(PatientID="U6", PatientName="Other^One")) == 0
        assert ups.change(made[1], "IN PROGRESS", A) == 0
        identifier = Dataset()
        identifier.PatientID = "U6"
        identifier.PatientName = ""
        identifier.ProcedureStepState = "SCHEDULED"
        identifier.SOPInstanceUID = ""
        identifier.TransactionUID = ""
        answers = ups.find(identifier)
        assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
        found = answers[0][1]
        assert (found.SOPInstanceUID, str(found.PatientName)) == (made[0], "Find^Me")
        assert "TransactionUID" not in found
        identifier.ProcedureStepState = ""
        identifier.ScheduledStationNameCodeSequence = [Dataset()]
        identifier.ScheduledStationNameCodeSequence[0].CodeValue = "STATION-A"
        answers = ups.find(identifier)
        assert [s.Status for s, _ in answers] == [0xFF00, 0xFF00, 0x0000]
        assert {a.ProcedureStepState for _, a in answers[:2]} == {"SCHEDULED", "IN PROGRESS"}
        identifier.WorklistLabel = "AI"  # not a matching key: 0xFF01
        assert [s.Status for s, _ in ups.find(identifier)] == [0xFF01, 0xFF01, 0x0000]
        identifier.ScheduledProcedureStepStartDateTime = "2026-bad"
        assert [s.Status for s, _ in ups.find(identifier)] == [0xA900]
    entries = httpx.get(f"{base}/v2/audit", params={"principal": "RIS", "limit": 1000}).json()
    finds = [e for e in entries if e["method"] == "C-FIND" and e["detail"]["level"] == "UPS"]
    assert (0xA900, 0) in [(e["status"], e["detail"]["matches"]) for e in finds]
    assert (0, 2) in [(e["status"], e["detail"]["matches"]) for e in finds]


def test_permissions_and_audit(served):
    base, port = served
    item = new_uid()
    with Ups(port, "CT1") as modality:  # find only
        assert modality.create(item, ups_dataset(PatientID="U7")) == 0x0124
    with Ups(port) as ups:
        assert ups.create(item, ups_dataset(PatientID="U7")) == 0
    with Ups(port, "CT1") as modality:
        assert modality.get(item)[0] == 0x0000
        assert modality.change(item, "IN PROGRESS", A) == 0x0124
        assert modality.set(item, LABEL) == 0x0124
    with Ups(port, "STORER") as storer:  # store only
        assert storer.get(item)[0] == 0x0124
        assert storer.change(item, "IN PROGRESS", A) == 0
    entries = httpx.get(f"{base}/v2/audit", params={"limit": 1000}).json()
    mine = [
        (e["principal"], e["method"], e["status"], e["action"], e["detail"].get("state"))
        for e in entries
        if e["protocol"] == "dimse" and e["detail"].get("workitem") == item
    ]
    assert sorted(mine) == sorted(
        [
            ("CT1", "N-CREATE", 0x0124, "write", None),
            ("RIS", "N-CREATE", 0, "write", "SCHEDULED"),
            ("CT1", "N-GET", 0, "read", "SCHEDULED"),
            ("CT1", "N-ACTION", 0x0124, "write", None),
            ("CT1", "N-SET", 0x0124, "write", None),
            ("STORER", "N-GET", 0x0124, "read", None),
            ("STORER", "N-ACTION", 0, "write", "IN PROGRESS"),
        ]
    )
