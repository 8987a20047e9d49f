"""QIDO-RS against the real app: every resource, matching kind, returned attribute and page rule."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.model import InstanceId
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import INDEXES, index_database
from tests.helpers import stow
from tests.synthetic import instance, uid

SR = "1.2.840.10008.5.1.4.1.1.88.11"
S1, S2, S3, S4 = uid(1), uid(2), uid(3), uid(4)

# label -> (study, series, sop, attributes); labels are study.series.instance numbers
DATASET = {
    "1.1.1": dict(InstanceNumber="1", AcquisitionDateTime="20200105101500+0100"),
    "1.1.2": dict(InstanceNumber="2", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]),
    "1.2.1": dict(Modality="SR", SOPClassUID=SR, SeriesNumber="2", InstanceNumber="1"),
    "2.1.1": dict(
        Modality="MR",
        InstanceNumber="1",
        AcquisitionDateTime="20210610230000",
        TimezoneOffsetFromUTC="-0500",
    ),
    "3.1.1": dict(SeriesNumber="10"),
    "3.2.1": dict(Modality="PT", SeriesNumber="11"),
    "4.1.1": dict(Modality="DX"),
}
STUDY_ATTRIBUTES = {
    "1": dict(
        PatientName="Doe^John",
        PatientID="P1",
        PatientBirthDate="19800101",
        PatientAge="040Y",
        StudyDate="20200105",
        StudyTime="101500",
        AccessionNumber="ACC-1",
        ReferringPhysicianName="House^Gregory",
        StudyDescription="CT Chest",
        StudyID="ID1",
    ),
    "2": dict(
        PatientName="Müller^Jürgen",
        PatientID="P2",
        PatientBirthDate="19750315",
        StudyDate="20210610",
        StudyTime="230000",
        AccessionNumber="ACC-2",
        ReferringPhysicianName="Doe^Jane",
        StudyDescription="MR Brain",
        StudyID="ID2",
    ),
    "3": dict(
        PatientName="O'Brien^Mary Ann",
        PatientID="p1",
        StudyDate="20191231",
        StudyTime="0800",
        AccessionNumber="ACC-3",
        StudyDescription="CT Abdomen",
    ),
    "4": dict(PatientName="Doe^Johnathan", PatientID="P4", StudyDescription="XR [left]"),
}
SERIES_ATTRIBUTES = {
    "1.1": dict(
        SeriesNumber="1",
        SeriesDescription="Chest axial",
        PerformedProcedureStepStartDate="20200105",
        PerformedProcedureStepStartTime="101000",
        ManufacturerModelName="Model X",
        RequestAttributesSequence=[
            {"ScheduledProcedureStepID": "SPS1", "RequestedProcedureID": "RP1"},
            {"ScheduledProcedureStepID": "SPS2", "RequestedProcedureID": "RP2"},
        ],
    ),
    "2.1": dict(
        SeriesNumber="1",
        ManufacturerModelName="Model Y",
        RequestAttributesSequence=[
            {"ScheduledProcedureStepID": "SPS1", "RequestedProcedureID": "RP9"}
        ],
    ),
}


def label_uids(label: str) -> tuple[str, str, str]:
    study, series, number = label.split(".")
    return uid(study), uid(study, series), uid(study, series, number)


def dataset_files() -> list[bytes]:
    files = []
    for label, attributes in DATASET.items():
        study, series, _ = label.split(".")
        merged = {
            **STUDY_ATTRIBUTES[study],
            **SERIES_ATTRIBUTES.get(f"{study}.{series}", {}),
            **attributes,
        }
        files.append(instance(*label_uids(label), **merged))
    return files


def make_client(tmp_path, **settings) -> TestClient:
    s = Settings(data_dir=str(tmp_path), index_url="sqlite://:memory:", blob_url="memory://")
    s = Settings(**{**s.__dict__, **settings})
    return TestClient(create_app(s, build_archive(s)))


@pytest.fixture(scope="module", params=INDEXES)
def qido(tmp_path_factory, request):
    with (
        index_database(request.param) as url,
        make_client(tmp_path_factory.mktemp("qido"), index_url=url) as c,
    ):
        assert stow(c, *dataset_files()).status_code == 200
        yield c


def labels(results: list[dict]) -> list[str]:
    """Results named like the dataset: '1' (study), '1.1' (series), '1.1.1' (instance)."""
    out = []
    by_uid = {}
    for label in DATASET:
        study, series, sop = label_uids(label)
        by_uid[sop] = label
        by_uid[series] = label.rsplit(".", 1)[0]
        by_uid[study] = label.split(".")[0]
    for result in results:
        for tag in ("00080018", "0020000E", "0020000D"):
            if tag in result:
                out.append(by_uid[result[tag]["Value"][0]])
                break
    return out


def search(client, url: str, status: int = 200):
    r = client.get(url)
    assert r.status_code == status, r.text
    return r


STUDY_MATCHES = [
    ("", ["1", "2", "3", "4"]),
    ("PatientID=P1", ["1"]),  # case-sensitive
    ("PatientID=p1", ["3"]),
    ("PatientID=P1\\P2", ["1", "2"]),
    ("PatientID=P*", ["1", "2", "4"]),
    ("PatientID=?1", ["1", "3"]),
    ("PatientID=", ["1", "2", "3", "4"]),
    ("PatientID=*", ["1", "2", "3", "4"]),
    ("patientid=P2", ["2"]),
    ("00100020=P2", ["2"]),
    ("PatientName=doe^john", ["1"]),
    ("PatientName=DOE*", ["1", "4"]),
    ("PatientName=muller^jurgen", ["2"]),
    ("PatientName=Müller*", ["2"]),
    ("PatientName=doe", []),
    ("PatientName=*mary*", ["3"]),
    ("PatientName=joh&fuzzymatching=true", ["1", "4"]),
    ("PatientName=ohn&fuzzymatching=true", []),
    ("PatientName=joh do&fuzzymatching=true", ["1", "4"]),
    ("PatientName=John Doe&fuzzymatching=true", ["1", "4"]),
    ("PatientName=mary o&fuzzymatching=true", ["3"]),
    ("PatientName=JÜRG&fuzzymatching=true", ["2"]),
    ("ReferringPhysicianName=doe*", ["2"]),
    ("ReferringPhysicianName=greg&fuzzymatching=true", ["1"]),
    ("PatientBirthDate=19800101", ["1"]),
    ("PatientBirthDate=-19790101", ["2"]),
    ("StudyDate=20200105", ["1"]),
    ("StudyDate=20200101-20211231", ["1", "2"]),
    ("StudyDate=-20200105", ["1", "3"]),
    ("StudyDate=20200106-", ["2"]),
    ("StudyDate=20200105\\20191231", ["1", "3"]),
    ("StudyTime=10", ["1"]),
    ("StudyTime=0800-1200", ["1", "3"]),
    ("StudyTime=2200-", ["2"]),
    ("AccessionNumber=ACC-2", ["2"]),
    ("AccessionNumber=ACC-?", ["1", "2", "3"]),
    ("StudyDescription=CT*", ["1", "3"]),
    ("StudyDescription=XR [*", ["4"]),
    ("StudyID=ID2", ["2"]),
    (f"StudyInstanceUID={S1}", ["1"]),
    (f"StudyInstanceUID={S1},{S2}", ["1", "2"]),
    (f"StudyInstanceUID={S3}\\{S4}", ["3", "4"]),
    ("ModalitiesInStudy=PT", ["3"]),
    ("ModalitiesInStudy=CT", ["1", "3"]),
    ("ModalitiesInStudy=MR,DX", ["2", "4"]),
    ("ModalitiesInStudy=S?", ["1"]),
    ("PatientName=doe*&StudyDate=20200101-", ["1"]),
    ("PatientName=doe*&StudyDate=20200101-&ModalitiesInStudy=MR", []),
]


@pytest.mark.parametrize("params,expected", STUDY_MATCHES)
def test_study_matching(qido, params, expected):
    for version in (1, 2):
        assert labels(search(qido, f"/v{version}/studies?{params}").json()) == expected


SERIES_MATCHES = [
    ("Modality=CT", ["1.1", "3.1"]),
    ("Modality=CT,PT", ["1.1", "3.1", "3.2"]),
    ("SeriesNumber=1", ["1.1", "2.1"]),
    ("SeriesNumber=10\\11", ["3.1", "3.2"]),
    ("PerformedProcedureStepStartDate=20200105", ["1.1"]),
    ("PerformedProcedureStepStartTime=1000-1030", ["1.1"]),
    ("ManufacturerModelName=Model*", ["1.1", "2.1"]),
    (f"SeriesInstanceUID={uid(3, 2)}", ["3.2"]),
    ("RequestAttributesSequence.ScheduledProcedureStepID=SPS1", ["1.1", "2.1"]),
    ("RequestAttributesSequence.RequestedProcedureID=RP?", ["1.1", "2.1"]),
    (
        "RequestAttributesSequence.ScheduledProcedureStepID=SPS1"
        "&RequestAttributesSequence.RequestedProcedureID=RP2",
        [],  # both keys must match within one item
    ),
    (
        "RequestAttributesSequence.ScheduledProcedureStepID=SPS2"
        "&RequestAttributesSequence.RequestedProcedureID=RP2",
        ["1.1"],
    ),
    ("00400275.00401001=RP9", ["2.1"]),
    ("PatientID=P1", ["1.1", "1.2"]),  # a study key on a series resource
    ("ModalitiesInStudy=MR", ["2.1"]),
]


@pytest.mark.parametrize("params,expected", SERIES_MATCHES)
def test_series_matching(qido, params, expected):
    assert labels(search(qido, f"/v2/series?{params}").json()) == expected


INSTANCE_MATCHES = [
    (f"SOPClassUID={SR}", ["1.2.1"]),
    ("InstanceNumber=2", ["1.1.2"]),
    (f"SOPInstanceUID={uid(1, 1, 2)},{uid(4, 1, 1)}", ["1.1.2", "4.1.1"]),
    ("AcquisitionDateTime=20200105091500", ["1.1.1"]),  # 10:15 at +01:00 is 09:15 UTC
    ("AcquisitionDateTime=20200105101500+0100", ["1.1.1"]),
    ("AcquisitionDateTime=20210611-", ["2.1.1"]),  # 23:00 at -05:00 is 04:00 UTC next day
    ("AcquisitionDateTime=2021", ["2.1.1"]),
    ("AcquisitionDateTime=202001050900+0000-202001051000+0000", ["1.1.1"]),
    ("Modality=SR", ["1.2.1"]),
    ("PatientName=muller*", ["2.1.1"]),
    ("SeriesNumber=1&InstanceNumber=1", ["1.1.1", "2.1.1"]),
]


@pytest.mark.parametrize("params,expected", INSTANCE_MATCHES)
def test_instance_matching(qido, params, expected):
    assert labels(search(qido, f"/v2/instances?{params}").json()) == expected


RESOURCES = [
    (f"/studies/{S1}/series", ["1.1", "1.2"]),
    (f"/studies/{S1}/series?Modality=SR", ["1.2"]),
    (f"/studies/{S1}/series?PatientID=P2", []),
    (f"/studies/{S1}/instances", ["1.1.1", "1.1.2", "1.2.1"]),
    (f"/studies/{S1}/instances?Modality=CT", ["1.1.1", "1.1.2"]),
    (f"/studies/{S1}/series/{uid(1, 1)}/instances", ["1.1.1", "1.1.2"]),
    (f"/studies/{S1}/series/{uid(1, 1)}/instances?InstanceNumber=2", ["1.1.2"]),
    (f"/studies/{S2}/series/{uid(1, 1)}/instances", []),
    (f"/studies/{uid(99)}/series", []),
    ("/series", ["1.1", "1.2", "2.1", "3.1", "3.2", "4.1"]),
    ("/instances", list(DATASET)),
]


@pytest.mark.parametrize("path,expected", RESOURCES)
def test_every_resource(qido, path, expected):
    assert labels(search(qido, "/v2" + path).json()) == expected


def tags(result: dict) -> set[str]:
    return set(result)


def value(result: dict, tag: str):
    return result[tag]["Value"]


def test_study_results_carry_the_defaults_and_computed_attributes(qido):
    (study,) = search(qido, f"/v2/studies?StudyInstanceUID={S1}").json()
    assert list(study) == sorted(study)  # tag order
    for tag in (
        "00080020",
        "00080030",
        "00080050",
        "00080056",
        "00080061",
        "00080090",
        "00081030",
        "00081190",
        "00100010",
        "00100020",
        "00100030",
        "0020000D",
        "00200010",
        "00201206",
        "00201208",
    ):
        assert tag in study, tag
    assert value(study, "00080061") == ["CT", "SR"]
    assert value(study, "00201206") == [2] and value(study, "00201208") == [3]
    assert value(study, "00081190")[0] == f"http://testserver/v2/studies/{S1}"
    assert value(study, "00080056") == ["ONLINE"]
    assert value(study, "00100010") == [{"Alphabetic": "Doe^John"}]
    assert "00080060" not in study and "00280010" not in study and "00101010" not in study


def test_lower_levels_carry_upper_defaults_unless_the_url_fixes_them(qido):
    (series,) = search(qido, f"/v2/series?SeriesInstanceUID={uid(1, 1)}").json()
    assert value(series, "00100010") == [{"Alphabetic": "Doe^John"}]
    assert value(series, "00201209") == [2] and value(series, "00200011") == [1]
    assert value(series, "0008103E") == ["Chest axial"]
    assert value(series, "00081090") == ["Model X"]
    assert len(value(series, "00400275")) == 2
    scoped = search(qido, f"/v2/studies/{S1}/series").json()[0]
    assert "00100010" not in scoped and value(scoped, "0020000D") == [S1]
    assert value(scoped, "00081190")[0].endswith(f"/studies/{S1}/series/{uid(1, 1)}")
    (inst,) = search(qido, f"/v2/instances?SOPInstanceUID={uid(1, 1, 1)}").json()
    for tag in ("00100010", "00080060", "00080016", "00200013", "00280010", "00280100"):
        assert tag in inst, tag
    scoped = search(qido, f"/v2/studies/{S1}/series/{uid(1, 1)}/instances").json()[0]
    assert "00100010" not in scoped and "00080060" not in scoped
    assert value(scoped, "0020000E") == [uid(1, 1)] and value(scoped, "00200013") == [1]
    study_instances = search(qido, f"/v2/studies/{S1}/instances").json()[0]
    assert "00080060" in study_instances and "00100010" not in study_instances


def test_includefield(qido):
    url = f"/v2/studies?StudyInstanceUID={S1}&includefield="
    study = search(qido, url + "PatientAge,00080060&includefield=photometricinterpretation")
    study = study.json()[0]
    assert value(study, "00101010") == ["040Y"]  # from the study document
    assert value(study, "00080060") == ["SR"]  # from the latest series
    assert value(study, "00280004") == ["MONOCHROME2"]  # from the latest instance's metadata
    everything = search(qido, url + "all").json()[0]
    assert value(everything, "00101010") == ["040Y"]
    assert value(everything, "00080062") == sorted([SR, "1.2.840.10008.5.1.4.1.1.2"])
    assert "00080060" not in everything and "00280010" not in everything
    inst = search(qido, f"/v2/instances?SOPInstanceUID={uid(1, 1, 2)}&includefield=all").json()[0]
    assert value(inst, "00080008") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert "00280004" in inst and value(inst, "00080056") == ["ONLINE"]
    # a matching key is returned even when not a default
    acquired = search(qido, "/v2/instances?AcquisitionDateTime=").json()
    assert {r.get("0008002A", {}).get("Value", [None])[0] for r in acquired} == {
        None,
        "20200105101500+0100",
        "20210610230000",
    }


def test_paging_is_stable_while_new_data_arrives(tmp_path):
    with make_client(tmp_path) as c:
        assert stow(c, *dataset_files()).status_code == 200
        first = labels(search(c, "/v2/studies?limit=2").json())
        late = instance(uid(5), uid(5, 1), uid(5, 1, 1), PatientName="Late^Comer")
        assert stow(c, late).status_code == 200
        rest = labels(search(c, "/v2/studies?limit=2&offset=2").json())
        last = search(c, "/v2/studies?limit=2&offset=4").json()
        assert first + rest == ["1", "2", "3", "4"]
        assert len(last) == 1 and value(last[0], "0020000D") == [uid(5)]
        assert search(c, "/v2/studies?offset=50").json() == []


def test_order_and_count(qido):
    assert labels(search(qido, "/v2/studies?orderby=-StudyDate").json()) == ["2", "1", "3", "4"]
    assert labels(search(qido, "/v2/studies?orderby=StudyDate").json()) == ["4", "3", "1", "2"]
    assert labels(search(qido, "/v2/series?orderby=-SeriesNumber,PatientID").json()) == [
        "3.2",
        "3.1",
        "1.2",
        "1.1",
        "2.1",
        "4.1",
    ]
    by_time = search(qido, "/v2/studies?orderby=-StudyDate&limit=1&offset=1").json()
    assert labels(by_time) == ["1"]
    assert qido.get("/v2/studies/count?PatientName=doe*").json() == {"count": 2}
    assert qido.get("/v2/series/count").json() == {"count": 6}
    assert qido.get(f"/v2/studies/{S1}/instances/count?Modality=CT").json() == {"count": 2}
    assert qido.get(f"/v2/studies/{S1}/series/{uid(1, 1)}/instances/count").json() == {"count": 2}
    assert qido.get("/v2/studies/count?StudyDate=bad").status_code == 400


def test_warnings_for_ignored_keys_and_capped_pages(qido, tmp_path):
    r = search(qido, "/v2/studies?foo=1&Modality=CT&SeriesDescription=x&PatientID=P1")
    assert labels(r.json()) == ["1"]
    warning = r.headers["warning"]
    assert warning.startswith("299 ") and "foo" in warning and "Modality" in warning
    assert "SeriesDescription" in warning
    assert "warning" not in search(qido, "/v2/studies?PatientID=P1").headers
    assert "warning" not in search(qido, "/v2/studies?limit=2").headers  # the client chose
    with make_client(tmp_path, qido_max_limit=2, qido_strict=True) as c:
        assert stow(c, *dataset_files()).status_code == 200
        r = search(c, "/v2/studies?limit=10")
        assert len(r.json()) == 2 and "exceeded the maximum" in r.headers["warning"]
        r = search(c, "/v2/studies?foo=1", status=400)
        assert "foo" in r.json()["detail"]


@pytest.mark.parametrize(
    "params,named",
    [
        ("StudyDate=20201301", "StudyDate"),
        ("StudyDate=20210101-20200101", "StudyDate"),
        ("StudyTime=25", "StudyTime"),
        ("SeriesNumber=one", "SeriesNumber"),
        ("StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("fuzzymatching=yes", "fuzzymatching"),
        ("orderby=Rows", "orderby"),
        ("PatientID=a&PatientID=b", "PatientID"),
        ("PatientID=" + "\\".join(f"P{i}" for i in range(501)), "PatientID"),
        ("SOPInstanceUID=" + ",".join(f"1.{i}" for i in range(501)), "SOPInstanceUID"),
        (
            "fuzzymatching=true&PatientName=" + " ".join("ab" * i for i in range(1, 18)),
            "PatientName",
        ),
    ],
)
def test_bad_values_get_400_naming_the_parameter(qido, params, named):
    r = search(qido, f"/v2/instances?{params}", status=400)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert named in r.json()["detail"]


def test_long_value_lists_within_the_bound_work(qido):
    uids = ",".join([*(f"1.2.{i}" for i in range(498)), uid(1, 1, 2), uid(4, 1, 1)])
    assert labels(search(qido, f"/v2/instances?SOPInstanceUID={uids}").json()) == [
        "1.1.2",
        "4.1.1",
    ]
    words = " ".join(["jo", "do", *("d" * 16)][:16])
    assert labels(search(qido, f"/v2/studies?fuzzymatching=true&PatientName={words}").json()) == [
        "1",
        "4",
    ]


def test_media_types_and_bad_urls(qido):
    assert (
        qido.get("/v2/studies", headers={"Accept": "application/json"})
        .headers["content-type"]
        .startswith("application/json")
    )
    assert qido.get("/v2/studies").headers["content-type"].startswith("application/dicom+json")
    assert qido.get("/v2/studies").headers["vary"] == "Accept"  # the media type is negotiated
    accept = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    assert qido.get("/v2/studies", headers=accept).status_code == 406
    assert qido.get("/v2/studies/not-a-uid/series").status_code == 400


def test_search_follows_store_and_delete(tmp_path):
    with make_client(tmp_path) as c:
        assert stow(c, *dataset_files()).status_code == 200
        # a later instance without StudyDate keeps the study's date; a new description wins
        later = instance(S1, uid(1, 3), uid(1, 3, 1), PatientID="P1", StudyDescription="CT New")
        assert stow(c, later).status_code == 200
        (study,) = search(c, f"/v2/studies?StudyInstanceUID={S1}").json()
        assert value(study, "00080020") == ["20200105"]
        assert value(study, "00081030") == ["CT New"]
        assert value(study, "00201206") == [3] and value(study, "00201208") == [4]
        assert labels(search(c, "/v2/studies?StudyDescription=CT Chest").json()) == []
        assert c.delete(f"/v2/studies/{S1}/series/{uid(1, 2)}").status_code == 204
        (study,) = search(c, f"/v2/studies?StudyInstanceUID={S1}").json()
        assert value(study, "00201206") == [2] and value(study, "00201208") == [3]
        assert value(study, "00080061") == ["CT"]
        assert labels(search(c, "/v2/studies?ModalitiesInStudy=SR").json()) == []
        assert c.delete(f"/v2/studies/{S1}").status_code == 204
        assert labels(search(c, "/v2/studies").json()) == ["2", "3", "4"]
        assert search(c, f"/v2/studies/{S1}/instances").json() == []


def test_an_unfinished_store_is_invisible(tmp_path):
    with make_client(tmp_path) as c:
        index = c.app.state.archive.index
        c.portal.call(
            index.reserve_versions, InstanceId(uid(7), uid(7, 1), uid(7, 1, 1)).partition, 3
        )
        assert search(c, "/v2/studies").json() == []
        assert search(c, "/v2/series").json() == []
        assert search(c, "/v2/instances").json() == []
        assert c.get("/v2/studies/count").json() == {"count": 0}
