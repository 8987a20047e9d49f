"""STOW-RS against the real app in-process: status codes, failure codes, validation."""

from __future__ import annotations

import io

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from dicomhub.archive.spool import PartBody
from dicomhub.archive.store import PIPELINE, _short_header
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import BOUNDARY, failures, multipart, stored_uids, stow
from tests.synthetic import instance, uid

CT = load("CT_small.dcm")
MR = load("MR_small.dcm")


def uids(data: bytes):
    ds = read(data)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_store_one_instance(client):
    r = stow(client, CT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    study, series, sop = uids(CT)
    item = r.json()["00081199"]["Value"][0]
    assert item["00081155"]["Value"] == [sop]
    assert item["00081190"]["Value"][0].endswith(
        f"/v2/studies/{study}/series/{series}/instances/{sop}"
    )
    assert "00081198" not in r.json()


def test_single_part_application_dicom(client):
    r = client.post("/v2/studies", content=CT, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200
    assert stored_uids(r) == [uids(CT)[2]]


def test_stored_bytes_are_what_was_sent(client):
    stow(client, CT)
    study, series, sop = uids(CT)
    r = client.get(
        f"/v2/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
    )
    assert r.content == CT


def test_empty_requests(client):
    r = client.post("/v2/studies", content=b"", headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409  # an empty file: nothing stored
    assert failures(r) == [272]
    r = client.post("/v2/studies", content=b"", headers={"Content-Type": stow_type()})
    assert r.status_code == 409  # an empty body, as Microsoft's server answers it
    assert "empty" in r.json()["detail"]
    r = client.post("/v2/studies", content=b"\r\n", headers={"Content-Type": stow_type()})
    assert r.status_code == 400  # not even a closing boundary
    r = client.post(
        "/v2/studies", content=f"--{BOUNDARY}--\r\n".encode(), headers={"Content-Type": stow_type()}
    )
    assert r.status_code == 204  # multipart without parts


def stow_type():
    return f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def test_empty_part_among_valid_parts(client):
    r = stow(client, CT, b"")
    assert r.status_code == 202
    assert failures(r) == [272]
    assert stored_uids(r) == [uids(CT)[2]]


def test_part_without_content_type_uses_root_type(client):
    r = stow(client, (None, CT))
    assert r.status_code == 200


def test_accept_application_dicom_is_not_acceptable(client):
    r = stow(client, CT, headers={"Accept": "application/dicom"})
    assert r.status_code == 406
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 406


def test_missing_accept_means_dicom_json(client):
    r = client.post(
        "/v2/studies",
        content=multipart(CT),
        headers={"Content-Type": stow_type(), "Accept": ""},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "multipart/form-data; b=x"])
def test_wrong_media_type(client, ctype):
    r = client.post("/v2/studies", content=CT, headers={"Content-Type": ctype})
    assert r.status_code == 415
    assert client.get("/v2/changefeed/latest").json() is None


@pytest.mark.parametrize("study", ["1" * 65, "1.2.abc", "1.2..3", ".1.2"])
def test_invalid_study_uid_in_url(client, study):
    r = stow(client, CT, study=study)
    assert r.status_code == 400
    assert "StudyInstanceUID" in r.json()["detail"]


def test_missing_content_type(client):
    r = client.post("/v2/studies", content=CT)
    assert r.status_code == 415


def test_an_unfinished_store_does_not_block_another(client):
    """Stores of one instance race at commit: one that never finishes holds nothing."""
    from dicomhub.model import InstanceId

    archive = client.app.state.archive
    [version] = client.portal.call(
        archive.index.reserve_versions, InstanceId(*uids(CT)).partition, 1
    )
    assert stow(client, CT).status_code == 200
    assert client.portal.call(archive.index.abandon, version) is True
    assert client.portal.call(archive.index.abandon, version) is False
    assert stow(client, CT).status_code == 409


def test_already_stored(client):
    assert stow(client, CT).status_code == 200
    r = stow(client, CT)
    assert r.status_code == 409
    assert failures(r) == [45070]


def test_same_instance_twice_in_one_request(client):
    r = stow(client, CT, CT)
    assert r.status_code == 202
    assert failures(r) == [45070]
    assert len(stored_uids(r)) == 1


def test_wrong_study(client):
    r = stow(client, CT, study="1.2.3.4")
    assert r.status_code == 409
    assert failures(r) == [43264]
    assert "does not match" in r.json()["00081198"]["Value"][0]["00000902"]["Value"][0]


def test_some_in_the_wrong_study(client):
    study = uids(CT)[0]
    r = stow(client, CT, MR, study=study)
    assert r.status_code == 202
    body = r.json()
    assert body["00081190"]["Value"][0].endswith(f"/v2/studies/{study}")
    assert failures(r) == [43264]
    assert stored_uids(r) == [uids(CT)[2]]


def test_non_dicom_and_truncated_parts_fail_alone(client):
    r = stow(client, b"this is not DICOM", CT[: len(CT) // 2], MR)
    assert r.status_code == 202
    assert failures(r) == [272, 272]
    assert stored_uids(r) == [uids(MR)[2]]
    study, series, sop = uids(CT)
    assert client.get(f"/v2/studies/{study}/metadata").status_code == 404


def test_a_refusal_says_what_is_wrong_in_the_servers_words(client):
    """ErrorComment names the problem (no pydicom advice such as 'Use force=True')."""
    r = stow(client, b"this is not DICOM", CT[132:])  # not DICOM; a bare data set
    comments = [i["00000902"]["Value"][0] for i in r.json()["00081198"]["Value"]]
    assert len(comments) == 2
    for comment in comments:
        assert "preamble" in comment and "'DICM' prefix" in comment, comment
        assert "force" not in comment, comment


def test_part_of_another_media_type_fails_alone(client):
    r = stow(client, ("application/dicom+json", b"[]"), CT)
    assert r.status_code == 202
    assert failures(r) == [272]


@pytest.mark.parametrize(
    "body",
    [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"x" * 100,
        b"no boundary at all",
        f"--{BOUNDARY}\r\nbroken header line\r\n\r\nabc\r\n--{BOUNDARY}--".encode(),
    ],
)
def test_malformed_multipart(client, body):
    r = client.post("/v2/studies", content=body, headers={"Content-Type": stow_type()})
    assert r.status_code == 400
    assert r.json()["title"] == "Bad Request"
    assert client.get("/v2/changefeed/latest").json() is None


def test_malformed_multipart_keeps_parts_before_the_damage(client):
    body = multipart(CT)[: -len(f"--{BOUNDARY}--\r\n")] + f"--{BOUNDARY}\r\nX".encode()
    r = client.post("/v2/studies", content=body, headers={"Content-Type": stow_type()})
    assert r.status_code == 400
    study, series, sop = uids(CT)
    assert client.get(f"/v2/studies/{study}/metadata").status_code == 200


def test_missing_boundary(client):
    r = client.post(
        "/v2/studies",
        content=CT,
        headers={"Content-Type": "multipart/related; type=application/dicom"},
    )
    assert r.status_code == 400


def test_oversize_part(file_client):
    with file_client(max_part_size=len(CT) - 1) as client:
        r = stow(client, CT, MR[: len(CT) - 1] if len(MR) >= len(CT) else MR)
        assert failures(r)[0] == 272
        r = client.post("/v2/studies", content=CT, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 413


def test_v2_lenient_drops_invalid_attribute_and_warns(client):
    ds = read(with_new_uids(CT))
    ds.StudyDate = "NotADate"
    data = _save(ds)
    r = stow(client, data)
    assert r.status_code == 202
    item = r.json()["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [1]
    comment = item["00741048"]["Value"][0]["00000902"]["Value"][0]
    assert "(0008,0020)" in comment and "NotADate" in comment
    meta = client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata").json()[0]
    assert "00080020" not in meta
    stored = client.get(
        f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom"},
    )
    assert stored.content == data  # kept in the stored file


def test_an_invalid_attribute_v1_does_not_index_is_stored_with_200_on_v1(client):
    """As Microsoft's v1: a non-indexed attribute's invalid value does not make a warning
    status (the response still says which attribute was left out); v2 answers 202."""
    for version, status in ((1, 200), (2, 202)):
        ds = read(with_new_uids(CT))
        ds.ContentDate = "NotADate"
        r = stow(client, _save(ds), version=version)
        assert r.status_code == status, (version, r.text)
        item = r.json()["00081199"]["Value"][0]
        assert item["00081196"]["Value"] == [1]


def test_implicit_vr_is_stored_with_warning_45063(client):
    """Microsoft's WarningReason for Implicit VR Little Endian: 202 on v2, 200 on v1."""
    from pydicom.uid import ImplicitVRLittleEndian

    for version, status in ((1, 200), (2, 202)):
        ds = read(with_new_uids(CT))
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        import io

        out = io.BytesIO()
        ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
        r = stow(client, out.getvalue(), version=version)
        assert r.status_code == status, (version, r.text)
        item = r.json()["00081199"]["Value"][0]
        assert item["00081196"]["Value"] == [45063]
        assert "00741048" not in item  # nothing was left out
    assert stow(client, with_new_uids(CT)).status_code == 200  # explicit VR: no warning


def test_a_multi_valued_searchable_attribute_gets_a_warning_header(client):
    """Only the first value of a searchable attribute is indexed: HTTP Warning 299 says so."""
    ds = read(with_new_uids(CT))
    ds.AccessionNumber = ["ACC1", "ACC2"]
    r = stow(client, _save(ds))
    assert r.status_code == 200, r.text
    assert r.headers["warning"].startswith("299 ")
    assert "only first value is indexed" in r.headers["warning"]
    assert "warning" not in stow(client, with_new_uids(CT)).headers


def test_versioned_responses_list_the_api_versions(client):
    assert stow(client, with_new_uids(CT)).headers["api-supported-versions"] == "1, 2"
    missing = client.get("/v1/studies/1.2.3/metadata")
    assert missing.status_code == 404
    assert missing.headers["api-supported-versions"] == "1, 2"
    assert "api-supported-versions" not in client.get("/health/check").headers


def test_v1_strict_rejects_invalid_indexed_attribute(client):
    ds = read(with_new_uids(CT))
    ds.StudyDate = "NotADate"
    r = stow(client, _save(ds), version=1)
    assert r.status_code == 409
    assert failures(r) == [43264]


def test_v1_requires_patient_id_v2_does_not(client):
    ds = read(with_new_uids(CT))
    ds.PatientID = ""
    data = _save(ds)
    assert failures(stow(client, data, version=1)) == [43264]
    assert stow(client, data, version=2).status_code == 200


def test_missing_sop_instance_uid(client):
    ds = read(with_new_uids(CT))
    del ds.SOPInstanceUID
    r = stow(client, _save(ds))
    assert r.status_code == 409
    assert failures(r) == [43264]


def _save(ds) -> bytes:
    import io

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def test_many_parts_keep_their_order(client):
    """Parts are stored several at a time; outcomes, the change feed and default search order
    still follow the order of the parts, and a bad part among them fails alone."""
    count = 3 * PIPELINE + 1
    sops = [uid(77, 1, n) for n in range(count)]
    parts = [instance(uid(77), uid(77, 1), sop) for sop in sops]
    parts[5] = b"not dicom"
    r = stow(client, *parts)
    assert r.status_code == 202
    assert failures(r) == [0x0110]
    expected = sops[:5] + sops[6:]
    assert stored_uids(r) == expected
    feed = client.get("/v2/changefeed", params={"limit": 100}).json()
    assert [e["sopInstanceUid"] for e in feed] == expected
    found = client.get(f"/v2/studies/{uid(77)}/instances").json()
    assert [i["00080018"]["Value"][0] for i in found] == expected


def test_duplicate_after_a_slower_part_in_one_request(client):
    """The first of two parts with one SOP Instance UID is stored even when the second finishes
    parsing first; the second is the duplicate."""
    sop = uid(78, 1, 1)
    slow = instance(uid(78), uid(78, 1), sop, EncapsulatedDocument=bytes(4_000_000))
    fast = instance(uid(78), uid(78, 1), sop)
    r = stow(client, slow, fast)
    assert r.status_code == 202
    assert failures(r) == [45070]
    stored = client.get(f"/v2/studies/{uid(78)}/series/{uid(78, 1)}/instances/{sop}/metadata")
    assert "00420011" in stored.json()[0]


def test_deflate_bomb_is_refused_and_stores_nothing(file_client):
    """A deflated data set that expands past max_inflated_size fails as its part's processing
    failure before pydicom inflates it; an honest deflated file still stores."""
    import io

    from pydicom.uid import generate_uid

    ds = read(load("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x00091010, "LO", "BOMB")
    ds.add_new(0x00091011, "OB", bytes(8 * 1024**2))  # 8 MiB of zeros deflate to ~8 KB
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    honest = load("image_dfl.dcm")
    with file_client(max_inflated_size=1024**2) as client:
        r = stow(client, bomb, honest)
        assert r.status_code == 202, r.text  # one stored, one failed
        assert failures(r) == [272]
        assert "expands past 1048576 bytes" in r.text
        assert stored_uids(r) == [read(honest).SOPInstanceUID]
        assert client.get(f"/v2/instances?SOPInstanceUID={ds.SOPInstanceUID}").json() == []


def _image(pixels: int, header: int = 0, implicit: bool = False) -> bytes:
    ds = read(instance(uid(9), uid(9, 1), uid(9, 1, pixels + header + implicit)))
    ds.Rows, ds.Columns = pixels // 1000, 500  # 16-bit pixels
    if header:
        ds.add_new(0x00091010, "OB", b"\0" * header)  # a private element before the pixels
    ds.PixelData = b"\x01\x02" * (pixels // 2)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit)
    return out.getvalue()


def test_images_with_a_short_header_are_described_on_the_event_loop(client):
    """A part is parsed on the event loop (no thread hop) when its header is short: small
    parts, and images held in memory whose Pixel Data starts within the first 64 KB. A long
    header, or one whose Pixel Data cannot be told apart (implicit VR), goes to a thread."""
    short = _image(600_000)
    assert _short_header(PartBody.of(CT))
    assert _short_header(PartBody.of(short))
    assert not _short_header(PartBody.of(_image(600_000, header=70_000)))
    assert not _short_header(PartBody.of(_image(600_000, implicit=True)))
    for data in (short, _image(600_000, header=70_000)):
        r = stow(client, data)
        assert r.status_code == 200 and stored_uids(r) == [uids(data)[2]], r.text
        study, series, sop = uids(data)
        got = client.get(
            f"/v2/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert got.status_code == 200 and data in got.content
