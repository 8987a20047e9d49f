"""The fast JSON path gives exactly what pydicom gives, for every element it takes on."""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement

from dicomhub.dicom import fast_json
from dicomhub.dicom.json_model import _charset, _raw_vr, _validate


def _elements(ds, plain=True):
    if 0x00080005 in ds._dict:
        plain = plain and _charset(ds) in fast_json.PLAIN_CHARSETS
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and plain and isinstance(raw.value, bytes):
            yield ds, tag, raw
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item, plain)


def _files():
    out = []
    for path in sorted(get_testdata_files("**/*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((path, pydicom.dcmread(path, defer_size=1024)))
        except Exception:
            continue
    return out


def test_equal_to_pydicom():
    taken = implicit = 0
    for path, ds in _files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for parent, tag, raw in list(_elements(ds)):
                vr, certain = _raw_vr(raw, parent, None)
                if not certain:  # ambiguous, private or unknown: pydicom's path
                    continue
                implicit += raw.VR is None
                fast = fast_json.encode(vr, raw.value, raw.is_little_endian)
                if fast is None:
                    continue
                taken += 1
                elem = parent[tag]
                assert _validate(elem) is None, (path, hex(tag))
                assert fast == elem.to_json_dict(None, 0), (path, hex(tag), raw.value[:80])
    assert taken > 1000 and implicit > 100  # the fast path does take on most elements


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", b"2024-01-01"),  # invalid: pydicom's path reports it
        ("PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B"),  # PN groups and escape codes
        ("IS", b"1.0 "),  # IS that is not a plain integer
        ("DS", b"nan"),
        ("FD", b"\x00\x00\x00\x00\x00\x00\xf8\x7f"),  # NaN
        ("CS", b"A\\\\B"),  # an empty value among several
        ("LO", "Müller".encode("latin-1")),  # not ASCII: the character set decides
        ("US", b"\x01\x00\x02"),  # odd length
        ("OB", b"\x00\x01"),
    ],
)
def test_leaves_the_rest_to_pydicom(vr, value):
    assert fast_json.encode(vr, value, True) is None


def test_values():
    assert fast_json.encode("CS", b"ORIGINAL\\PRIMARY ", True) == {
        "vr": "CS",
        "Value": ["ORIGINAL", "PRIMARY"],
    }
    assert fast_json.encode("DS", b"0.5\\-2 ", True) == {"vr": "DS", "Value": [0.5, -2.0]}
    assert fast_json.encode("IS", b" 12 ", True) == {"vr": "IS", "Value": [12]}
    assert fast_json.encode("PN", b"Doe^John ", True) == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Doe^John"}],
    }
    assert fast_json.encode("US", b"\x00\x02", False) == {"vr": "US", "Value": [2]}
    assert fast_json.encode("LO", b"", True) == {"vr": "LO"}
