"""Upsert (PUT /v{n}/studies[/{study}]) and versions, on SQLite and PostgreSQL: a new instance
is created, a stored one replaced (a new version, an ``update`` change-feed entry), the
original kept for ``msdicom-request-original`` until the instance is deleted; search,
metadata, ETags and rendered images follow the latest at once."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicomhub.archive.fhir_sync import FhirSync
from dicomhub.cli import build_archive
from dicomhub.fhir.projection import Options
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.dicomfiles import read
from tests.helpers import MULTIPART, failures, multipart, stored_uids
from tests.synthetic import instance, uid

JSON = "application/dicom+json"
ORIGINAL = {"msdicom-request-original": "true"}
STUDY, SERIES, SOP = uid(70), uid(70, 1), uid(70, 1, 1)
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"


def version(name: str, sop: str = SOP, series: str = SERIES, study: str = STUDY) -> bytes:
    """The instance with ``name`` as its PatientName (what tells its versions apart)."""
    return instance(study, series, sop, PatientName=name, PatientID="UPSERT")


def put(client, *parts: bytes, study: str | None = None, v: int = 2):
    url = f"/v{v}/studies" + (f"/{study}" if study else "")
    return client.put(url, content=multipart(*parts), headers={"Content-Type": MULTIPART})


def post(client, *parts: bytes, v: int = 2):
    return client.post(
        f"/v{v}/studies", content=multipart(*parts), headers={"Content-Type": MULTIPART}
    )


def name_of(item: dict) -> str:
    return item["00100010"]["Value"][0]["Alphabetic"]


def names(client, path: str, headers: dict | None = None, v: int = 2) -> list[str]:
    r = client.get(f"/v{v}{path}/metadata", headers=headers or {})
    assert r.status_code == 200, r.text
    return [name_of(item) for item in r.json()]


def feed(client) -> list[tuple[str, str, str]]:
    return [
        (e["action"], e["state"], e["sopInstanceUid"]) for e in client.get("/v1/changefeed").json()
    ]


def retrieved_name(client, path: str, headers: dict | None = None, v: int = 2) -> str:
    r = client.get(f"/v{v}{path}", headers={"Accept": "application/dicom", **(headers or {})})
    assert r.status_code == 200, r.text
    return str(read(r.content).PatientName)


def test_put_creates_then_replaces(client):
    r = put(client, version("First^Version"))
    assert r.status_code == 200, r.text
    assert stored_uids(r) == [SOP]
    etag = client.get(f"/v2{INSTANCE}/metadata").headers["ETag"]
    study_etag = client.get(f"/v2/studies/{STUDY}/metadata").headers["ETag"]
    series_etag = client.get(f"/v2/studies/{STUDY}/series/{SERIES}/metadata").headers["ETag"]
    assert feed(client) == [("create", "current", SOP)]

    r = put(client, version("Second^Version"))
    assert r.status_code == 200, r.text
    assert stored_uids(r) == [SOP]
    # the latest everywhere, at once: metadata, retrieve, search
    assert names(client, INSTANCE) == ["Second^Version"]
    assert names(client, f"/studies/{STUDY}") == ["Second^Version"]
    assert retrieved_name(client, INSTANCE) == "Second^Version"
    found = client.get("/v2/studies", params={"PatientName": "Second*"}).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [STUDY]
    assert client.get("/v2/studies", params={"PatientName": "First*"}).json() == []
    assert client.get("/v2/instances", params={"SOPInstanceUID": SOP}).json()[0]["00100010"][
        "Value"
    ][0]["Alphabetic"] == ("Second^Version")
    # still one instance: counts unchanged
    study = client.get("/v2/studies", params={"StudyInstanceUID": STUDY}).json()[0]
    assert study["00201208"]["Value"] == [1] and study["00201206"]["Value"] == [1]
    # every ETag moved on (instance version, study and series revisions)
    assert client.get(f"/v2{INSTANCE}/metadata").headers["ETag"] != etag
    assert client.get(f"/v2/studies/{STUDY}/metadata").headers["ETag"] != study_etag
    series_now = client.get(f"/v2/studies/{STUDY}/series/{SERIES}/metadata").headers["ETag"]
    assert series_now != series_etag
    stale = client.get(f"/v2/studies/{STUDY}/metadata", headers={"If-None-Match": study_etag})
    assert stale.status_code == 200
    # the change feed: the create is replaced, the update current
    assert feed(client) == [("create", "replaced", SOP), ("update", "current", SOP)]


def test_original_version_on_v2_only(client):
    put(client, version("Original^Name"))
    put(client, version("Between^Name"))
    put(client, version("Latest^Name"))
    for path in (INSTANCE, f"/studies/{STUDY}/series/{SERIES}", f"/studies/{STUDY}"):
        assert names(client, path) == ["Latest^Name"]
        assert names(client, path, ORIGINAL) == ["Original^Name"]
        assert names(client, path, ORIGINAL, v=1) == ["Latest^Name"]  # v1 ignores it
    assert retrieved_name(client, INSTANCE) == "Latest^Name"
    assert retrieved_name(client, INSTANCE, ORIGINAL) == "Original^Name"
    assert retrieved_name(client, INSTANCE, ORIGINAL, v=1) == "Latest^Name"
    for path in (f"/studies/{STUDY}", f"/studies/{STUDY}/series/{SERIES}"):
        r = client.get(
            f"/v2{path}",
            headers={"Accept": 'multipart/related; type="application/dicom"', **ORIGINAL},
        )
        assert r.status_code == 200 and b"Original^Name" in r.content
        assert b"Latest^Name" not in r.content
    # the original and the latest are told apart by their validators, and caches know
    latest = client.get(f"/v2/studies/{STUDY}/metadata")
    original = client.get(f"/v2/studies/{STUDY}/metadata", headers=ORIGINAL)
    assert latest.headers["ETag"] != original.headers["ETag"]
    assert "msdicom-request-original" in original.headers["Vary"]
    single = client.get(f"/v2{INSTANCE}", headers={"Accept": "application/dicom", **ORIGINAL})
    assert (
        single.headers["ETag"]
        != client.get(f"/v2{INSTANCE}", headers={"Accept": "application/dicom"}).headers["ETag"]
    )
    # the header is true or false (anything else 400 on v2, as Microsoft's binding); v1
    # ignores it whatever it says
    latest_only = {"msdicom-request-original": "FALSE"}
    assert names(client, INSTANCE, latest_only) == ["Latest^Name"]
    bad = client.get(f"/v2{INSTANCE}/metadata", headers={"msdicom-request-original": "yes"})
    assert bad.status_code == 400 and "msdicom-request-original" in bad.json()["detail"]
    assert names(client, INSTANCE, {"msdicom-request-original": "yes"}, v=1) == ["Latest^Name"]
    # an instance never replaced is its own original
    other = uid(70, 1, 2)
    put(client, version("Only^Once", sop=other))
    assert sorted(names(client, f"/studies/{STUDY}", ORIGINAL)) == ["Only^Once", "Original^Name"]
    assert feed(client) == [
        ("create", "replaced", SOP),
        ("update", "replaced", SOP),
        ("update", "current", SOP),
        ("create", "current", other),
    ]


def test_update_entries_in_the_change_feed_paging(client):
    """create, update, delete and create again, in order, on v1 (by sequence) and v2 (by
    time), page by page, and ``latest`` on both."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    put(client, version("A"))
    put(client, version("B"))
    put(client, version("C"))
    assert client.delete(f"/v2/studies/{STUDY}").status_code == 204
    put(client, version("D"))
    put(client, version("E"))
    expected = [
        ("create", "replaced"),
        ("update", "replaced"),
        ("update", "replaced"),
        ("delete", "replaced"),
        ("create", "replaced"),
        ("update", "current"),
    ]
    v1 = []
    for offset in range(0, 6, 2):
        page = client.get("/v1/changefeed", params={"offset": offset, "limit": 2}).json()
        v1 += page
    assert [(e["action"], e["state"]) for e in v1] == expected
    assert [e["sequence"] for e in v1] == [1, 2, 3, 4, 5, 6]
    assert v1[1]["metadata"] is not None and v1[3]["metadata"] is None
    window = {"startTime": before.isoformat(), "endTime": (before + timedelta(hours=1)).isoformat()}
    v2 = []
    for offset in range(0, 6, 4):
        v2 += client.get("/v2/changefeed", params=window | {"offset": offset, "limit": 4}).json()
    assert [(e["action"], e["state"]) for e in v2] == expected
    for n in (1, 2):
        latest = client.get(f"/v{n}/changefeed/latest").json()
        assert (latest["action"], latest["state"], latest["sequence"]) == ("update", "current", 6)
        assert name_of(latest["metadata"]) == "E"


