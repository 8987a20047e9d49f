"""A large upload streams through: the server's memory does not grow with the request."""

from __future__ import annotations

import struct

import httpx

from tests.conftest import running_server
from tests.dicomfiles import load, read
from tests.helpers import peak_rss_mb

SIZE = 512 * 1024 * 1024  # pixel data bytes


def _large_file() -> tuple[bytes, bytes, int]:
    """Head and tail of an Explicit VR LE file whose Pixel Data value is SIZE bytes of zeros."""
    ds = read(load("CT_small.dcm"))
    del ds.PixelData
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 1024, 16, 16, 15
    ds.NumberOfFrames = SIZE // (1024 * 1024 * 2)
    import io

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    header = out.getvalue() + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, SIZE)
    return header, ds.SOPInstanceUID, ds


def test_half_a_gigabyte_upload_and_download_stream(tmp_path):
    header, sop, ds = _large_file()

    def body():
        yield header
        chunk = bytes(8 * 1024 * 1024)
        for _ in range(SIZE // len(chunk)):
            yield chunk

    with running_server(tmp_path) as (url, proc):
        baseline = peak_rss_mb(proc.pid)
        r = httpx.post(
            url + "/v2/studies",
            content=body(),
            headers={"Content-Type": "application/dicom"},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        frames = ds.NumberOfFrames
        inst = (
            f"{url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}"
        )
        total = 0
        with httpx.stream("GET", inst, headers={"Accept": "application/dicom"}, timeout=300) as s:
            assert s.status_code == 200
            for chunk in s.iter_bytes():
                total += len(chunk)
        assert total == len(header) + SIZE
        last = httpx.get(
            f"{inst}/frames/{frames}", headers={"Accept": "application/octet-stream"}, timeout=60
        )
        assert last.status_code == 200 and len(last.content) == 1024 * 1024 * 2
        grown = peak_rss_mb(proc.pid) - baseline
        assert grown < 100, f"server grew by {grown:.0f} MB for a {SIZE >> 20} MB instance"
