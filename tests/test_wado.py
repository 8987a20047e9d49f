"""WADO-RS against the real app in-process: negotiation, metadata ETags, frames, bulk data."""

from __future__ import annotations

import pytest

from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import stow

CT = load("CT_small.dcm")
JPEG = load("SC_rgb_dcmtk_+eb+cr.dcm")
RLE_2FRAME = load("SC_rgb_rle_2frame.dcm")


def parts(response) -> list[tuple[dict, bytes]]:
    ctype = response.headers["content-type"]
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"')
    parser = MultipartParser(boundary)
    out = []
    for event in parser.feed(response.content):
        if isinstance(event, PartStart):
            out.append((event.headers, b""))
        elif isinstance(event, PartData):
            out[-1] = (out[-1][0], out[-1][1] + event.data)
        elif isinstance(event, PartEnd):
            pass
    parser.close()
    return out


def url(data: bytes, suffix: str = "", level: str = "instance") -> str:
    ds = read(data)
    base = f"/v2/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        base += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        base += f"/instances/{ds.SOPInstanceUID}"
    return base + suffix


@pytest.fixture
def loaded(client):
    second = with_new_uids(CT)
    r = stow(client, CT, second, JPEG, RLE_2FRAME)
    assert r.status_code == 200, r.text
    return client, second


