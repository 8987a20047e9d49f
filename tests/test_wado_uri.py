"""WADO-URI (PS3.18 chapter 9) from a running `dicomhub serve`, over real sockets, with the
query strings legacy viewers, XDS-I consumers and browsers send (httpx and urllib): each
content type, the default media type, transfer syntaxes as WADO-RS serves them, rendering
parameters checked against pydicom's pixels, and every bad parameter a 4xx problem."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from PIL import Image

from dicomhub.dicom import codecs
from tests.dicomfiles import read, storable_files
from tests.helpers import store_files
from tests.test_rendered import close, reference

NAMES = (
    "CT_small.dcm",  # 128x128, 16-bit, Explicit VR Little Endian, no stored window
    "MR_small.dcm",  # 64x64, stored window
    "emri_small_jpeg_2k_lossless.dcm",  # 10 frames
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline: lossy, served as stored by default
    "test-SR.dcm",  # no pixel data
)
FILES = {f.name: f for f in storable_files(extra=True) if f.name in NAMES}
BROWSER_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
BROWSER_PAGE = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def base(server):
    store_files(server["url"], *(f.data for f in FILES.values()))
    return server["url"]


def query(f, **params) -> str:
    """The query string as WADO-URI clients write it: parameters in the standard's order,
    the media type's slash unencoded (as most do)."""
    uids = f"requestType=WADO&studyUID={f.study}&seriesUID={f.series}&objectUID={f.sop}"
    return "?" + "&".join([uids, *(f"{k}={v}" for k, v in params.items())])


def get(base: str, f, accept: str | None = None, path: str = "/wado", **params):
    headers = {"Accept": accept} if accept else {}
    return httpx.get(base + path + query(f, **params), headers=headers, timeout=60)


