"""End to end: QIDO-RS on `dicomhub serve` over a real socket, with dicomweb-client and with the
exact query shapes OHIF Viewer sends for its study list and series list."""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client import DICOMwebClient

from tests.conftest import BACKENDS, backend_settings, running_server
from tests.dicomfiles import read
from tests.synthetic import uid
from tests.test_qido import DATASET, S1, S2, S3, dataset_files, labels


@pytest.fixture(scope="module", params=BACKENDS)
def served(tmp_path_factory, request):
    data = tmp_path_factory.mktemp("qido-served")
    with (
        backend_settings(request.param, request) as backend,
        running_server(data, **backend) as (url, _),
    ):
        dw = DICOMwebClient(url + "/v2")
        dw.store_instances([read(f) for f in dataset_files()])
        yield url, dw


def test_search_for_studies(served):
    _, dw = served
    assert labels(dw.search_for_studies()) == ["1", "2", "3", "4"]
    assert labels(dw.search_for_studies(search_filters={"PatientName": "doe*"})) == ["1", "4"]
    fuzzy = dw.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "joh do"})
    assert labels(fuzzy) == ["1", "4"]
    dated = dw.search_for_studies(search_filters={"StudyDate": "20200101-20211231"})
    assert labels(dated) == ["1", "2"]
    page = dw.search_for_studies(limit=2, offset=1)
    assert labels(page) == ["2", "3"]
    (study,) = dw.search_for_studies(
        search_filters={"StudyInstanceUID": S1}, fields=["PatientAge", "00080062"]
    )
    assert study["00101010"]["Value"] == ["040Y"] and len(study["00080062"]["Value"]) == 2
    assert study["00201208"]["Value"] == [3]
    assert dw.search_for_studies(search_filters={"PatientID": "nobody"}) == []


def test_search_for_series_and_instances(served):
    _, dw = served
    assert labels(dw.search_for_series(study_instance_uid=S1)) == ["1.1", "1.2"]
    assert labels(dw.search_for_series(search_filters={"Modality": "CT"})) == ["1.1", "3.1"]
    series = dw.search_for_series(
        search_filters={"RequestAttributesSequence.ScheduledProcedureStepID": "SPS1"}
    )
    assert labels(series) == ["1.1", "2.1"]
    found = dw.search_for_instances(study_instance_uid=S1, series_instance_uid=uid(1, 1))
    assert labels(found) == ["1.1.1", "1.1.2"]
    assert labels(dw.search_for_instances(study_instance_uid=S2)) == ["2.1.1"]
    everything = dw.search_for_instances()
    assert labels(everything) == list(DATASET)
    (one,) = dw.search_for_instances(search_filters={"InstanceNumber": "2"}, get_remaining=True)
    assert one["00080018"]["Value"] == [uid(1, 1, 2)]
    # each result's RetrieveURL is a working WADO-RS URL
    metadata = httpx.get(one["00081190"]["Value"][0] + "/metadata").json()
    assert metadata[0]["00080018"]["Value"] == [uid(1, 1, 2)]


def test_ohif_study_list(served):
    url, _ = served
    include = "00081030,00080060,00080090,00100030"
    r = httpx.get(
        url + "/v2/studies",
        params={
            "PatientName": "*doe*",
            "00100020": "*P*",
            "StudyDescription": "*CT*",
            "limit": "101",
            "offset": "0",
            "fuzzymatching": "false",
            "includefield": include,
            "StudyDate": "19700102-20261121",
        },
    )
    assert r.status_code == 200 and "warning" not in r.headers
    (study,) = r.json()
    assert labels([study]) == ["1"]
    # what OHIF's processResults reads
    for tag in (
        "0020000D",
        "00080020",
        "00080030",
        "00080050",
        "00100020",
        "00100010",
        "00100030",
        "00201208",
        "00081030",
        "00080061",
        "00080090",
        "00080060",
    ):
        assert tag in study, tag
    r = httpx.get(
        url + "/v2/studies",
        params={"ModalitiesInStudy": "CT", "limit": "101", "offset": "0", "includefield": include},
    )
    assert labels(r.json()) == ["1", "3"]
    r = httpx.get(url + "/v2/studies", params={"StudyInstanceUID": f"{S1}\\{S3}"})
    assert labels(r.json()) == ["1", "3"]


def test_ohif_series_list(served):
    url, _ = served
    r = httpx.get(f"{url}/v2/studies/{S1}/series", params={"includefield": "0008103E,00080021"})
    assert r.status_code == 200
    first, second = r.json()
    for tag in ("0020000D", "0020000E", "00080060", "00200011", "00201209"):
        assert tag in first, tag
    assert first["0008103E"]["Value"] == ["Chest axial"]
    assert second["00080060"]["Value"] == ["SR"]
