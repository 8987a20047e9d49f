"""Rendered images and thumbnails through the real app, against references computed with
pydicom + numpy: modality LUT, window (stored, requested, each function), VOI LUT, MONOCHROME1,
palette and YCbCr colour, viewport, quality, GIF, documents, video and the thumbnail cache."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.dicomfiles import TestFile, load, read, storable_files, with_new_uids
from tests.helpers import stow
from tests.test_wado import parts

NAMES = [
    "CT_small.dcm",  # rescale, no stored window: the frame's range
    "MR_small.dcm",  # stored window
    "MR_small_jp2klossless.dcm",
    "mlut_18.dcm",  # modality LUT
    "vlut_04.dcm",  # VOI LUT
    "RG3_J2KR.dcm",  # MONOCHROME1
    "OBXXXX1A.dcm",  # palette colour
    "US1_J2KR.dcm",  # YBR_RCT colour
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL
    "liver.dcm",  # 1-bit, 3 frames, enhanced
    "emri_small_jpeg_2k_lossless.dcm",  # 10 frames
    "SC_rgb_small_odd_big_endian.dcm",  # 8-bit RGB in big endian OW, odd length
]
FILES = {f.name: f for f in storable_files(extra=True) if f.name in NAMES}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("rendered")
    settings = Settings(data_dir=str(data), blob_url=f"file://{data}/blobs", delete_delay=0)
    with TestClient(create_app(settings, build_archive(settings))) as c:
        assert stow(c, *[f.data for f in FILES.values()]).status_code == 200
        c.blobs_dir = data / "blobs"
        yield c


def url(f: TestFile, suffix: str = "") -> str:
    return f"/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}{suffix}"


def png(client, path: str, accept: str = "image/png") -> np.ndarray:
    r = client.get(path, headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == accept
    return np.asarray(Image.open(io.BytesIO(r.content)))


def frame_of(ds, index: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    return arr[index] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr


def reference(f: TestFile, window=None, index: int = 0) -> np.ndarray:
    """What a viewer shows, computed with pydicom's own LUT functions."""
    ds = f.dataset()
    arr = frame_of(ds, index)
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb
    if ds.SamplesPerPixel == 3:
        return arr
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window is None and "VOILUTSequence" in ds:
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        out = np.rint(apply_voi_lut(values, ds) / (2**bits - 1) * 255)
    else:
        if window is None and "WindowCenter" not in ds:  # no window: the frame's range
            low, high = values.min(), values.max()
            window = ((low + high) / 2, high - low, "LINEAR_EXACT")
        if window is not None:
            ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window
        y = apply_windowing(values, ds)
        low, high = _output_range(ds)
        out = np.rint((y - low) / (high - low) * 255)
    out = out.astype(np.uint8)
    return 255 - out if pi == "MONOCHROME1" else out