def test_study_with_mixed_syntaxes_needs_no_star(loaded):
    client, second = loaded
    ct_study = url(CT, level="study")
    r = client.get(ct_study, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    got = parts(r)
    assert sorted(p[1] for p in got) == sorted([CT, second])
    assert all("transfer-syntax=1.2.840.10008.1.2.1" in p[0]["content-type"] for p in got)
    assert int(r.headers["content-length"]) == len(r.content)  # known before the first byte


def test_explicit_syntax_is_transcoded(loaded):
    client, _ = loaded
    r = client.get(
        url(JPEG),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.1"
        },
    )
    assert r.status_code == 200
    [(head, body)] = parts(r)
    assert head["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    out = read(body)
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.LossyImageCompression == "01"  # its pixels were lossy before
    assert (out.pixel_array == read(JPEG).pixel_array).all()


def test_syntax_that_cannot_be_produced_is_406_listing_what_can(loaded):
    client, _ = loaded
    accept = "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.100"  # MPEG-2: never
    r = client.get(url(CT), headers={"Accept": accept})
    assert r.status_code == 406
    assert "1.2.840.10008.1.2.4.90" in r.json()["detail"]


def test_instance_single_part_with_cache_headers(loaded):
    client, _ = loaded
    r = client.get(url(JPEG), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.status_code == 200
    assert r.content == JPEG
    assert r.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert r.headers["etag"] and r.headers["last-modified"]
    again = client.get(
        url(JPEG), headers={"Accept": "application/dicom", "If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304


def test_each_representation_has_its_own_etag(loaded):
    """An as-stored file and a conversion of the same URL carry different validators, so
    If-None-Match never answers 304 to a client holding the other; every negotiated response
    varies with Accept (instance, frames, rendered, bulk data)."""
    client, _ = loaded
    cases = [
        (
            "",
            "application/dicom; transfer-syntax=*",
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        ),
        (
            "/frames/1",
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
        ),
        ("/rendered", "image/png", "image/jpeg"),
        (
            "/bulkdata/7FE00010",
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
            'multipart/related; type="application/octet-stream"; '
            "transfer-syntax=1.2.840.10008.1.2.1",
        ),
    ]
    for suffix, one, other in cases:
        a = client.get(url(JPEG, suffix), headers={"Accept": one})
        b = client.get(url(JPEG, suffix), headers={"Accept": other})
        assert a.status_code == b.status_code == 200, (suffix, a.text, b.text)
        assert a.content != b.content, suffix
        assert a.headers["etag"] != b.headers["etag"], suffix
        # the instance itself also varies with msdicom-request-original (its original version)
        vary = "Accept, msdicom-request-original" if suffix == "" else "Accept"
        assert a.headers["vary"] == b.headers["vary"] == vary, suffix
        held_a = {"Accept": other, "If-None-Match": a.headers["etag"]}
        assert client.get(url(JPEG, suffix), headers=held_a).status_code == 200, suffix
        held_b = {"Accept": other, "If-None-Match": b.headers["etag"]}
        again = client.get(url(JPEG, suffix), headers=held_b)
        assert again.status_code == 304, suffix
        assert again.headers["etag"] == b.headers["etag"] and again.headers["vary"] == vary


def test_series_level_retrieve(loaded):
    client, second = loaded
    r = client.get(url(CT, level="series"))
    assert r.status_code == 200
    assert len(parts(r)) == 2


def test_metadata_etag_changes_with_the_study(loaded):
    client, second = loaded
    study_meta = url(CT, "/metadata", level="study")
    r = client.get(study_meta)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    assert len(r.json()) == 2
    etag = r.headers["etag"]
    assert client.get(study_meta, headers={"If-None-Match": etag}).status_code == 304
    third = with_new_uids(CT)
    stow(client, third)
    r2 = client.get(study_meta, headers={"If-None-Match": etag})
    assert r2.status_code == 200 and len(r2.json()) == 3
    assert r2.headers["etag"] != etag
    client.delete(url(third))
    r3 = client.get(study_meta)
    assert len(r3.json()) == 2 and r3.headers["etag"] not in (etag, r2.headers["etag"])


def test_metadata_not_acceptable(loaded):
    client, _ = loaded
    r = client.get(url(CT, "/metadata"), headers={"Accept": "application/dicom"})
    assert r.status_code == 406


def test_frames_of_encapsulated_instance(loaded):
    client, _ = loaded
    ds = read(RLE_2FRAME)
    from pydicom.encaps import generate_frames

    expected = list(generate_frames(ds.PixelData, number_of_frames=2))
    r = client.get(
        url(RLE_2FRAME, "/frames/2,1"),
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert r.status_code == 200
    assert [p[1] for p in parts(r)] == [expected[1], expected[0]]
    r = client.get(
        url(RLE_2FRAME, "/frames/1"),
        headers={"Accept": 'multipart/related; type="image/dicom-rle"'},
    )
    assert r.status_code == 200
    assert parts(r)[0][0]["content-type"].startswith("image/dicom-rle")


def test_single_frame_single_part(loaded):
    client, _ = loaded
    r = client.get(url(CT, "/frames/1"), headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == read(CT).PixelData


@pytest.mark.parametrize("frames, status", [("3", 404), ("0", 400), ("1,x", 400), ("-1", 400)])
def test_bad_frame_lists(loaded, frames, status):
    client, _ = loaded
    assert client.get(url(RLE_2FRAME, f"/frames/{frames}")).status_code == status


def test_bulkdata_with_range(loaded):
    client, _ = loaded
    meta = client.get(url(CT, "/metadata")).json()[0]
    uri = meta["7FE00010"]["BulkDataURI"]
    path = uri.split("testserver", 1)[1]
    pixels = read(CT).PixelData
    r = client.get(path, headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == pixels
    r = client.get(path, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == pixels[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(pixels)}"
    r = client.get(path, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and parts(r)[0][1] == pixels[-5:]
    r = client.get(path, headers={"Range": f"bytes={len(pixels)}-"})
    assert r.status_code == 416
    # a range unit the server does not know is ignored (RFC 9110 14.2): the whole value
    r = client.get(path, headers={"Accept": "application/octet-stream", "Range": "pages=1-2"})
    assert r.status_code == 200 and r.content == pixels


@pytest.mark.parametrize("path", ["00100010", "zz", "7FE00010/x/1", "..%2F..%2Fetc", "7FE0001"])
def test_unknown_bulkdata_path(loaded, path):
    client, _ = loaded
    r = client.get(url(CT, f"/bulkdata/{path}"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/studies/1.2.3",
        "/v2/studies/1.2.3/metadata",
        "/v2/studies/1.2.3/series/4.5/instances/6.7/frames/1",
    ],
)
def test_not_found(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("study", ["abc", "1.2.3a", "1" * 65, "..", "1.2%2F3"])
def test_invalid_uids(client, study):
    r = client.get(f"/v2/studies/{study}/metadata")
    assert r.status_code in (400, 404)
    if r.status_code == 400:
        assert "StudyInstanceUID" in r.json()["detail"]


def test_unknown_route_and_method(client):
    assert client.get("/v3/studies").status_code == 404
    assert client.patch("/v2/studies").status_code == 405  # PUT is upsert (test_upsert)


def _study_of(count: int, *extra: bytes) -> tuple[str, list[bytes]]:
    study, series = "1.2.826.0.1.3680043.10.998.1", "1.2.826.0.1.3680043.10.998.1.1"
    files = [with_new_uids(CT, study, series) for _ in range(count)]
    return study, files + [with_new_uids(e, study, series) for e in extra]


STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


def _batched_study(http) -> None:
    """More instances than one batch of reads, and one converted in the middle (a batch of its
    own): every part arrives, in storage order, as stored or converted."""
    study, files = _study_of(45)
    jpeg = with_new_uids(JPEG, study, read(files[0]).SeriesInstanceUID)
    files = files[:20] + [jpeg] + files[20:]
    assert stow(http, *files).status_code == 200
    r = http.get(f"/v2/studies/{study}", headers={"Accept": STORED})
    assert r.status_code == 200
    assert [body for _, body in parts(r)] == files
    assert int(r.headers["content-length"]) == len(r.content)
    r = http.get(f"/v2/studies/{study}", headers={"Accept": EXPLICIT})
    got = [body for _, body in parts(r)]
    assert got[:20] == files[:20] and got[21:] == files[21:]
    assert (read(got[20]).pixel_array == read(jpeg).pixel_array).all()


def test_study_in_batches_from_memory(client):
    _batched_study(client)


def test_study_in_batches_from_files(file_client):
    with file_client() as http:
        _batched_study(http)


def test_missing_blob_before_and_after_the_response_starts(file_client, tmp_path):
    with file_client(index_blob_max=0) as http:  # files of their own, to remove
        study, files = _study_of(40)
        assert stow(http, *files).status_code == 200
        blobs = sorted(
            (tmp_path / "data" / "blobs").rglob("*.dcm"), key=lambda p: p.stat().st_mtime
        )
        blobs[-1].unlink()  # in a later batch: the response has started, it is cut short
        with pytest.raises(RuntimeError, match="response already started") as cut:
            http.get(f"/v2/studies/{study}")
        assert "missing" in str(cut.value.__cause__)
        blobs[0].unlink()  # in the first batch: its status
        r = http.get(f"/v2/studies/{study}")
        assert r.status_code == 404 and "missing" in r.json()["detail"]


def _mtime(path) -> float:
    return path.stat().st_mtime
