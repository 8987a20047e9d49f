"""End to end: transcoded frames and instances, rendered images and thumbnails from a running
`dicomhub serve`, through dicomweb-client and the exact requests OHIF sends."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames

from dicomhub.dicom import codecs
from tests.dicomfiles import storable_files
from tests.helpers import store_files
from tests.test_rendered import close, frame_of, reference

NAMES = ("CT_small.dcm", "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm", "MR_small.dcm")
FILES = {f.name: f for f in storable_files(extra=True) if f.name in NAMES}


@pytest.fixture(scope="module")
def dw(server):
    client = DICOMwebClient(server["url"] + "/v2")
    store_files(server["url"], *(f.data for f in FILES.values()))
    return client


def ids(f):
    return f.study, f.series, f.sop


def test_frames_converted_for_dicomweb_client(dw):
    ct = FILES["CT_small.dcm"]
    info = codecs.PixelInfo.of(ct.dataset())
    [jp2] = dw.retrieve_instance_frames(
        *ids(ct), frame_numbers=[1], media_types=(("image/jp2", codecs.J2K_LOSSLESS),)
    )
    assert np.array_equal(codecs.decode(info, codecs.J2K_LOSSLESS, jp2)[0], frame_of(ct.dataset()))
    mr = FILES["emri_small_jpeg_2k_lossless.dcm"]
    raw = dw.retrieve_instance_frames(
        *ids(mr),
        frame_numbers=[2, 5],
        media_types=(("application/octet-stream", codecs.EXPLICIT_VR_LE),),
    )
    expected = [frame_of(mr.dataset(), n).astype("<u2").tobytes() for n in (1, 4)]
    assert [bytes(r) for r in raw] == expected


def test_instance_converted_for_dicomweb_client(dw):
    us = FILES["US1_J2KR.dcm"]
    ds = dw.retrieve_instance(*ids(us), media_types=(("application/dicom", codecs.JPEG_LS),))
    assert ds.file_meta.TransferSyntaxUID == codecs.JPEG_LS
    assert np.array_equal(ds.pixel_array, us.dataset().pixel_array)


def test_rendered_for_dicomweb_client(dw):
    mr = FILES["MR_small.dcm"]
    image = dw.retrieve_instance_rendered(
        *ids(mr), media_types=("image/png",), params={"window": "600,800,linear"}
    )
    got = np.asarray(Image.open(io.BytesIO(image)))
    assert close(got, reference(mr, (600.0, 800.0, "LINEAR")))
    frame = dw.retrieve_instance_frames_rendered(
        *ids(FILES["emri_small_jpeg_2k_lossless.dcm"]),
        frame_numbers=[3],
        media_types=("image/png",),
    )
    got = np.asarray(Image.open(io.BytesIO(frame)))
    assert close(got, reference(FILES["emri_small_jpeg_2k_lossless.dcm"], index=2))


def test_what_ohif_sends(server, dw):
    """OHIF's frame request (stored bytes, typed with their syntax) and its thumbnails."""
    mr = FILES["emri_small_jpeg_2k_lossless.dcm"]
    base = f"{server['url']}/v2/studies/{mr.study}/series/{mr.series}"
    r = httpx.get(
        f"{base}/instances/{mr.sop}/frames/4",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert r.status_code == 200
    assert "transfer-syntax=1.2.840.10008.1.2.4.90" in r.text[:400]
    stored = list(generate_frames(mr.dataset().PixelData, number_of_frames=10))[3]
    assert stored in r.content
    thumb = httpx.get(f"{base}/thumbnail", headers={"Accept": "image/jpeg"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
