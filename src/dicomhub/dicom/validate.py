"""Value validation by VR (PS3.5 section 6.2). Returns a message, or None when the value is valid.

Used by STOW: v1 rejects an instance whose searchable attributes are invalid, v2 drops invalid
attributes from the index and metadata (keeping them in the stored file) and warns.
"""

from __future__ import annotations

import datetime
import re

from dicomhub.dicom.uids import is_valid_uid

_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UC": None}
_CS = re.compile(r"^[A-Z0-9 _]*$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_IS = re.compile(r"^ *[+-]?\d+ *$")
_DS = re.compile(r"^ *[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # ESC, TAB, LF, FF, CR are allowed


def validate_string(vr: str, value: str) -> str | None:
    """Validate one value (one item of a multi-valued string) of a string VR."""
    value = value.rstrip("\x00")
    if vr in ("UI",):
        return None if value == "" or is_valid_uid(value.strip()) else "is not a valid UID"
    if vr == "DA":
        return None if value.strip() == "" or valid_date(value.strip()) else "is not a date"
    if vr == "TM":
        return None if value.strip() == "" or _valid_time(value.strip()) else "is not a time"
    if vr == "DT":
        m = _DT.match(value.strip())
        return None if value.strip() == "" or (m and _valid_dt(m)) else "is not a date-time"
    if vr == "AS":
        return None if value.strip() == "" or _AS.match(value) else "is not an age string"
    if vr == "IS":
        if value.strip() and not (_IS.match(value) and -(2**31) <= int(value) < 2**31):
            return "is not an integer string"
        return None if len(value) <= 12 else "exceeds 12 characters"
    if vr == "DS":
        if value.strip() and not _DS.match(value):
            return "is not a decimal string"
        return None if len(value) <= 16 else "exceeds 16 characters"
    if vr == "CS" and not _CS.match(value.strip()):
        return "has characters other than A-Z, 0-9, space and underscore"
    limit = _MAX_LENGTH.get(vr)
    if limit and len(value) > limit:
        return f"exceeds {limit} characters"
    if vr == "PN":
        for group in value.split("="):
            if len(group) > 64:
                return "has a component group over 64 characters"
    if vr in ("AE", "CS", "SH", "LO", "PN", "UC") and _CONTROL.search(value):
        return "contains control characters"
    return None


def valid_date(value: str) -> bool:
    if len(value) != 8 or not value.isdigit():
        return False
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    m = _TM.match(value)
    if not m:
        return False
    hh, mm, ss = (int(g) if g else 0 for g in m.groups()[:3])
    return hh < 24 and mm < 60 and ss < 61  # 60: leap second


def _valid_dt(m: re.Match) -> bool:
    year, month, day, hh, mm, ss = (int(g) if g else None for g in m.groups()[:6])
    if month is not None and not 1 <= month <= 12:
        return False
    if day is not None:
        try:
            datetime.date(year, month, day)
        except ValueError:
            return False
    return (hh or 0) < 24 and (mm or 0) < 60 and (ss or 0) < 61
