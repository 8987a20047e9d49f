"""Transcoding through the real app: every test file x every syntax it can be converted to.

Lossless targets must give exactly the pixels pydicom decodes from the original; lossy ones must
stay above a PSNR floor and say they are lossy (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import io
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.dicom import codecs
from dicomhub.dicom.uids import is_valid_uid
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.dicomfiles import TestFile, read, storable_files
from tests.helpers import stow

MAX_SIZE = 3 * 1024**2  # larger files are covered by the frame-by-frame tests


def pixel_files() -> list[tuple[TestFile, codecs.PixelInfo, np.ndarray]]:
    out = []
    for f in storable_files(extra=True):
        if len(f.data) > MAX_SIZE or not all(map(is_valid_uid, (f.study, f.series, f.sop))):
            continue
        ds = f.dataset()
        info = codecs.PixelInfo.of(ds) if "PixelData" in ds else None
        if info is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = ds.pixel_array
        except Exception:  # pydicom cannot decode it either: not a conversion case
            continue
        out.append((f, info, reference))
    return out


FILES = pixel_files()
CASES = [
    pytest.param(f, info, reference, target, id=f"{f.name}->{target}")
    for f, info, reference in FILES
    for target in codecs.TARGETS
    if target != str(f.dataset().file_meta.TransferSyntaxUID)
    and codecs.cannot_encode(info, str(f.dataset().file_meta.TransferSyntaxUID), target) is None
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    data = tmp_path_factory.mktemp("transcoding")
    settings = Settings(data_dir=str(data), blob_url="memory://", conversion_workers=2)
    with TestClient(create_app(settings, build_archive(settings))) as client:
        for start in range(0, len(FILES), 20):
            r = stow(client, *[f.data for f, _, _ in FILES[start : start + 20]])
            assert r.status_code in (200, 202), r.text
        yield client


def instance_url(f: TestFile) -> str:
    return f"/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}"


def psnr(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10((2**bits - 1) ** 2 / mse)


@pytest.mark.parametrize("f, info, reference, target", CASES)
def test_instance_in_every_target(loaded, f, info, reference, target):
    r = loaded.get(
        instance_url(f), headers={"Accept": f"application/dicom; transfer-syntax={target}"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    out = read(r.content)
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == f.sop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = out.pixel_array
    assert pixels.shape == reference.shape
    syntax = codecs.SYNTAXES[target]
    source_lossy = codecs.SYNTAXES[str(f.dataset().file_meta.TransferSyntaxUID)].lossy
    if syntax.lossy:
        assert psnr(pixels, reference, min(info.bits_stored, 12)) > 30
        assert out.LossyImageCompression == "01"
        assert syntax.method in list(np.atleast_1d(out.LossyImageCompressionMethod))
        ratio = float(np.atleast_1d(out.LossyImageCompressionRatio)[-1])
        assert ratio > (1 if info.rows * info.columns >= 64 * 64 else 0)
    else:
        assert np.array_equal(pixels, reference)
        if source_lossy:
            assert out.LossyImageCompression == "01"


MULTIFRAME = "emri_small_jpeg_2k_lossless.dcm"  # 10 frames of 16-bit MR
FRAME_TARGETS = [
    ("image/jp2", "1.2.840.10008.1.2.4.90"),
    ("image/jls", "1.2.840.10008.1.2.4.80"),
    ("image/dicom-rle", "1.2.840.10008.1.2.5"),
    ("image/jpeg", "1.2.840.10008.1.2.4.70"),
    ("image/jphc", "1.2.840.10008.1.2.4.201"),
    ("application/octet-stream", "1.2.840.10008.1.2.1"),
]


def by_name(name: str):
    return next((f, info, ref) for f, info, ref in FILES if f.name == name)


def frame_parts(response) -> list[tuple[str, bytes]]:
    from tests.test_wado import parts

    return [(head["content-type"], body) for head, body in parts(response)]


@pytest.mark.parametrize("media, syntax", FRAME_TARGETS)
def test_frames_in_each_media_type(loaded, media, syntax):
    f, info, reference = by_name(MULTIFRAME)
    r = loaded.get(
        instance_url(f) + "/frames/3,1,10", headers={"Accept": f'multipart/related; type="{media}"'}
    )
    assert r.status_code == 200, r.text
    got = frame_parts(r)
    assert [ctype for ctype, _ in got] == [f"{media}; transfer-syntax={syntax}"] * 3
    for (_, data), number in zip(got, (3, 1, 10), strict=True):
        array, _ = codecs.decode(info, syntax, data)
        assert np.array_equal(array, reference[number - 1])


def test_single_frame_as_jpeg_baseline_with_quality_attributes(loaded):
    f, info, reference = by_name("SC_rgb.dcm")
    accept = "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    r = loaded.get(instance_url(f) + "/frames/1", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["content-type"] == accept
    assert r.content[:2] == b"\xff\xd8"
    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert psnr(decoded, reference, 8) > 30


def test_ohif_frame_request_gets_the_stored_bytes(loaded):
    f, _, _ = by_name(MULTIFRAME)
    from pydicom.encaps import generate_frames

    stored = list(generate_frames(f.dataset().PixelData, number_of_frames=10))
    r = loaded.get(
        instance_url(f) + "/frames/2",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert r.status_code == 200
    [(ctype, data)] = frame_parts(r)
    assert ctype == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert data == stored[1]


def test_pixel_bulkdata_negotiates_like_frames(loaded):
    f, info, reference = by_name("CT_small.dcm")
    r = loaded.get(
        instance_url(f) + "/bulkdata/7FE00010",
        headers={"Accept": 'multipart/related; type="image/jp2"'},
    )
    assert r.status_code == 200, r.text
    [(ctype, data)] = frame_parts(r)
    assert ctype == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert np.array_equal(codecs.decode(info, codecs.J2K_LOSSLESS, data)[0], reference)


def test_what_cannot_be_produced_is_406(loaded):
    f, _, _ = by_name("CT_small.dcm")  # 16-bit: never JPEG baseline
    accept = "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    r = loaded.get(instance_url(f) + "/frames/1", headers={"Accept": accept})
    assert r.status_code == 406
    assert "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90" in r.json()["detail"]
    r = loaded.get(instance_url(f), headers={"Accept": "application/dicom; " + accept[12:]})
    assert r.status_code == 406


def test_a_dead_conversion_worker_is_a_500_not_a_406(loaded):
    """A worker process that dies (a codec crashing it, the OOM killer) is the server's
    failure: 500, which monitoring sees, not 406; the next request gets a new pool."""
    f, _, _ = by_name("CT_small.dcm")
    accept = {"Accept": "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"}
    assert loaded.get(instance_url(f) + "/frames/1", headers=accept).status_code == 200
    workers = [
        int(c)
        for c in Path(f"/proc/{os.getpid()}/task").glob("*/children")
        for c in c.read_text().split()
    ]
    workers = [p for p in workers if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    r = loaded.get(instance_url(f) + "/frames/1", headers=accept)
    assert r.status_code == 500, r.text
    assert "worker process died" in r.json()["detail"]
    assert loaded.get(instance_url(f) + "/frames/1", headers=accept).status_code == 200


def test_study_retrieve_converts_each_instance(loaded):
    f, _, _ = by_name("CT_small.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5'
    r = loaded.get(f"/v2/studies/{f.study}", headers={"Accept": accept})
    assert r.status_code == 200
    got = frame_parts(r)
    assert got and all(c.endswith("transfer-syntax=1.2.840.10008.1.2.5") for c, _ in got)
    assert "content-length" not in r.headers  # converted on the fly: chunked


def test_large_multiframe_converted_frame_by_frame(tmp_path):
    """60 frames of 256x256 16-bit, converted to JPEG 2000 and back: every frame exact; and
    an instance over max_conversion_size gets 406 naming transfer-syntax=*."""
    from pydicom.uid import generate_uid

    from tests.dicomfiles import load

    ds = read(load("CT_small.dcm"))
    frames = np.random.default_rng(7).integers(0, 4096, (60, 256, 256), dtype=np.uint16)
    ds.Rows = ds.Columns = 256
    ds.NumberOfFrames = 60
    ds.PixelRepresentation = 0
    ds.BitsStored, ds.HighBit = 12, 11
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = frames.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    f = TestFile("big", data, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    url = instance_url(f)
    for limit, expect in ((1 << 30, 200), (1 << 20, 406)):
        settings = Settings(
            data_dir=str(tmp_path / str(limit)), blob_url="memory://", max_conversion_size=limit
        )
        with TestClient(create_app(settings, build_archive(settings))) as client:
            assert stow(client, data).status_code == 200
            accept = "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"
            r = client.get(url, headers={"Accept": accept})
            assert r.status_code == expect
            if expect == 406:
                assert "transfer-syntax=*" in r.json()["detail"]
                continue
            out = read(r.content)
            assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
            assert np.array_equal(out.pixel_array, frames)


def test_corrupt_pixel_data_is_406_never_500(tmp_path):
    """A frame no codec can decode: conversion and rendering answer 406; as stored it still
    comes back byte for byte."""
    from pydicom.encaps import encapsulate

    from tests.dicomfiles import load

    ds = read(load("MR_small_jp2klossless.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 8])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    f = TestFile("corrupt", data, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://")
    with TestClient(create_app(settings, build_archive(settings))) as client:
        assert stow(client, data).status_code == 200
        for path, accept in (
            ("", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
            ("/frames/1", "application/octet-stream"),
            ("/rendered", "image/png"),
            ("/thumbnail", "image/jpeg"),
        ):
            r = client.get(instance_url(f) + path, headers={"Accept": accept})
            assert r.status_code == 406, (path, r.status_code, r.text)
            assert "could not be converted" in r.json()["detail"]
        r = client.get(instance_url(f), headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize(
    "syntax",
    [
        codecs.JPEG_LOSSLESS,  # no test file holds these: made here, then stored and decoded
        codecs.HTJ2K_LOSSLESS,
        codecs.HTJ2K_LOSSLESS_RPCL,
        codecs.HTJ2K,
    ],
)
def test_stored_syntaxes_without_test_files_are_decoded(tmp_path, syntax):
    from pydicom.encaps import encapsulate

    from tests.dicomfiles import load

    ds = read(load("CT_small.dcm"))
    info = codecs.PixelInfo.of(ds)
    original = ds.pixel_array
    encoder = codecs.HTJ2K_LOSSLESS if syntax == codecs.HTJ2K_LOSSLESS_RPCL else syntax
    data, out = codecs.encode(info, original, info.photometric, encoder, None)
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8.9.1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    f = TestFile(
        "made", buffer.getvalue(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://")
    with TestClient(create_app(settings, build_archive(settings))) as client:
        assert stow(client, f.data).status_code == 200
        r = client.get(instance_url(f), headers={"Accept": "application/dicom"})
        assert r.headers["content-type"].endswith(
            codecs.EXPLICIT_VR_LE if not codecs.SYNTAXES[syntax].lossy else syntax
        )
        r = client.get(
            instance_url(f),
            headers={"Accept": f"application/dicom; transfer-syntax={codecs.EXPLICIT_VR_LE}"},
        )
        assert r.status_code == 200
        pixels = read(r.content).pixel_array
        if codecs.SYNTAXES[syntax].lossy:
            assert psnr(pixels, original, info.bits_stored) > 30
        else:
            assert np.array_equal(pixels, original)


def test_video_is_rendered_as_itself(tmp_path):
    from pydicom.encaps import encapsulate

    from tests.dicomfiles import load

    ds = read(load("SC_rgb.dcm"))
    stream = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8.9.2"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    f = TestFile(
        "video", buffer.getvalue(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://")
    with TestClient(create_app(settings, build_archive(settings))) as client:
        assert stow(client, f.data).status_code == 200
        r = client.get(instance_url(f) + "/rendered", headers={"Accept": "video/mp4"})
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        assert r.content == stream
        assert (
            client.get(instance_url(f) + "/rendered", headers={"Accept": "image/jpeg"}).status_code
            == 406
        )
        # video cannot be converted: asked for uncompressed, it stays as stored (it is lossy)
        r = client.get(instance_url(f), headers={"Accept": "application/dicom"})
        assert r.headers["content-type"].endswith("1.2.840.10008.1.2.4.102") and r.content == f.data


def test_study_part_that_cannot_be_converted_goes_as_stored(tmp_path):
    """In a multipart response an instance whose image does not fit the asked syntax (16-bit
    CT as JPEG baseline) goes as stored, its part saying so; the 8-bit one is converted."""
    from tests.dicomfiles import load, with_new_uids

    ct = load("CT_small.dcm")
    rgb = with_new_uids(load("SC_rgb.dcm"), study=read(ct).StudyInstanceUID)
    settings = Settings(data_dir=str(tmp_path), blob_url="memory://")
    with TestClient(create_app(settings, build_archive(settings))) as client:
        assert stow(client, ct, rgb).status_code == 200
        accept = (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        )
        r = client.get(f"/v2/studies/{read(ct).StudyInstanceUID}", headers={"Accept": accept})
        assert r.status_code == 200
        got = {read(body).SOPInstanceUID: (ctype, body) for ctype, body in frame_parts(r)}
        ctype, body = got[read(ct).SOPInstanceUID]
        assert ctype.endswith("1.2.840.10008.1.2.1") and body == ct  # as stored
        ctype, body = got[read(rgb).SOPInstanceUID]
        assert ctype.endswith("1.2.840.10008.1.2.4.50")
        assert read(body).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