def test_attributes_the_new_version_lacks(client):
    """The study's and series' attributes are what their instances give, as stored: an
    attribute the replaced version gave and the new one lacks is another instance's, or none."""

    def accession(sop: str, value: str | None, description: str | None) -> bytes:
        return instance(STUDY, SERIES, sop, AccessionNumber=value, SeriesDescription=description)

    def studies(**query) -> list[str]:
        return [s["0020000D"]["Value"][0] for s in client.get("/v2/studies", params=query).json()]

    def series_description() -> list:
        found = client.get(f"/v2/studies/{STUDY}/series").json()
        return [s.get("0008103E", {}).get("Value") for s in found]

    other = uid(70, 1, 9)
    put(client, accession(other, "ACC0", None))
    put(client, accession(SOP, "ACC1", "ONE"))  # stored last: its values win
    assert studies(AccessionNumber="ACC1") == [STUDY] and studies(AccessionNumber="ACC0") == []
    assert series_description() == [["ONE"]]
    put(client, accession(SOP, None, None))  # the new version has neither
    assert studies(AccessionNumber="ACC1") == [] and studies(AccessionNumber="ACC0") == [STUDY]
    assert series_description() == [None]
    put(client, accession(SOP, "ACC2", "TWO"))  # values again: they win
    assert studies(AccessionNumber="ACC2") == [STUDY] and series_description() == [["TWO"]]
    client.delete(f"/v2/studies/{STUDY}/series/{SERIES}/instances/{other}")
    put(client, accession(SOP, None, None))  # alone in its study now: nothing is left
    assert studies(AccessionNumber="ACC*") == [] and series_description() == [None]
    assert studies(StudyInstanceUID=STUDY) == [STUDY]


