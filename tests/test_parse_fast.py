"""The common-file reader of ingest (dicom/parse.py ``_read_common``) gives exactly what
pydicom's dcmread gives, for every file it takes on among pydicom's and pydicom-data's test
files; it leaves the rest (big endian, deflated, files without preamble or meta, command
sets) to dcmread."""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement

from dicomhub.dicom.parse import _read_common, read_part10
from tests.dicomfiles import every_test_file


def _raw(ds) -> dict:
    """Each element as read: raw (deferred or not) or already converted by the reader."""
    return {
        int(tag): (elem.VR, elem.length, elem.value, elem.value_tell, elem.is_implicit_VR)
        if isinstance(elem, RawDataElement)
        else (elem.VR, ds[tag].value)
        for tag, elem in ds._dict.items()
    }


def _values(ds) -> dict:
    return {int(tag): ds[tag].value for tag in ds._dict}


def test_equal_to_dcmread():
    taken = declined = 0
    for path, data in every_test_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                slow = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
            except Exception:
                slow = None
            try:
                fast = _read_common(io.BytesIO(data), 1024)
            except Exception as exc:  # the fast reader fails only where dcmread does
                assert slow is None, (path, exc)
                continue
        if fast is None:
            declined += 1
            continue
        assert slow is not None, path
        taken += 1
        assert _raw(fast) == _raw(slow), path
        assert _values(fast.file_meta) == _values(slow.file_meta), path
        assert fast.original_encoding == slow.original_encoding, path
        for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # deferred values read back alike
            if tag in slow._dict:
                assert fast[tag].value == slow[tag].value, path
    assert taken > 100 and declined > 10, (taken, declined)  # most taken, the unusual not


def test_declined_files_are_read_by_dcmread():
    """A big endian file: declined, and read_part10 still reads it (through dcmread)."""
    [path] = get_testdata_files("MR_small_bigendian.dcm")
    with open(path, "rb") as f:
        data = f.read()
    assert _read_common(io.BytesIO(data), 1024) is None
    parsed = read_part10(io.BytesIO(data), len(data), 1024)
    assert parsed.transfer_syntax == "1.2.840.10008.1.2.2" and parsed.pixel is not None
