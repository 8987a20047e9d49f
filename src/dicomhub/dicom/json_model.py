"""DICOM JSON model (PS3.18 annex F.2) computed once at ingest.

Large binary values are not read: they become BulkDataURIs whose location in the stored file
(offset, length) is recorded, so ``/bulkdata`` is a ranged read. The URI is written with a
placeholder prefix that cannot occur in valid JSON (a raw control character) and is replaced by the
request's base URL when served, so stored metadata does not depend on the host name.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from dicomhub.dicom import fast_json
from dicomhub.dicom.validate import validate_string
from dicomhub.errors import InvalidDicom

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
LONG_TEXT_VRS = frozenset({"LT", "UC", "UR", "UT"})  # also BulkDataURIs past INLINE_TEXT_LIMIT
INLINE_TEXT_LIMIT = 1024 * 1024  # bytes of one text value kept inline in metadata
MAX_DEPTH = 64  # sequences nested deeper make the data set invalid
MAX_ELEMENTS = 1_000_000  # elements in one data set, items' included
STRING_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
FLOAT_VRS = frozenset({"DS", "FL", "FD"})  # the VRs whose JSON values can be NaN or infinite
BASE_PLACEHOLDER = "\x01"  # replaced by the request's base URL when metadata is served
_PLACEHOLDER_BYTES = json.dumps(BASE_PLACEHOLDER).encode()[1:-1]  # how json.dumps writes it


@dataclass
class EncodedDataset:
    json: dict[str, Any]
    bulk: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (offset, length)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (tag path, message)
    budget: int = MAX_ELEMENTS  # elements still allowed


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def encode_dataset(
    ds: Dataset,
    bulk_threshold: int,
    bulk_uri: Callable[[str], str],
    read_at: Callable[[int, int], bytes] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> EncodedDataset:
    """Encode ``ds``; invalid or undecodable elements are left out and reported in ``errors``.

    With ``read_at``, the recorded location of a bulk value that pydicom did read anyway is
    checked against the file; a location that does not check out is not recorded (the value
    is then found by parsing when asked for).
    """
    out = EncodedDataset({}, budget=max_elements)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.json = _encode(ds, "", 0, bulk_threshold, bulk_uri, read_at, out, True)
    return out


def _encode(ds, prefix, base, threshold, bulk_uri, read_at, out: EncodedDataset, plain) -> dict:
    out.budget -= len(ds._dict)
    if out.budget < 0:
        raise InvalidDicom("the data set has more elements than the limit (max_elements)")
    if prefix.count("/") > 2 * MAX_DEPTH:
        raise InvalidDicom(f"the data set nests sequences more than {MAX_DEPTH} deep")
    result: dict[str, Any] = {}
    bits_allocated = _int_or_none(ds, 0x00280100)
    if 0x00080005 in ds._dict:
        plain = plain and _charset(ds) in fast_json.PLAIN_CHARSETS
    for tag in sorted(ds._dict):
        if tag & 0xFFFF == 0:  # group lengths are not part of the JSON model
            continue
        key = tag_key(tag)
        path = prefix + key
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement):
            vr, certain = _raw_vr(raw, ds, bits_allocated)
            if (vr in BULK_VRS and raw.length > threshold) or (
                vr in LONG_TEXT_VRS and raw.length > INLINE_TEXT_LIMIT
            ):
                offset = base + raw.value_tell
                check = raw.value[:16] if raw.value else None
                if check is None or read_at is None or read_at(offset, len(check)) == check:
                    out.bulk[path] = (offset, raw.length)
                result[key] = {"vr": vr, "BulkDataURI": BASE_PLACEHOLDER + bulk_uri(path)}
                continue
            if plain and certain and isinstance(raw.value, bytes):
                encoded = fast_json.encode(vr, raw.value, raw.is_little_endian)
                if encoded is not None:
                    result[key] = encoded
                    continue
        try:
            elem = ds[tag]
            error = _validate(elem)
            if error is None and elem.VR != "SQ":
                encoded = elem.to_json_dict(None, 0)
                if elem.VR in FLOAT_VRS and not all(map(_finite, encoded.get("Value", ()))):
                    error = "is not a finite number (NaN or infinity)"
        except Exception as exc:  # undecodable value: reported like an invalid one
            error = f"cannot be decoded ({exc.__class__.__name__})"
        if error is not None:
            out.errors.append((path, error))
            continue
        if elem.VR == "SQ":
            # pydicom parses a defined-length sequence from its own buffer: offsets inside it
            # count from the sequence's value.
            inner = base
            if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
                inner = base + raw.value_tell
            items = [
                _encode(item, f"{path}/{i}/", inner, threshold, bulk_uri, read_at, out, plain)
                for i, item in enumerate(elem.value)
            ]
            encoded = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        result[key] = encoded
    return result


def _raw_vr(raw: RawDataElement, ds: Dataset, bits_allocated: int | None) -> tuple[str, bool]:
    """The element's VR, and whether it is certain: written in the file, or the only one the
    dictionary gives (an implicit VR standard attribute)."""
    if raw.VR is not None and raw.VR != "UN":
        return raw.VR, True
    try:
        vr = dictionary_VR(raw.tag) if not Tag(raw.tag).is_private else "UN"
    except KeyError:
        vr = "UN"
    if " or " in vr:  # ambiguous VR (PS3.5 annex A.1): implicit VR pixel data is OW
        if raw.tag == 0x7FE00010:  # encapsulated is OB; native OB only for <= 8 bits explicit
            if raw.length == 0xFFFFFFFF:
                return "OB", False
            if not raw.is_implicit_VR and (bits_allocated or 16) <= 8:
                return "OB", False
        return ("OW" if "OW" in vr else vr.split(" or ")[0]), False
    return vr, raw.VR is None and vr != "UN"


def _validate(elem: DataElement) -> str | None:
    if elem.VR not in STRING_VRS or elem.value is None:
        return None
    values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    for value in values:
        text = getattr(value, "original_string", None)
        if not isinstance(text, str):  # PersonName keeps its original bytes
            text = str(value)
        message = validate_string(elem.VR, text)
        if message:
            return f"{elem.VR} value {text[:64]!r} {message}"
    return None


def _charset(ds: Dataset) -> str:
    try:
        value = ds[0x00080005].value
    except Exception:
        return "?"
    if isinstance(value, MultiValue | list):
        return str(value[0]).strip() if len(value) == 1 else "?"
    return str(value or "").strip()


def _finite(value) -> bool:
    return value is None or math.isfinite(value)


def _int_or_none(ds: Dataset, tag: int) -> int | None:
    raw = ds._dict.get(tag)
    if raw is None:
        return None
    try:
        return int(ds[tag].value)
    except Exception:
        return None


def compact(data: Any) -> str:
    """Compact JSON text, as stored and served."""
    return dumps(data).decode("utf-8")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes (UTF-8), as stored and served; orjson, several times faster than the
    json module on the ingest path."""
    return orjson.dumps(data, default=_plain)


def _plain(value: Any) -> Any:
    """pydicom's number types (DSfloat, IS, ...) as the plain numbers they subclass."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def with_base_url(stored: bytes, base_url: str) -> bytes:
    """Resolve the BulkDataURI placeholders of stored metadata against ``base_url``."""
    return stored.replace(b'"' + _PLACEHOLDER_BYTES, b'"' + base_url.encode())