def image(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_dicom_as_wado_rs_serves_it(base):
    """contentType=application/dicom: byte for byte what WADO-RS sends for application/dicom
    (stored Explicit VR Little Endian as stored; lossy JPEG as stored; no pixels as stored)."""
    for name in ("CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "test-SR.dcm"):
        f = FILES[name]
        r = get(base, f, contentType="application/dicom")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/dicom"
        assert r.headers["content-disposition"] == f'attachment; filename="{f.sop}.dcm"'
        rs = httpx.get(
            f"{base}/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}",
            headers={"Accept": "application/dicom"},
        )
        assert r.content == rs.content == f.data  # each is as stored: EVRLE, lossy, no pixels
        assert int(r.headers["content-length"]) == len(f.data)


def test_transfer_syntax_converts(base):
    f = FILES["CT_small.dcm"]
    r = get(base, f, contentType="application/dicom", transferSyntax=codecs.JPEG_LS)
    assert r.status_code == 200, r.text
    ds = read(r.content)
    assert ds.file_meta.TransferSyntaxUID == codecs.JPEG_LS
    assert np.array_equal(ds.pixel_array, f.dataset().pixel_array)
    assert ds.SOPInstanceUID == f.sop


@pytest.mark.parametrize(
    "syntax, status",
    [
        ("1.2.840.10008.1.2", 406),  # Implicit VR Little Endian is never written on the web
        ("1.2.3.4", 406),  # no such syntax
        ("JPEG", 400),  # not a UID
    ],
)
def test_transfer_syntax_not_served(base, syntax, status):
    r = get(base, FILES["CT_small.dcm"], contentType="application/dicom", transferSyntax=syntax)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_default_media_type(base):
    """No contentType: a rendered JPEG of an image (PS3.18 9.3), multi-frame too (its first
    frame); application/dicom for an object without pixel data."""
    for name in ("CT_small.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        r = get(base, FILES[name])
        assert r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    sr = FILES["test-SR.dcm"]
    r = get(base, sr)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert r.content == sr.data
    # Accept alone steers the choice when contentType is absent
    r = get(base, FILES["CT_small.dcm"], accept="application/dicom")
    assert r.headers["content-type"] == "application/dicom"


@pytest.mark.parametrize("media", ["image/png", "image/gif", "image/jpeg"])
def test_each_rendered_type(base, media):
    f = FILES["MR_small.dcm"]
    r = get(base, f, accept=BROWSER_IMG, contentType=media)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    picture = Image.open(io.BytesIO(r.content))
    assert picture.format == media.split("/")[1].upper() and picture.size == (64, 64)
    if media == "image/png":  # lossless: the WADO-RS renderer's pixels, pydicom's reference
        assert close(np.asarray(picture), reference(f))


def test_content_type_list_with_q_values(base):
    f = FILES["MR_small.dcm"]
    r = get(base, f, contentType="image/png;q=0.5,image/gif")
    assert r.headers["content-type"] == "image/gif"
    r = get(base, f, contentType="image/png;q=0.9,image/jpeg;q=0.4")
    assert r.headers["content-type"] == "image/png"
    # contentType agrees with Accept: the first type both allow
    r = get(base, f, accept="image/jpeg", contentType="image/png,image/jpeg")
    assert r.headers["content-type"] == "image/jpeg"
    r = get(base, f, accept="image/jpeg", contentType="image/png")
    assert r.status_code == 406 and "image/png" in r.json()["detail"]
    r = get(base, f, contentType="video/mp4")
    assert r.status_code == 406


def test_rows_and_columns_fit_keeping_the_aspect_ratio(base):
    ct = FILES["CT_small.dcm"]  # 128 x 128
    assert image(get(base, ct, contentType="image/png", columns=64)).shape == (64, 64)
    assert image(get(base, ct, contentType="image/png", rows=32, columns=64)).shape == (32, 32)
    assert image(get(base, ct, contentType="image/png", rows=256)).shape == (256, 256)


def test_region_crops(base):
    ct = FILES["CT_small.dcm"]
    got = image(get(base, ct, contentType="image/png", region="0.5,0.25,1.0,0.5"))
    assert got.shape == (32, 64)
    assert close(got, reference(ct)[32:64, 64:128])
    scaled = image(get(base, ct, contentType="image/png", region="0,0,0.5,0.5", columns=32))
    assert scaled.shape == (32, 32)


def test_window_changes_the_image(base):
    mr = FILES["MR_small.dcm"]
    plain = image(get(base, mr, contentType="image/png"))
    windowed = image(get(base, mr, contentType="image/png", windowCenter=600, windowWidth=800))
    assert not np.array_equal(plain, windowed)
    assert close(windowed, reference(mr, (600.0, 800.0, "LINEAR")))


def test_frame_number(base):
    mr = FILES["emri_small_jpeg_2k_lossless.dcm"]
    got = image(get(base, mr, contentType="image/png", frameNumber=7))
    assert close(got, reference(mr, index=6))
    first = image(get(base, mr, contentType="image/png"))
    assert close(first, reference(mr, index=0))
    gif = get(base, mr, contentType="image/gif")  # no frameNumber: every frame, animated
    assert Image.open(io.BytesIO(gif.content)).n_frames == 10


def test_image_quality(base):
    ct = FILES["CT_small.dcm"]
    low = get(base, ct, contentType="image/jpeg", imageQuality=5)
    high = get(base, ct, contentType="image/jpeg", imageQuality=100)
    assert low.status_code == high.status_code == 200
    assert len(low.content) < len(high.content)


def test_ignored_parameters(base):
    """annotation, charset and presentation states are accepted and ignored; so are unknown
    parameters (PS3.18 8.3)."""
    mr = FILES["MR_small.dcm"]
    plain = get(base, mr, contentType="image/png").content
    r = get(
        base, mr, contentType="image/png", annotation="patient,technique", charset="UTF-8", foo=1
    )
    assert r.status_code == 200 and r.content == plain


def test_browser_and_urllib_clients(base):
    """An <img src> (browser Accept), a page navigation, and Python's urllib (no Accept at
    all) with an encoded slash in contentType."""
    ct = FILES["CT_small.dcm"]
    assert get(base, ct, accept=BROWSER_IMG).headers["content-type"] == "image/jpeg"
    assert get(base, ct, accept=BROWSER_PAGE).headers["content-type"] == "image/jpeg"
    url = base + "/wado" + query(ct, contentType="application%2Fdicom")
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.headers["Content-Type"] == "application/dicom"
        body = r.read()
    assert read(body).SOPInstanceUID == ct.sop
    url = base + "/wado" + query(ct, contentType="image%2Fpng", rows=16)
    with urllib.request.urlopen(url, timeout=60) as r:
        assert Image.open(io.BytesIO(r.read())).size == (16, 16)


def test_every_api_version_serves_it(base):
    ct = FILES["CT_small.dcm"]
    bodies = {
        path: get(base, ct, path=path, contentType="application/dicom").content
        for path in ("/wado", "/v1/wado", "/v2/wado")
    }
    assert len(set(bodies.values())) == 1
    assert get(base, ct, path="/v2/wado").headers["api-supported-versions"] == "1, 2"


def test_conditional_requests(base):
    ct = FILES["CT_small.dcm"]
    for params in ({"contentType": "application/dicom"}, {"contentType": "image/png"}):
        r = get(base, ct, **params)
        etag = r.headers["etag"]
        again = httpx.get(base + "/wado" + query(ct, **params), headers={"If-None-Match": etag})
        assert again.status_code == 304
    # another rendering is another representation: not 304
    other = httpx.get(
        base + "/wado" + query(ct, contentType="image/png", rows=8),
        headers={"If-None-Match": etag},
    )
    assert other.status_code == 200


def bad(f, params: dict) -> str:
    return "/wado?" + "&".join(f"{k}={v}" for k, v in params.items())


def uids(f) -> dict:
    return {"requestType": "WADO", "studyUID": f.study, "seriesUID": f.series, "objectUID": f.sop}


BAD = {  # what is wrong: the parameters changed from a good request (None: left out)
    "no requestType": {"requestType": None},
    "another requestType": {"requestType": "WADO-RS"},
    "no studyUID": {"studyUID": None},
    "no objectUID": {"objectUID": None},
    "an invalid UID": {"seriesUID": "1.2.abc"},
    "an empty contentType": {"contentType": ""},
    "frameNumber 0": {"contentType": "image/png", "frameNumber": "0"},
    "frameNumber past the last": {"frameNumber": "11"},
    "frameNumber not a number": {"frameNumber": "first"},
    "rows not a number": {"rows": "tall"},
    "columns too large": {"columns": "100000"},
    "region of three values": {"region": "0,0,1"},
    "region reversed": {"region": "0.5,0,0.2,1"},
    "region outside": {"region": "0,0,1.5,1"},
    "windowCenter alone": {"windowCenter": "40"},
    "windowWidth 0": {"windowCenter": "40", "windowWidth": "0"},
    "windowWidth not a number": {"windowCenter": "40", "windowWidth": "wide"},
    "imageQuality 0": {"imageQuality": "0"},
    "imageQuality 101": {"imageQuality": "101"},
    "objectUID twice": {"objectUID": "1.2.3&objectUID=1.2.4"},
    "rendering with application/dicom": {"contentType": "application/dicom", "rows": "64"},
    "transferSyntax with an image": {
        "contentType": "image/jpeg",
        "transferSyntax": codecs.EXPLICIT_VR_LE,
    },
    "anonymize=no": {"anonymize": "no"},
    "anonymize twice": {"anonymize": "yes&anonymize=yes"},
}


@pytest.mark.parametrize("case", BAD)
def test_bad_parameters_are_400(base, case):
    f = FILES["emri_small_jpeg_2k_lossless.dcm"]
    params = {**uids(f), **BAD[case]}
    r = httpx.get(base + bad(f, {k: v for k, v in params.items() if v is not None}))
    assert r.status_code == 400, (case, r.status_code, r.text)
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 400 and problem["detail"]


def test_unknown_instances_are_404(base):
    ct, mr = FILES["CT_small.dcm"], FILES["MR_small.dcm"]
    for changed in (
        {"objectUID": "1.2.3.4.5"},
        {"studyUID": "1.2.3.4.5"},
        {"seriesUID": mr.series},  # the instance exists, but not in this series
    ):
        r = httpx.get(base + bad(ct, {**uids(ct), **changed}))
        assert r.status_code == 404, r.text
        assert r.json()["status"] == 404


def test_audited_as_a_read_of_the_instance(base):
    mr = FILES["MR_small.dcm"]
    assert get(base, mr, contentType="image/png").status_code == 200
    entries = httpx.get(base + "/v2/audit", params={"study": mr.study, "limit": 1000}).json()
    mine = [e for e in entries if e["path"] == "/wado" and e["route"] == "wado-uri"]
    assert mine, entries
    last = mine[-1]
    assert last["action"] == "read" and last["status"] == 200
    assert (last["seriesInstanceUid"], last["sopInstanceUid"]) == (mr.series, mr.sop)