def test_put_to_a_study_path(client):
    r = put(client, version("In^Study"), study=STUDY)
    assert r.status_code == 200, r.text
    assert r.json()["00081190"]["Value"][0].endswith(f"/studies/{STUDY}")
    # an instance of another study: refused (43264, as for POST), nothing changed
    other = version("Other^Study", study=uid(71))
    r = put(client, other, study=STUDY)
    assert r.status_code == 409 and failures(r) == [43264]
    assert client.get(f"/v2/studies/{uid(71)}/metadata").status_code == 404
    assert feed(client) == [("create", "current", SOP)]


def test_put_never_moves_an_instance(client):
    put(client, version("Stays^Here"))
    for series, study in ((uid(70, 2), STUDY), (uid(72, 1), uid(72))):
        r = put(client, version("Moved^Away", series=series, study=study))
        assert r.status_code == 409, r.text
        assert failures(r) == [43264]
        message = r.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
        assert f"stored in study {STUDY}, series {SERIES}" in message and "never moves" in message
    assert names(client, f"/studies/{STUDY}") == ["Stays^Here"]
    assert client.get(f"/v2/studies/{uid(72)}/metadata").status_code == 404
    assert feed(client) == [("create", "current", SOP)]


def test_put_of_several_parts(client):
    """New and stored instances in one request: each created or replaced, in part order; a
    bad part fails alone."""
    put(client, version("Old"))
    new = uid(70, 1, 3)
    r = put(client, version("New", sop=new), version("Newer"), b"not DICOM")
    assert r.status_code == 202, r.text
    assert stored_uids(r) == [new, SOP] and failures(r) == [272]
    assert sorted(names(client, f"/studies/{STUDY}")) == ["New", "Newer"]
    assert feed(client) == [
        ("create", "replaced", SOP),
        ("create", "current", new),
        ("update", "current", SOP),
    ]


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (
            b"--x\r\nContent-Type: application/dicom\r\n\r\nabc",
            'multipart/related; type="application/dicom"; boundary=x',
            400,
        ),
        (b"whatever", "text/plain", 415),
        (b"", MULTIPART, 409),
        (b"not dicom at all", "application/dicom", 409),
    ],
)
def test_bad_input_changes_nothing(client, body, content_type, status):
    put(client, version("Kept"))
    r = client.put("/v2/studies", content=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert names(client, f"/studies/{STUDY}") == ["Kept"]
    assert feed(client) == [("create", "current", SOP)]
    assert (
        client.put(
            "/v2/studies/1.2.x",
            content=multipart(version("Bad")),
            headers={"Content-Type": MULTIPART},
        ).status_code
        == 400
    )


def test_post_still_refuses_a_stored_instance(client):
    put(client, version("Put"))
    r = post(client, version("Posted"))
    assert r.status_code == 409 and failures(r) == [45070]
    assert names(client, INSTANCE) == ["Put"]


def with_pixels(data: bytes, pixels: bytes) -> bytes:
    ds = read(data)
    ds.PixelData = pixels
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_rendered_and_thumbnail_follow_the_latest(client):
    # one bright pixel, top left, then bottom right
    first_image = with_pixels(version("Image"), b"\xff\x0f" + b"\x00\x00" * 3)
    second_image = with_pixels(version("Image"), b"\x00\x00" * 3 + b"\xff\x0f")
    put(client, first_image)
    jpeg = {"Accept": "image/png"}
    first = client.get(f"/v2{INSTANCE}/thumbnail", headers=jpeg)
    first_rendered = client.get(f"/v2{INSTANCE}/rendered", headers=jpeg)
    assert first.status_code == 200 and first_rendered.status_code == 200
    put(client, second_image)
    second = client.get(f"/v2{INSTANCE}/thumbnail", headers=jpeg)
    assert second.status_code == 200 and second.content != first.content
    assert client.get(f"/v2{INSTANCE}/rendered", headers=jpeg).content != first_rendered.content
    study_thumb = client.get(f"/v2/studies/{STUDY}/thumbnail", headers=jpeg)
    assert study_thumb.content == second.content


# -- blobs: every version kept or removed as it should, nothing orphaned --------------------


@pytest.fixture
def files_client(tmp_path, index_url):
    """The real app in-process on the index under test and a blob folder."""
    settings = Settings(
        data_dir=str(tmp_path / "data"), index_url=index_url, delete_delay=0, index_blob_max=0
    )  # a file per version, whatever its size: what these tests count (test_kept_blobs: else)
    with TestClient(create_app(settings, build_archive(settings))) as c:
        yield c


def blob_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "data" / "blobs").rglob("*.dcm"))


