"""Orthanc as a DICOMweb client of dicomhub (its DICOMweb plugin's remote servers): it stores to
dicomhub (STOW-RS, with its 73-character multipart boundary), searches it (QIDO-RS) and pulls
from it (WADO-RS), and what arrives on either side is what the other side holds."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from tests.components import Unavailable, orthanc
from tests.conftest import ran, running_server, unavailable
from tests.dicomfiles import load, read, with_new_uids
from tests.synthetic import uid

NAMES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """A dicomhub, and an Orthanc that knows it as the DICOMweb server ``dicomhub``."""
    with contextlib.ExitStack() as stack:
        base, _ = stack.enter_context(running_server(tmp_path_factory.mktemp("dicomhub")))
        dicomweb = {"Enable": True, "Root": "/dicom-web/", "Servers": {"dicomhub": [base + "/v2/"]}}
        try:
            url = stack.enter_context(
                orthanc(tmp_path_factory.mktemp("orthanc"), DicomWeb=dicomweb)
            )
        except Unavailable as exc:
            unavailable(exc)
        ran("Orthanc")
        yield url, base


def _dicomhub_file(base: str, data: bytes) -> httpx.Response:
    ds = read(data)
    return httpx.get(
        f"{base}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )


def _orthanc_files(url: str, study: str) -> list[bytes]:
    found = httpx.post(
        url + "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study}}
    ).json()
    return [httpx.get(f"{url}/instances/{i}/file").content for i in found]


def test_orthanc_stores_to_dicomhub(peers):
    url, base = peers
    files = [load(name) for name in NAMES]
    ids = [httpx.post(url + "/instances", content=data).json()["ParentStudy"] for data in files]
    r = httpx.post(
        url + "/dicom-web/servers/dicomhub/stow",
        timeout=120,
        json={"Resources": sorted(set(ids)), "Synchronous": True},
    )
    assert r.status_code == 200, r.text
    for name, data in zip(NAMES, files, strict=True):
        got = _dicomhub_file(base, data)
        assert got.status_code == 200, name
        assert got.content == data, name  # Orthanc sends the file it holds, byte for byte


def test_orthanc_searches_and_pulls_from_dicomhub(peers):
    url, base = peers
    data = with_new_uids(load("CT_small.dcm"), study=uid(61), series=uid(61, 1))
    ds = read(data)
    stored = httpx.post(
        base + "/v2/studies",
        content=data,
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
    )
    assert stored.status_code == 200, stored.text
    found = httpx.post(
        url + "/dicom-web/servers/dicomhub/get",
        timeout=60,
        json={"Uri": "/studies", "Arguments": {"StudyInstanceUID": ds.StudyInstanceUID}},
    )
    assert found.status_code == 200, found.text
    assert [s["0020000D"]["Value"] for s in found.json()] == [[ds.StudyInstanceUID]]
    pulled = httpx.post(
        url + "/dicom-web/servers/dicomhub/retrieve",
        timeout=120,
        json={"Resources": [{"Study": ds.StudyInstanceUID}], "Synchronous": True},
    )
    assert pulled.status_code == 200, pulled.text
    [held] = [read(f) for f in _orthanc_files(url, ds.StudyInstanceUID)]
    assert held == ds  # the same data set (Orthanc writes its own file meta group)
    assert held.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
