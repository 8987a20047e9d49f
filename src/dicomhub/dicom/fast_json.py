"""The DICOM JSON of common elements straight from their encoded bytes (PS3.18 F.2).

Most attributes of an image are short ASCII strings and small binary numbers. Decoding them
through pydicom's data elements costs more than everything else at ingest, so ``encode`` handles
the plain cases itself and answers None for anything else (other character sets, escape codes,
empty values among several, PN groups, unusual number syntax, invalid values), which then takes
pydicom's path. For every element it does handle, the result equals pydicom's exactly (tested
over pydicom's own test files).
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

from dicomhub.dicom.validate import validate_string

PLAIN_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
SPLIT_TRIM = frozenset({"CS", "AS", "DA", "DT", "TM", "UI"})  # value.rstrip, then split
TRIM_EACH = frozenset({"SH", "LO", "UC"})  # split, then each value.rstrip
SINGLE = frozenset({"LT", "ST", "UT"})  # one value, backslashes are text
_INTEGER = re.compile(r"[+-]?\d{1,12}\Z")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def encode(vr: str, value: bytes, little_endian: bool) -> dict[str, Any] | None:
    """``{"vr", "Value"?}`` for ``value`` of ``vr``, or None when pydicom must decide."""
    if vr in BINARY:
        return _numbers(vr, value, little_endian)
    if not value.isascii() or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr in SPLIT_TRIM:
        items = text.rstrip("\x00 ").split("\\")
    elif vr in TRIM_EACH:
        items = [v.rstrip("\x00 ") for v in text.split("\\")]
    elif vr in SINGLE:
        items = [text.rstrip("\x00 ")]
    elif vr == "PN":
        items = text.rstrip("\x00 ").split("\\")
        if "=" in text:
            return None
    elif vr == "IS" or vr == "DS":
        items = text.strip().split("\\")
        pattern = _INTEGER if vr == "IS" else _DECIMAL
        if not all(pattern.match(v) for v in items):
            return None
    else:
        return None
    if len(items) == 1 and items[0] == "":
        return {"vr": vr}
    if "" in items:
        return None
    for item in items:
        if validate_string(vr, item):
            return None  # pydicom's path reports the invalid value
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in items]}
    if vr == "IS":
        return {"vr": vr, "Value": [int(v) for v in items]}
    if vr == "DS":
        numbers = [float(v) for v in items]
        return {"vr": vr, "Value": numbers} if all(map(math.isfinite, numbers)) else None
    return {"vr": vr, "Value": items}


def _numbers(vr: str, value: bytes, little_endian: bool) -> dict[str, Any] | None:
    code = BINARY[vr]
    size = struct.calcsize("<" + code)
    if len(value) % size:
        return None
    if not value:
        return {"vr": vr}
    numbers = list(
        struct.unpack(f"{'<' if little_endian else '>'}{len(value) // size}{code}", value)
    )
    if vr in ("FL", "FD") and not all(map(math.isfinite, numbers)):
        return None
    return {"vr": vr, "Value": numbers}