def cleanup(client) -> int:
    return client.portal.call(client.app.state.archive.cleanup.delete_due_blobs)


def test_versions_kept_and_removed(files_client, tmp_path):
    client = files_client
    put(client, version("V1"))
    put(client, version("V2"))
    assert len(blob_files(tmp_path)) == 2  # the original and the latest
    put(client, version("V3"))
    assert len(blob_files(tmp_path)) == 3
    assert cleanup(client) == 1  # V2, between the original and the latest
    kept = blob_files(tmp_path)
    assert sorted(str(read(p.read_bytes()).PatientName) for p in kept) == ["V1", "V3"]
    assert names(client, INSTANCE, ORIGINAL) == ["V1"]
    # the thumbnail cached for a version goes with it
    client.get(f"/v2{INSTANCE}/thumbnail", headers={"Accept": "image/jpeg"})
    assert client.delete(f"/v2{INSTANCE}").status_code == 204
    assert client.get(f"/v2{INSTANCE}/metadata", headers=ORIGINAL).status_code == 404
    assert cleanup(client) == 2  # both versions
    assert blob_files(tmp_path) == []
    assert list((tmp_path / "data" / "blobs").rglob("*.*")) == []
    # stored again after the delete: a new instance, no original left over
    put(client, version("Again"))
    assert names(client, INSTANCE, ORIGINAL) == ["Again"]
    assert client.delete(f"/v2/studies/{STUDY}").status_code == 204
    assert cleanup(client) == 1 and blob_files(tmp_path) == []


def test_study_delete_removes_originals_of_every_series(files_client, tmp_path):
    client = files_client
    others = [uid(70, 2, 1), uid(70, 2, 2)]
    put(client, version("A1"), *(version("B1", sop=s, series=uid(70, 2)) for s in others))
    put(client, version("A2"), version("B2", sop=others[0], series=uid(70, 2)))
    assert len(blob_files(tmp_path)) == 5
    assert client.delete(f"/v2/studies/{STUDY}/series/{uid(70, 2)}").status_code == 204
    assert cleanup(client) == 3
    assert names(client, f"/studies/{STUDY}", ORIGINAL) == ["A1"]
    assert client.delete(f"/v2/studies/{STUDY}").status_code == 204
    assert cleanup(client) == 2 and blob_files(tmp_path) == []


class RecordingFhir:
    """A FHIR server that finds nothing and records the transactions it is sent."""

    base_url = "http://fhir.invalid/fhir"

    def __init__(self):
        self.bundles: list[dict] = []

    async def search(self, query: str) -> list[dict]:
        return []

    async def transaction(self, bundle: dict) -> dict:
        self.bundles.append(bundle)
        return {}

    async def close(self) -> None:
        pass


def test_fhir_sync_projects_an_update_again(client):
    """The FHIR sync follows the change feed: an update entry re-projects the study from the
    latest version (test_fhir checks the same against a real FHIR server)."""
    fhir = RecordingFhir()
    sync = FhirSync(client.app.state.archive.index, fhir, Options("http://a/v2"), 10, 30)

    def described() -> list[str]:
        while client.portal.call(sync.step, "node").changes:
            pass
        studies = [
            e["resource"]
            for bundle in fhir.bundles
            for e in bundle["entry"]
            if e.get("resource", {}).get("resourceType") == "ImagingStudy"
        ]
        fhir.bundles.clear()
        return [s.get("description") for s in studies]

    put(client, instance(STUDY, SERIES, SOP, StudyDescription="BEFORE"))
    assert described() == ["BEFORE"]
    put(client, instance(STUDY, SERIES, SOP, StudyDescription="AFTER"))
    assert described() == ["AFTER"]
