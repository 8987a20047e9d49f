"""C-FIND identifiers (PS3.4 C.4.1) in QIDO-RS terms: an identifier becomes QIDO parameters (a
key with a value is a matching key, in the same DICOM matching syntax; an empty key is a return
key), and a QIDO result becomes a response identifier holding exactly the keys asked for."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomhub.dicom.levels import Level
from dicomhub.errors import InvalidRequest

LEVELS = {"STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
QUERY_LEVELS = ("PATIENT", *LEVELS)
SKIPPED = {0x00080005, 0x00080052, 0x00080054}  # charset, level, RetrieveAETitle


def query_level(identifier: Dataset) -> str:
    """The identifier's QueryRetrieveLevel (InvalidRequest: none of the four)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in QUERY_LEVELS:
        raise InvalidRequest(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    return level


def parameters(identifier: Dataset) -> list[tuple[str, str]]:
    """The QIDO-RS parameters of a C-FIND identifier."""
    params = []
    for elem in identifier:
        if elem.tag in SKIPPED or elem.tag.group == 0x0002:
            continue
        key = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            item = elem.value[0] if elem.value else None
            matched = [e for e in item if not e.is_empty] if item is not None else []
            for inner in matched:
                params.append((f"{key}.{inner.tag:08X}", _text(inner.value)))
            if not matched:
                params.append(("includefield", key))
        elif elem.is_empty:
            params.append(("includefield", key))
        else:
            params.append((key, _text(elem.value)))
    return params


def _text(value) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def response(identifier: Dataset, found: Dataset, level_name: str) -> Dataset:
    """The keys of ``identifier``, with the values ``found`` has (empty where it has none)."""
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = level_name
    for elem in identifier:
        if elem.tag in SKIPPED or elem.tag.group == 0x0002:
            continue
        if elem.tag in found:
            out.add(found[elem.tag])
        else:
            out.add_new(elem.tag, elem.VR, None)
    return out
