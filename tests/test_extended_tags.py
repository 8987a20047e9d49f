"""Extended query tags on SQLite and PostgreSQL: added to an index that already holds instances,
reindexed by a background operation, then searched with every matching kind of their VR;
private tags; values that fail validation listed as errors while the tag stays usable; the
PATCH and DELETE lifecycle; invalid requests."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pydicom
import pytest

from dicomhub.model import Operation
from dicomhub.settings import Settings
from dicomhub.workers.background import handlers
from dicomhub.workers.jobs import JobRunner
from tests.helpers import failures, stow
from tests.synthetic import instance, uid

STUDY = [uid(80, n) for n in range(4)]


def with_private(data: bytes, creator: str, value: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    block = ds.private_block(0x0009, creator, create=True)
    block.add_new(0x01, "LO", value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset() -> list[bytes]:
    """Four studies, one instance each, with the attributes the tags below index."""
    attrs = [
        dict(
            PatientWeight="70.5",
            BodyPartExamined="CHEST",
            OperatorsName="Smith^Anna",
            AcquisitionDate="20200105",
            PatientAge="045Y",
            ProtocolName="Thorax routine",
        ),
        dict(
            PatientWeight="82",
            BodyPartExamined="HEAD",
            OperatorsName="Jones^Bob",
            AcquisitionDate="20200301",
            PatientAge="060Y",
            ProtocolName="Head trauma",
        ),
        dict(
            PatientWeight="55.25",
            BodyPartExamined="CHEST",
            OperatorsName="Müller^Anne",
            AcquisitionDate="20210710",
            PatientAge="030Y",
            ProtocolName="Thorax low dose",
        ),
        dict(
            BodyPartExamined="ABDOMEN",
            OperatorsName="Smith^Carl",
            AcquisitionDate="20211231",
            PatientAge="045Y",
            ProtocolName="Abdomen",
        ),
    ]
    files = []
    for n, a in enumerate(attrs):
        data = instance(STUDY[n], uid(80, n, 1), uid(80, n, 1, 1), **a)
        files.append(with_private(data, "ACME 1.0", f"SCANNER-{n % 2}"))
    return files


TAGS = [
    {"path": "PatientWeight", "level": "Study"},  # DS
    {"path": "00180015", "vr": "CS", "level": "Series"},  # BodyPartExamined
    {"path": "OperatorsName", "level": "Series"},  # PN
    {"path": "AcquisitionDate", "level": "Instance"},  # DA
    {"path": "PatientAge", "level": "study"},  # AS
    {"path": "ProtocolName", "level": "Series"},  # LO
    {"path": "00091001", "vr": "LO", "privateCreator": "ACME 1.0", "level": "Series"},
]


def run_jobs(client) -> None:
    archive = client.app.state.archive
    runner = JobRunner(archive.index, handlers(archive, Settings().dimse))
    while client.portal.call(runner.run_once):
        pass


def studies(client, version: int = 2, **params) -> list[str]:
    r = client.get(f"/v{version}/studies", params=params)
    assert r.status_code == 200, r.text
    return sorted(s["0020000D"]["Value"][0] for s in r.json())


@pytest.fixture
def tagged(client):
    assert stow(client, *dataset()).status_code == 200
    r = client.post("/v2/extendedquerytags", json=TAGS)
    assert r.status_code == 202, r.text
    operation = r.json()["id"]
    assert r.json()["href"].endswith(f"/v2/operations/{operation}")
    adding = client.get("/v2/extendedquerytags/PatientWeight").json()
    assert adding["status"] == "Adding" and adding["operation"]["id"] == operation
    assert client.get(f"/v2/operations/{operation}").status_code == 202
    run_jobs(client)
    done = client.get(f"/v2/operations/{operation}")
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert done.json()["results"] == {"indexedInstances": 4}
    return client


def test_listing_and_one_tag(tagged):
    listed = tagged.get("/v2/extendedquerytags").json()
    assert [t["path"] for t in listed] == [
        "00101030",
        "00180015",
        "00081070",
        "00080022",
        "00101010",
        "00181030",
        "00091001",
    ]
    assert {t["status"] for t in listed} == {"Ready"} and "operation" not in listed[0]
    weight = tagged.get("/v1/extendedquerytags/00101030").json()
    assert weight == tagged.get("/v1/extendedquerytags/patientweight").json()
    assert (weight["vr"], weight["level"], weight["queryStatus"]) == ("DS", "Study", "Enabled")
    assert weight["errors"]["count"] == 0
    private = tagged.get("/v2/extendedquerytags/00091001").json()
    assert private["privateCreator"] == "ACME 1.0"
    assert len(tagged.get("/v2/extendedquerytags", params={"offset": 5, "limit": 1}).json()) == 1
    assert tagged.get("/v2/extendedquerytags/PatientSex").status_code == 404
    assert tagged.get("/v2/extendedquerytags", params={"limit": 201}).status_code == 400


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"PatientWeight": "82"}, [1]),  # number: exact
        ({"PatientWeight": "55-71"}, [0, 2]),  # number: range
        ({"PatientWeight": "70.5\\82"}, [0, 1]),  # number: list
        ({"BodyPartExamined": "CHEST"}, [0, 2]),  # CS exact (a series-level tag)
        ({"BodyPartExamined": "CHEST\\HEAD"}, [0, 1, 2]),  # list
        ({"BodyPartExamined": "AB*"}, [3]),  # wildcard
        ({"00180015": "H?AD"}, [1]),  # by tag
        ({"ProtocolName": "Thorax*"}, [0, 2]),
        ({"OperatorsName": "smith*"}, [0, 3]),  # PN: case-insensitive wildcard
        ({"OperatorsName": "mueller^anne"}, []),
        ({"OperatorsName": "muller^anne"}, [2]),  # accents folded
        ({"OperatorsName": "ann", "fuzzymatching": "true"}, [0, 2]),  # word prefix
        ({"OperatorsName": "smi car", "fuzzymatching": "true"}, [3]),  # every word
        ({"AcquisitionDate": "20200101-20201231"}, [0, 1]),  # DA range (instance level)
        ({"AcquisitionDate": "20211231"}, [3]),
        ({"PatientAge": "045Y"}, [0, 3]),
        ({"00091001": "SCANNER-1"}, [1, 3]),  # private
        ({"PatientWeight": "60-", "BodyPartExamined": "CHEST"}, [0]),  # with another key
    ],
)
def test_searching_by_extended_tags(tagged, params, expected):
    """Each key is searched at its tag's level (as built-in keys: a study search does not
    match series attributes); results are named by their study."""
    levels = {"AcquisitionDate": "instances", "PatientWeight": "studies", "PatientAge": "studies"}
    resource = min(
        (levels.get(k, "series") for k in params if k != "fuzzymatching"),
        key=["instances", "series", "studies"].index,
    )
    r = tagged.get(f"/v2/{resource}", params={**params, "includefield": "StudyInstanceUID"})
    assert r.status_code == 200, r.text
    assert "Warning" not in r.headers  # every key was used
    assert sorted(x["0020000D"]["Value"][0] for x in r.json()) == [STUDY[n] for n in expected]


def test_series_search_and_count(tagged):
    r = tagged.get("/v2/series", params={"BodyPartExamined": "CHEST", "includefield": "all"})
    assert sorted(s["0020000E"]["Value"][0] for s in r.json()) == [uid(80, 0, 1), uid(80, 2, 1)]
    count = tagged.get("/v2/series/count", params={"ProtocolName": "Thorax*"}).json()
    assert count == {"count": 2}


def test_new_instances_are_indexed_on_arrival(tagged):
    data = instance(
        uid(80, 9), uid(80, 9, 1), uid(80, 9, 1, 1), PatientWeight="99.5", BodyPartExamined="KNEE"
    )
    assert stow(tagged, data).status_code == 200
    assert studies(tagged, PatientWeight="99.5") == [uid(80, 9)]
    found = tagged.get("/v2/series", params={"BodyPartExamined": "KNEE"}).json()
    assert [s["0020000E"]["Value"][0] for s in found] == [uid(80, 9, 1)]


def test_a_newer_instance_replaces_a_study_value(tagged):
    data = instance(STUDY[0], uid(80, 0, 2), uid(80, 0, 2, 1), PatientWeight="71")
    assert stow(tagged, data).status_code == 200
    assert studies(tagged, PatientWeight="70.5") == []
    assert studies(tagged, PatientWeight="71") == [STUDY[0]]
    # a later instance without the attribute keeps the study's value
    assert stow(tagged, instance(STUDY[0], uid(80, 0, 3), uid(80, 0, 3, 1))).status_code == 200
    assert studies(tagged, PatientWeight="71") == [STUDY[0]]


def test_an_upsert_indexes_the_new_version(tagged):
    """PUT replacing an instance: its extended query tag values are the new version's at every
    level (the replaced version's instance values go with its row)."""
    study, series, sop = uid(80, 8), uid(80, 8, 1), uid(80, 8, 1, 1)

    def put(**attributes) -> None:
        data = instance(study, series, sop, **attributes)
        r = tagged.put("/v2/studies", content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text

    def found(level: str, **params) -> int:
        return len(tagged.get(f"/v2/{level}", params=params).json())

    put(PatientWeight="99.5", BodyPartExamined="KNEE", AcquisitionDate="20200101")
    assert studies(tagged, PatientWeight="99.5") == [study]
    put(PatientWeight="88", BodyPartExamined="HAND", AcquisitionDate="20210101")
    assert studies(tagged, PatientWeight="99.5") == [] and studies(tagged, PatientWeight="88") == [
        study
    ]
    assert found("series", BodyPartExamined="KNEE") == 0
    assert found("series", BodyPartExamined="HAND") == 1
    assert found("instances", AcquisitionDate="20200101") == 0
    assert found("instances", AcquisitionDate="20210101") == 1


def test_invalid_values_are_errors_and_the_tag_stays_usable(tagged):
    # CS allows upper case only; the store keeps the value, the tag's index refuses it
    bad = instance(uid(81), uid(81, 1), uid(81, 1, 1), BodyPartExamined="chest")
    assert stow(tagged, bad).status_code in (200, 202)
    tag = tagged.get("/v2/extendedquerytags/BodyPartExamined").json()
    assert tag["errors"]["count"] == 1 and tag["status"] == "Ready"
    errors = tagged.get("/v2/extendedquerytags/BodyPartExamined/errors").json()
    assert [(e["sopInstanceUid"], e["studyInstanceUid"]) for e in errors] == [
        (uid(81, 1, 1), uid(81))
    ]
    assert "chest" in errors[0]["errorMessage"] and errors[0]["createdTime"].endswith("Z")
    r = tagged.get("/v2/series", params={"BodyPartExamined": "CHEST"})
    assert r.headers["erroneous-dicom-attributes"] == "BodyPartExamined"
    assert sorted(s["0020000E"]["Value"][0] for s in r.json()) == [uid(80, 0, 1), uid(80, 2, 1)]
    assert (
        "erroneous-dicom-attributes"
        not in tagged.get("/v2/studies", params={"PatientWeight": "82"}).headers
    )
    # deleting the instance removes its error
    assert tagged.delete(f"/v2/studies/{uid(81)}").status_code == 204
    assert tagged.get("/v2/extendedquerytags/BodyPartExamined").json()["errors"]["count"] == 0


def test_disable_enable_and_delete(tagged):
    r = tagged.patch("/v2/extendedquerytags/PatientWeight", json={"QueryStatus": "Disabled"})
    assert r.status_code == 200 and r.json()["queryStatus"] == "Disabled"
    r = tagged.get("/v2/studies", params={"PatientWeight": "82"})
    assert len(r.json()) == 5 - 1 and "PatientWeight" in r.headers["Warning"]  # ignored
    r = tagged.patch("/v2/extendedquerytags/PatientWeight", json={"queryStatus": "enabled"})
    assert r.json()["queryStatus"] == "Enabled"
    assert studies(tagged, PatientWeight="82") == [STUDY[1]]
    assert tagged.patch("/v2/extendedquerytags/PatientWeight", json={"x": 1}).status_code == 400
    assert tagged.delete("/v2/extendedquerytags/PatientWeight").status_code == 204
    assert tagged.get("/v2/extendedquerytags/PatientWeight").status_code == 404
    assert tagged.delete("/v2/extendedquerytags/PatientWeight").status_code == 404
    assert "Warning" in tagged.get("/v2/studies", params={"PatientWeight": "82"}).headers
    # added again: indexed anew
    assert tagged.post("/v2/extendedquerytags", json=[TAGS[0]]).status_code == 202
    run_jobs(tagged)
    assert studies(tagged, PatientWeight="82") == [STUDY[1]]


@pytest.mark.parametrize(
    "body,status",
    [
        ({"path": "PatientWeight", "level": "Study"}, 400),  # not an array
        ([], 400),
        ([{"level": "Study"}], 400),  # no path
        ([{"path": "NoSuchKeyword", "level": "Study"}], 400),
        ([{"path": "PatientID", "level": "Study"}], 400),  # a built-in key
        ([{"path": "PatientWeight", "level": "Patient"}], 400),
        ([{"path": "PatientWeight", "vr": "LO", "level": "Study"}], 400),  # wrong VR
        ([{"path": "PixelData", "level": "Instance"}], 400),  # VR not indexable
        ([{"path": "00091001", "level": "Series", "privateCreator": "X"}], 400),  # no VR
        ([{"path": "00091001", "vr": "LO", "level": "Series"}], 400),  # no creator
        ([{"path": "00090010", "vr": "LO", "privateCreator": "X", "level": "Series"}], 400),
        ([{"path": "PatientWeight", "privateCreator": "X", "level": "Study"}], 400),
        (
            [{"path": "ReferencedImageSequence.ReferencedSOPInstanceUID.X", "level": "Instance"}],
            400,
        ),
        ([{"path": "PatientSex", "level": "Study"}, {"path": "00100040", "level": "Study"}], 400),
    ],
)
def test_invalid_requests(client, body, status):
    r = client.post("/v2/extendedquerytags", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get("/v2/extendedquerytags").json() == []  # nothing was added


def test_conflicts_and_the_maximum(client, file_client):
    assert client.post("/v2/extendedquerytags", json=[TAGS[0]]).status_code == 202
    r = client.post("/v2/extendedquerytags", json=[TAGS[1], TAGS[0]])
    assert r.status_code == 409
    assert len(client.get("/v2/extendedquerytags").json()) == 1  # all or nothing
    assert client.post("/v2/extendedquerytags", content=b"{not json").status_code == 400
    with file_client(extended_query_tag_max=2) as small:
        assert small.post("/v2/extendedquerytags", json=TAGS[:2]).status_code == 202
        assert small.post("/v2/extendedquerytags", json=[TAGS[2]]).status_code == 400


def test_reindex_records_the_errors_of_instances_stored_before(client):
    bad = instance(uid(82), uid(82, 1), uid(82, 1, 1), BodyPartExamined="chest")
    good = instance(uid(83), uid(83, 1), uid(83, 1, 1), BodyPartExamined="HAND")
    assert stow(client, bad, good).status_code in (200, 202)
    assert client.post("/v2/extendedquerytags", json=[TAGS[1]]).status_code == 202
    run_jobs(client)
    tag = client.get("/v2/extendedquerytags/BodyPartExamined").json()
    assert (tag["status"], tag["errors"]["count"]) == ("Ready", 1)
    errors = client.get("/v2/extendedquerytags/BodyPartExamined/errors").json()
    assert [e["sopInstanceUid"] for e in errors] == [uid(82, 1, 1)]
    found = client.get("/v2/series", params={"BodyPartExamined": "HAND"}).json()
    assert [s["0020000E"]["Value"][0] for s in found] == [uid(83, 1)]


def test_includefield_returns_extended_tags(tagged):
    r = tagged.get("/v2/studies", params={"PatientWeight": "82", "includefield": "PatientAge"})
    (study,) = r.json()
    assert study["00101030"]["Value"] == [82.0] and study["00101010"]["Value"] == ["060Y"]
    (study,) = tagged.get(
        "/v2/studies", params={"PatientWeight": "82", "includefield": "all"}
    ).json()
    assert study["00101010"]["Value"] == ["060Y"]  # every tag of its level with "all"
    assert "00180015" not in study  # a series-level tag is not a study's attribute
    (series,) = tagged.get(
        "/v2/series", params={"BodyPartExamined": "HEAD", "includefield": "00091001"}
    ).json()
    assert series["00180015"]["Value"] == ["HEAD"] and series["00091001"]["Value"] == ["SCANNER-1"]
    plain = tagged.get("/v2/studies", params={"PatientWeight": "82"}).json()[0]
    assert "00101010" not in plain  # only when asked for


def kill_runner_midway(
    client,
    archive,
    operation: str,
    unfinished: Callable[[], bool],
    saved: Callable[[Operation], bool] = lambda op: op.percent_complete > 0,
) -> None:
    """A job runner (lease 0.6 s) takes the next job and dies once the operation as saved
    passes ``saved`` (by default: its progress is past 0) while ``unfinished()`` (a point in
    its work: not a time, which a loaded machine stretches)."""
    first = JobRunner(archive.index, handlers(archive, Settings().dimse), lease=0.6)

    async def killed() -> None:
        task = asyncio.create_task(first.run_once())
        async with asyncio.timeout(60):
            while not task.done():
                if saved(await archive.operations.get(operation)) and unfinished():
                    break
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    client.portal.call(killed)


def test_a_reindex_cut_off_with_its_worker_completes_after(client, monkeypatch, clock):
    from dicomhub.archive import extended_tags as service

    assert stow(client, *dataset()).status_code == 200
    archive = client.app.state.archive
    monkeypatch.setattr(service, "BATCH", 1)  # one instance per batch, slowly
    batches: list[int] = []
    original = archive.index.reindex_batch

    async def slow_batch(keys, after, until, limit):
        batches.append(after)
        await asyncio.sleep(0.15)
        return await original(keys, after, until, limit)

    monkeypatch.setattr(archive.index, "reindex_batch", slow_batch)
    operation = client.post("/v2/extendedquerytags", json=[TAGS[0]]).json()["id"]
    # killed once its progress is saved, mid-reindex; its lease is left to run out
    kill_runner_midway(client, archive, operation, unfinished=lambda: len(batches) < 4)
    state = client.get(f"/v2/operations/{operation}").json()
    assert state["status"] == "running" and 0 < state["percentComplete"] < 100
    assert client.get("/v2/extendedquerytags/PatientWeight").json()["status"] == "Adding"
    resumed_from = len(batches)
    clock.advance(1)  # the dead worker's lease runs out
    second = JobRunner(archive.index, handlers(archive, Settings().dimse), lease=0.6)
    assert client.portal.call(second.run_once) is True
    done = client.get(f"/v2/operations/{operation}").json()
    assert done["status"] == "completed" and done["results"] == {"indexedInstances": 4}
    assert batches[resumed_from] > 0  # went on from its checkpoint, not from the start
    assert client.get("/v2/extendedquerytags/PatientWeight").json()["status"] == "Ready"
    assert studies(client, PatientWeight="82") == [STUDY[1]]


def test_tags_inside_sequences(client):
    """An extension beyond Microsoft's server: an attribute in the items of a top-level
    sequence, matched when any item's value matches."""
    codes = [
        [{"CodeValue": "CT123", "CodingSchemeDesignator": "L"}, {"CodeValue": "XR9"}],
        [{"CodeValue": "MR77", "CodingSchemeDesignator": "L"}],
    ]
    files = [
        instance(uid(84, n), uid(84, n, 1), uid(84, n, 1, 1), ProcedureCodeSequence=c)
        for n, c in enumerate(codes)
    ]
    assert stow(client, *files).status_code == 200
    tag = {"path": "ProcedureCodeSequence.CodeValue", "level": "Study"}
    r = client.post("/v2/extendedquerytags", json=[tag])
    assert r.status_code == 202, r.text
    run_jobs(client)
    got = client.get("/v2/extendedquerytags/00081032.00080100").json()
    assert (got["path"], got["vr"], got["status"]) == ("00081032.00080100", "SH", "Ready")
    assert studies(client, **{"ProcedureCodeSequence.CodeValue": "XR9"}) == [uid(84, 0)]
    assert studies(client, **{"00081032.00080100": "CT*\\MR77"}) == [uid(84, 0), uid(84, 1)]
    (study,) = client.get(
        "/v2/studies",
        params={"ProcedureCodeSequence.CodeValue": "MR77", "includefield": "00081032.00080100"},
    ).json()
    assert study["00081032"]["Value"][0]["00080100"]["Value"] == ["MR77"]
    for bad in ("ProcedureCodeSequence.CodeValue.CodeMeaning", "PatientID.CodeValue"):
        r = client.post("/v2/extendedquerytags", json=[{"path": bad, "level": "Study"}])
        assert r.status_code == 400, bad
    assert client.delete("/v2/extendedquerytags/ProcedureCodeSequence.CodeValue").status_code == 204


def test_v1_refuses_invalid_values_of_extended_tags(tagged):
    """As Microsoft's v1: an invalid value of a searchable attribute (an extended query tag too)
    refuses the instance with 43264; v2 stores it and lists the value as an error."""
    bad = instance(uid(85), uid(85, 1), uid(85, 1, 1), BodyPartExamined="chest")
    r = stow(tagged, bad, version=1)
    assert r.status_code == 409 and failures(r) == [43264]
    assert "(0018,0015)" in r.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
    ok = instance(uid(85), uid(85, 1), uid(85, 1, 2), PatientComments="\x01bad")
    assert stow(tagged, ok, version=1).status_code in (200, 202)  # not an indexed attribute
    assert stow(tagged, bad, version=2).status_code == 202


def test_uid_time_datetime_and_integer_tags(client):
    frames = [uid(86, 0, 9), uid(86, 1, 9), uid(86, 2, 9)]
    attrs = [
        dict(
            FrameOfReferenceUID=frames[0],
            AcquisitionTime="083000",
            Rows=256,
            InstanceCoercionDateTime="20200105120000+0100",
        ),
        dict(
            FrameOfReferenceUID=frames[1],
            AcquisitionTime="141500.5",
            Rows=512,
            InstanceCoercionDateTime="20200105120000-0500",
        ),
        dict(
            FrameOfReferenceUID=frames[2],
            AcquisitionTime="2359",
            Rows=1024,
            InstanceCoercionDateTime="2021",
        ),
    ]
    files = [
        instance(uid(86, n), uid(86, n, 1), uid(86, n, 1, 1), **a) for n, a in enumerate(attrs)
    ]
    assert stow(client, *files).status_code == 200
    tags = [
        {"path": "FrameOfReferenceUID", "level": "Series"},  # UI
        {"path": "AcquisitionTime", "level": "Instance"},  # TM
        {"path": "Rows", "level": "Instance"},  # US
        {"path": "InstanceCoercionDateTime", "level": "Instance"},  # DT
    ]
    assert client.post("/v2/extendedquerytags", json=tags).status_code == 202
    run_jobs(client)

    def found(**params) -> list[int]:
        r = client.get("/v2/instances", params=params)
        assert r.status_code == 200 and "Warning" not in r.headers, r.text
        return sorted(int(i["0020000D"]["Value"][0].rsplit(".", 1)[1]) for i in r.json())

    assert found(FrameOfReferenceUID=f"{frames[0]},{frames[2]}") == [0, 2]  # UID list
    assert found(AcquisitionTime="08-15") == [0, 1]  # TM range (hours)
    assert found(AcquisitionTime="2359") == [2]  # a value covers its precision
    assert found(Rows="512") == [1]
    assert found(Rows="300-") == [1, 2]  # integer range
    # DT compared in UTC: 11:00Z and 17:00Z on 2020-01-05
    assert found(InstanceCoercionDateTime="20200105100000+0000-20200105120000+0000") == [0]
    assert found(InstanceCoercionDateTime="2020") == [0, 1]
    r = client.get("/v2/instances", params={"Rows": "many"})
    assert r.status_code == 400 and "Rows" in r.json()["detail"]


def test_a_tag_deleted_while_being_added(client):
    assert stow(client, *dataset()).status_code == 200
    operation = client.post("/v2/extendedquerytags", json=[TAGS[0]]).json()["id"]
    assert client.delete("/v2/extendedquerytags/PatientWeight").status_code == 204
    run_jobs(client)  # the reindex finds nothing left to do
    done = client.get(f"/v2/operations/{operation}").json()
    assert done["status"] == "completed" and done["results"] == {"indexedInstances": 0}
    assert client.get("/v2/extendedquerytags").json() == []
