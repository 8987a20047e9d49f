"""Test data: pydicom's bundled files, made distinct where variants share UIDs."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from functools import cache

import pydicom
import pydicom.data
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import generate_uid

BUNDLED = os.path.dirname(pydicom.data.__file__)


@dataclass(frozen=True)
class TestFile:
    __test__ = False  # not a pytest test class
    name: str
    data: bytes
    study: str
    series: str
    sop: str

    def dataset(self) -> pydicom.Dataset:
        return read(self.data)


def read(data: bytes, **kwargs) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), **kwargs)


def _uids(ds) -> tuple[str, str, str]:
    return tuple(
        str(ds.get(k, "") or "").rstrip("\x00 ")
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )


def load(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def with_new_uids(data: bytes, study: str | None = None, series: str | None = None) -> bytes:
    """The same file with a fresh SOP Instance UID (and optionally study/series)."""
    ds = read(data)
    ds.SOPInstanceUID = generate_uid()
    if "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study:
        ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def every_test_file():
    """(path, bytes) of every file pydicom and pydicom-data ship, DICOM or not, in path order."""
    for path in sorted(get_testdata_files("**/*")):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                yield path, f.read()


@cache
def storable_files(extra: bool = False) -> tuple[TestFile, ...]:
    """Every bundled PS3.10 file with the three UIDs, each with a distinct SOP Instance UID;
    with ``extra``, also those of pydicom-data (more codecs, larger images)."""
    seen: set[str] = set()
    out = []
    for path, data in every_test_file():
        if not (extra or path.startswith(BUNDLED)):
            continue
        try:
            ds = read(data)
        except Exception:
            continue
        if not getattr(ds, "preamble", None) or not ds.file_meta.get("TransferSyntaxUID"):
            continue
        if "_truncated" in path or "PixelData" in ds and _truncated(ds, len(data)):
            continue
        study, series, sop = _uids(ds)
        if not (study and series and sop):
            continue
        if sop in seen:
            data = with_new_uids(data)
            study, series, sop = _uids(read(data))
        seen.add(sop)
        out.append(TestFile(path.rsplit("/", 1)[-1], data, study, series, sop))
    return tuple(out)


def _truncated(ds, size: int) -> bool:
    raw = ds._dict.get(0x7FE00010)
    return raw is not None and raw.length != 0xFFFFFFFF and raw.value_tell + raw.length > size