def _output_range(ds) -> tuple[float, float]:
    """apply_windowing's output range (pydicom: PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    bits = ds.BitsStored
    low, high = (
        (0, 2**bits - 1)
        if ds.PixelRepresentation == 0
        else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low = low * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        high = high * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return low, high


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


@pytest.mark.parametrize("name", NAMES)
def test_default_rendering_matches_pydicom(client, name):
    f = FILES[name]
    got = png(client, url(f, "/rendered"))
    expected = reference(f)
    if got.ndim == 2 and expected.ndim == 2:
        assert close(got, expected)
    else:
        assert close(got.reshape(expected.shape), expected)


def _implicit(name: str) -> TestFile:
    """A test file re-encoded as Implicit VR Little Endian (what C-STORE commonly delivers),
    with file meta added where it had none, under new UIDs."""
    from pydicom.data import get_testdata_file
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    ds = read(open(get_testdata_file(name), "rb").read(), force=True)  # noqa: SIM115
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return TestFile(
        name, out.getvalue(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )


@pytest.mark.parametrize(
    "name", ["gdcm-US-ALOKA-16.dcm", "OT-PAL-8-face.dcm", "vlut_04.dcm", "mlut_18.dcm"]
)
def test_implicit_vr_palettes_and_luts_render(client, name):
    """Palette descriptors and LUT items of an Implicit VR instance reach the renderer with
    their values and byte order: the image matches pydicom's, and so does the thumbnail's
    existence."""
    f = _implicit(name)
    assert stow(client, f.data).status_code in (200, 202)
    got = png(client, url(f, "/rendered"))
    expected = reference(f)
    assert close(got.reshape(expected.shape), expected)
    thumb = client.get(url(f, "/thumbnail"), headers={"Accept": "image/jpeg"})
    assert thumb.status_code == 200, thumb.text


def test_an_invalid_image_pixel_module_is_named(client):
    """badVR.dcm has pixel data but NumberOfFrames '1A': 406 saying so, not 'no pixel data'."""
    f = next(f for f in storable_files() if f.name == "badVR.dcm")
    assert stow(client, f.data).status_code in (200, 202)
    for suffix in ("/rendered", "/thumbnail"):
        r = client.get(url(f, suffix), headers={"Accept": "image/jpeg"})
        assert r.status_code == 406, r.text
        assert "NumberOfFrames '1A' is not an integer" in r.json()["detail"]


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG3_J2KR.dcm", "mlut_18.dcm"])
def test_requested_window(client, name, function):
    f = FILES[name]
    values = apply_modality_lut(frame_of(f.dataset()), f.dataset())
    center, width = float(np.percentile(values, 40)), float(np.ptp(values) / 3 or 1)
    got = png(client, url(f, f"/rendered?window={center},{width},{function}"))
    expected = reference(f, (center, width, function.upper().replace("-", "_")))
    assert close(got, expected)


def test_frames_rendered_each_frame(client):
    f = FILES["emri_small_jpeg_2k_lossless.dcm"]
    got = png(client, url(f, "/frames/7/rendered"))
    assert close(got, reference(f, index=6))
    r = client.get(url(f, "/frames/2,3/rendered"), headers={"Accept": "image/png"})
    assert r.status_code == 200
    images = [np.asarray(Image.open(io.BytesIO(body))) for _, body in parts(r)]
    assert [close(i, reference(f, index=n)) for i, n in zip(images, (1, 2), strict=True)] == [1, 1]


def test_gif_animates_every_frame(client):
    f = FILES["emri_small_jpeg_2k_lossless.dcm"]
    r = client.get(url(f, "/rendered"), headers={"Accept": "image/gif"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert Image.open(io.BytesIO(r.content)).n_frames == 10


def test_viewport_crops_flips_and_fits(client):
    f = FILES["MR_small.dcm"]  # 64 x 64
    expected = reference(f)
    assert png(client, url(f, "/rendered?viewport=40,20")).shape == (20, 20)
    region = png(client, url(f, "/rendered?viewport=30,20,10,5,30,20"))
    assert close(region, expected[5:25, 10:40])
    flipped = png(client, url(f, "/rendered?viewport=30,20,40,5,-30,20"))
    assert close(flipped, expected[5:25, 10:40][:, ::-1])


def test_quality_changes_the_jpeg(client):
    f = FILES["US1_J2KR.dcm"]
    low = client.get(url(f, "/rendered?quality=5"), headers={"Accept": "image/jpeg"})
    high = client.get(url(f, "/rendered?quality=95"), headers={"Accept": "image/jpeg"})
    assert low.headers["content-type"] == "image/jpeg"
    assert len(low.content) < len(high.content) / 2


@pytest.mark.parametrize(
    "query",
    [
        "quality=0",
        "quality=101",
        "quality=x",
        "window=1",
        "window=1,0",
        "window=a,b",
        "window=1,2,cubic",
        "viewport=0,10",
        "viewport=1,2,3",
        "viewport=10,10,500,500,10,10",
        "window=nan,2",
    ],
)
def test_bad_parameters_are_400(client, query):
    r = client.get(url(FILES["MR_small.dcm"], f"/rendered?{query}"))
    assert r.status_code == 400, (query, r.status_code, r.text)


def test_not_acceptable_and_not_found(client):
    f = FILES["MR_small.dcm"]
    assert client.get(url(f, "/rendered"), headers={"Accept": "image/tiff"}).status_code == 406
    assert client.get(url(f, "/frames/2/rendered")).status_code == 404
    no_pixels = next(f for f in storable_files() if "PixelData" not in f.dataset())
    assert stow(client, no_pixels.data).status_code == 200
    assert client.get(url(no_pixels, "/rendered")).status_code == 404
    assert client.get(url(no_pixels, "/thumbnail")).status_code == 404


def test_study_and_series_rendered_one_part_per_image(client):
    f = FILES["CT_small.dcm"]
    second = with_new_uids(f.data)
    stow(client, second)
    for path in (
        f"/v2/studies/{f.study}/rendered",
        f"/v2/studies/{f.study}/series/{f.series}/rendered",
    ):
        r = client.get(path, headers={"Accept": 'multipart/related; type="image/png"'})
        assert r.status_code == 200
        images = [np.asarray(Image.open(io.BytesIO(body))) for _, body in parts(r)]
        assert len(images) == 2 and all(close(i, reference(f)) for i in images)


def test_encapsulated_pdf_is_rendered_as_itself(client):
    ds = read(load("CT_small.dcm"))
    for keyword in [e.keyword for e in ds if e.tag.group in (0x0028, 0x7FE0)]:
        delattr(ds, keyword)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 20 + b"\n%%EOF\n"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = with_new_uids(buffer.getvalue())
    stow(client, data)
    d = read(data)
    f = TestFile("pdf", data, d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
    r = client.get(url(f, "/rendered"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    assert r.content == pdf
    assert client.get(url(f, "/rendered"), headers={"Accept": "image/jpeg"}).status_code == 406


def test_thumbnails_at_every_level_and_cached(client):
    f = FILES["MR_small.dcm"]
    for path in (
        f"/v2/studies/{f.study}/thumbnail",
        f"/v2/studies/{f.study}/series/{f.series}/thumbnail",
        url(f, "/thumbnail"),
        url(f, "/frames/1/thumbnail"),
    ):
        image = png(client, path)
        assert image.shape == (128, 128)
    small = png(client, url(f, "/thumbnail?viewport=32,32"))
    assert small.shape == (32, 32)
    # the default thumbnail is kept in the blob store beside the instance, once per media type
    # (its key is derived from the instance's version, which its ETag carries)
    version = client.get(url(f, "/metadata")).headers["etag"].strip('"')
    cached = list(client.blobs_dir.rglob(f"*_{version}.thumbnail.png"))
    assert len(cached) == 1
    assert np.array_equal(np.asarray(Image.open(cached[0])), png(client, url(f, "/thumbnail")))
    # deleting the instance deletes its cached thumbnail with its blob (cleanup job)
    assert client.delete(url(f)).status_code == 204
    assert client.portal.call(client.app.state.archive.cleanup.delete_due_blobs) >= 1
    assert not cached[0].exists()
