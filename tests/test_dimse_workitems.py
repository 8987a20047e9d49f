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
    args = ["findscu", "-W", "-aet", calling, "-aec", "DICOMHUB", "-X", "-od", str(folder)]
    for k in keys:
        args += ["-k", k]
    done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
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
    bad = _identifier(ScheduledProcedureStepStartDate="20301399")
    assert [s.Status for s, _ in _pynetdicom_find(port, bad)] == [0xA900]
    assert [s.Status for s, _ in _pynetdicom_find(port, everything, "STORER")] == [0x0124]
    entries = httpx.get(f"{base}/v2/audit", params={"principal": "RIS", "limit": 100}).json()
    worklist = [e for e in entries if e["method"] == "C-FIND"]
    assert {e["detail"]["level"] for e in worklist} == {"WORKLIST"}
    assert (0xA900, "WORKLIST") in [(e["status"], e["detail"]["level"]) for e in worklist]
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
