"""The worklist over DIMSE per data partition (``--dimse-partitions``), on `dicomhub serve` with
SQLite and PostgreSQL: the same workitem UID scheduled in the default partition and in
clinic-a; a modality mapped to clinic-a (DCMTK's `findscu -W`) sees clinic-a's step only, one
not mapped the default partition's; UPS N-GET, N-SET, N-ACTION and C-FIND on UPS Pull
(pynetdicom) reach the caller's partition's workitem and leave the other's as it was."""

from __future__ import annotations

import json

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.conftest import free_port, index_database, running_server
from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid
from tests.test_dimse import _wait_for_port
from tests.test_dimse_workitems import (
    SPS,
    Ups,
    dcmtk_installed,  # noqa: F401 - autouse: DCMTK
    findscu,
    ups_dataset,
)
from tests.test_workitems import JSON, workitem

ITEM = uid(560, 1)
NAMES = {"Microsoft.Default": "Default^Step", "clinic-a": "Alpha^Step"}
MAPPED = "CLINICA"  # --dimse-partitions CLINICA=clinic-a; CT1 is not mapped


def root(base: str, partition: str) -> str:
    if partition == "Microsoft.Default":
        return f"{base}/v2"
    return f"{base}/v2/partitions/{partition}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(tmp_path_factory, request):
    """`dicomhub serve` with partitions and a DIMSE port, ITEM scheduled in both partitions:
    (HTTP base URL, DIMSE port)."""
    data = tmp_path_factory.mktemp("partition-worklist")
    port = free_port()
    settings = dict(
        data_partitions="true",
        dimse_port=str(port),
        dimse_partitions=f"{MAPPED}=clinic-a",
    )
    with index_database(request.param) as index:
        with running_server(data, index_url=index, **settings) as (url, _):
            _wait_for_port(port)
            made = httpx.post(  # a store creates clinic-a
                f"{url}/v2/partitions/clinic-a/studies",
                content=multipart(instance(uid(561), uid(561, 1), uid(561, 1, 1))),
                headers={"Content-Type": MULTIPART},
            )
            assert made.status_code == 200, made.text
            for partition, name in NAMES.items():
                body = workitem(
                    PatientName=name,
                    PatientID="PW",
                    ScheduledProcedureStepStartDateTime="20310301090000",
                    ScheduledStationNameCodeSequence=[{"CodeValue": "CT1"}],
                    ScheduledStationClassCodeSequence=[{"CodeValue": "CT"}],
                )
                r = httpx.post(
                    f"{root(url, partition)}/workitems?{ITEM}",
                    content=json.dumps([body]),
                    headers=JSON,
                )
                assert r.status_code == 201, r.text
            yield url, port


def test_findscu_sees_its_partitions_worklist(served, tmp_path):
    _, port = served
    keys = ("PatientName", "PatientID=PW", SPS + "ScheduledProcedureStepStartDate=20310301")
    for calling, name in ((MAPPED, "Alpha^Step"), ("CT1", "Default^Step")):
        found = findscu(port, tmp_path / calling, *keys, calling=calling)
        assert [str(ds.PatientName) for ds in found] == [name], calling


def test_ups_services_reach_the_callers_partition(served):
    base, port = served
    with Ups(port, MAPPED) as ups:
        status, found = ups.get(ITEM)
        assert status == 0x0000 and str(found.PatientName) == "Alpha^Step"
        assert ups.set(ITEM, {"00741204": {"vr": "LO", "Value": ["Set in A"]}}) == 0
        transaction = uid(562)
        assert ups.change(ITEM, "IN PROGRESS", transaction) == 0
        identifier = Dataset()
        identifier.PatientID, identifier.PatientName = "PW", ""
        identifier.ProcedureStepState = ""
        answers = [ds for _, ds in ups.find(identifier) if ds is not None]
        assert [(str(a.PatientName), a.ProcedureStepState) for a in answers] == [
            ("Alpha^Step", "IN PROGRESS")
        ]
        made = uid(560, 2)  # N-CREATE: in clinic-a only
        assert ups.create(made, ups_dataset(PatientID="PW-A")) == 0
    a = httpx.get(f"{root(base, 'clinic-a')}/workitems/{ITEM}").json()[0]
    assert a["00741000"]["Value"] == ["IN PROGRESS"] and a["00741204"]["Value"] == ["Set in A"]
    default = httpx.get(f"{root(base, 'Microsoft.Default')}/workitems/{ITEM}").json()[0]
    assert default["00741000"]["Value"] == ["SCHEDULED"]
    assert default["00741204"]["Value"] == ["Read the CT"]
    assert httpx.get(f"{root(base, 'clinic-a')}/workitems/{made}").status_code == 200
    assert httpx.get(f"{root(base, 'Microsoft.Default')}/workitems/{made}").status_code == 404
    with Ups(port, "RIS") as other:  # not mapped: the default partition's
        status, found = other.get(ITEM)
        assert status == 0x0000 and found.ProcedureStepState == "SCHEDULED"
        assert str(found.PatientName) == "Default^Step"
        assert other.get(made)[0] == 0xC307  # no such workitem here
