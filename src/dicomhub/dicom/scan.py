"""One pass over the bytes of a common PS3.10 file to its DICOM JSON, without pydicom.

Most instances a modality sends are alike: an explicit VR meta group, a little endian data set
(explicit or implicit VR, or encapsulated pixel data), plain ASCII values, a few sequences.
For them, building pydicom's data set and then encoding it costs most of the time of a store.
``scan`` walks the elements once and encodes each with ``fast_json``; it answers None for
anything else (another transfer syntax or character set, a value ``fast_json`` leaves to
pydicom, an invalid or truncated element, elements out of order), and the caller then takes
the pydicom path (``parse.read_part10`` + ``json_model.encode_dataset``). Where it answers, the
result equals that path's exactly (``tests/test_scan.py`` compares them over pydicom's test
files and generated data sets).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR

from dicomhub.dicom import fast_json
from dicomhub.dicom.json_model import (
    BASE_PLACEHOLDER,
    BULK_VRS,
    INLINE_TEXT_LIMIT,
    LONG_TEXT_VRS,
    MAX_DEPTH,
    tag_key,
)
from dicomhub.dicom.parse import PIXEL_TAGS, UNDEFINED_LENGTH, PixelElement

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ENCAPSULATED = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000, HTJ2K, MPEG...: explicit LE
LONG_LENGTH_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
INLINE_BINARY_VRS = BULK_VRS - {"UN"}  # inline when short: base64 (UN: pydicom looks it up)
KNOWN_VRS = (LONG_LENGTH_VRS - {"UN"}) | frozenset(  # UN: pydicom looks the VR up
    "AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
# an explicit VR as it is written -> (the VR, whether a 32-bit length follows)
_EXPLICIT_VRS = {vr.encode("ascii"): (vr, vr in LONG_LENGTH_VRS) for vr in KNOWN_VRS}
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
CHARSET = 0x00080005
# The instances of a study repeat most values (patient, study, series, image attributes): short
# ones are encoded once. Encoded values are shared, so the JSON ``scan`` returns is read-only.
MEMO_VALUE, MEMO_SIZE = 64, 4096
_memo: dict[tuple[str, bytes], dict[str, Any]] = {}
_keys: dict[int, str] = {}  # tag -> its DICOM JSON key, as tags repeat from file to file
_HEADER = struct.Struct("<HH2sH")  # group, element, explicit VR, short length
_LONG = struct.Struct("<L")
_TAG_LENGTH = struct.Struct("<HHL")  # group, element, 32-bit length (implicit VR, items)


class Unusual(Exception):
    """Something the scan leaves to pydicom."""


@dataclass
class Scanned:
    transfer_syntax: str
    json: dict[str, Any]
    bulk: dict[str, tuple[int, int]]  # path -> (offset, length), as encode_dataset records
    pixel: PixelElement | None
    _uris: list[tuple[dict, str]] = field(default_factory=list)  # bulk entries to name

    def name_bulk(self, base: str) -> None:
        """Write the BulkDataURIs, once the instance's UIDs (and so its path) are known."""
        for entry, path in self._uris:
            entry["BulkDataURI"] = BASE_PLACEHOLDER + base + path


def scan(data: bytes, bulk_threshold: int, max_elements: int) -> Scanned | None:
    """The DICOM JSON of the PS3.10 file ``data``, or None when pydicom must read it."""
    try:
        return _Scan(data, bulk_threshold, max_elements).file()
    except (Unusual, struct.error, UnicodeDecodeError, ValueError):
        return None


class _Scan:
    def __init__(self, data: bytes, threshold: int, budget: int):
        self.data, self.threshold, self.budget = data, threshold, budget
        self.explicit = True
        self.bulk: dict[str, tuple[int, int]] = {}
        self.uris: list[tuple[dict, str]] = []

    def file(self) -> Scanned:
        data = self.data
        if len(data) < 140 or data[128:132] != b"DICM":
            raise Unusual
        syntax, pos = self._meta(132)
        if syntax == IMPLICIT_LE:
            self.explicit = False
        elif syntax != EXPLICIT_LE and not syntax.startswith(ENCAPSULATED):
            raise Unusual
        if pos >= len(data) or data[pos : pos + 2] == b"\x00\x00":  # none, or a command set
            raise Unusual
        self.pixels: dict[int, PixelElement] = {}
        js = self._dataset(pos, len(data), "", 0)
        if len(self.pixels) > 1:
            raise Unusual
        pixel = next(iter(self.pixels.values()), None)
        return Scanned(syntax, js, self.bulk, pixel, self.uris)

    def _meta(self, pos: int) -> tuple[str, int]:
        """The file meta group (explicit VR little endian, group 0002): its Transfer Syntax UID
        and where the data set starts."""
        data, syntax = self.data, None
        while data[pos : pos + 2] == b"\x02\x00":
            _, element, vr_bytes, length = _HEADER.unpack_from(data, pos)
            vr = vr_bytes.decode("ascii")
            if vr not in KNOWN_VRS and vr != "UN":
                raise Unusual  # pydicom reads such a meta group its own way
            pos += 8
            if vr in LONG_LENGTH_VRS:
                (length,) = _LONG.unpack_from(data, pos)
                pos += 4
            if length == UNDEFINED_LENGTH or pos + length > len(data):
                raise Unusual
            if element == 0x0010:
                syntax = data[pos : pos + length].rstrip(b"\x00 ").decode("ascii")
            pos += length
        if syntax is None:
            raise Unusual
        return syntax, pos

    def _dataset(self, pos: int, end: int | None, prefix: str, depth: int) -> dict[str, Any]:
        """The JSON of the elements from ``pos`` to ``end`` (None: to an item delimitation);
        ``self.pos`` is left where they stopped."""
        data, explicit, top = self.data, self.explicit, depth == 0
        js: dict[str, Any] = {}
        last = -1
        while end is None or pos < end:
            if explicit:
                group, element, vr_bytes, length = _HEADER.unpack_from(data, pos)
                tag = group << 16 | element
                if tag == ITEM_END and end is None:
                    self.pos = self._delimiter(pos)
                    return js
                known = _EXPLICIT_VRS.get(vr_bytes)
                if known is None:
                    raise Unusual
                vr, long_length = known
                pos += 8
                if long_length:
                    (length,) = _LONG.unpack_from(data, pos)
                    pos += 4
                certain = True
            else:
                group, element, length = _TAG_LENGTH.unpack_from(data, pos)
                tag = group << 16 | element
                if tag == ITEM_END and end is None:
                    self.pos = self._delimiter(pos)
                    return js
                pos += 8
                vr, certain = _implicit_vr(tag, length)
            if tag <= last or group == 0x0002 or group >= 0xFFFC:
                raise Unusual  # out of order, repeated, or not an element of a data set
            last = tag
            self.budget -= 1
            if self.budget < 0:
                raise Unusual
            key = _keys.get(tag)
            if key is None:
                if len(_keys) >= MEMO_SIZE:
                    _keys.clear()
                key = _keys[tag] = tag_key(tag)
            if vr == "SQ":
                if element == 0:
                    raise Unusual
                js[key] = self._sequence(
                    pos, None if length == UNDEFINED_LENGTH else length, prefix + key, depth
                )
                pos = self.pos
                continue
            if length == UNDEFINED_LENGTH:
                if not (top and tag == 0x7FE00010 and vr in ("OB", "OW")):
                    raise Unusual
                value_end = self._fragments(pos)
            else:
                value_end = pos + length
                if value_end > (len(data) if end is None else end):
                    raise Unusual
            if top and tag in PIXEL_TAGS:
                self.pixels[tag] = PixelElement(tag, pos, length, length == UNDEFINED_LENGTH)
            if element == 0:  # group lengths are not part of the JSON model
                pass
            elif (vr in BULK_VRS and length > self.threshold) or (
                vr in LONG_TEXT_VRS and length > INLINE_TEXT_LIMIT
            ):
                entry = {"vr": vr, "BulkDataURI": ""}
                self.bulk[prefix + key] = (pos, length)
                self.uris.append((entry, prefix + key))
                js[key] = entry
            elif certain:
                value = data[pos:value_end]
                seen = _memo.get((vr, value)) if length <= MEMO_VALUE and tag != CHARSET else None
                js[key] = self._value(tag, vr, value) if seen is None else seen
            else:
                raise Unusual  # pydicom settles the VR
            pos = value_end
        if pos != end:
            raise Unusual
        self.pos = pos
        return js

    def _value(self, tag: int, vr: str, value: bytes) -> dict[str, Any]:
        if vr in INLINE_BINARY_VRS:
            if not value:
                return {"vr": vr}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        short = len(value) <= MEMO_VALUE
        encoded = _memo.get((vr, value)) if short else None
        if encoded is None:
            encoded = fast_json.encode(vr, value, True)
            if encoded is None:
                raise Unusual
            if short:
                if len(_memo) >= MEMO_SIZE:
                    _memo.clear()
                _memo[(vr, value)] = encoded
        if tag == CHARSET and encoded.get("Value", [""])[0] not in fast_json.PLAIN_CHARSETS:
            raise Unusual
        if tag == CHARSET and len(encoded.get("Value", ())) > 1:
            raise Unusual
        return encoded

    def _delimiter(self, pos: int) -> int:
        if self.data[pos + 4 : pos + 8] != b"\x00\x00\x00\x00":
            raise Unusual
        return pos + 8

    def _sequence(self, pos: int, length: int | None, path: str, depth: int) -> dict[str, Any]:
        """A sequence's JSON (``self.pos`` is left after it); ``length`` None when undefined:
        up to its delimiter."""
        if depth >= MAX_DEPTH:
            raise Unusual
        data, items = self.data, []
        end = None if length is None else pos + length
        if end is not None and end > len(data):
            raise Unusual
        while end is None or pos < end:
            group, element, length = _TAG_LENGTH.unpack_from(data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END and end is None:
                if length != 0:
                    raise Unusual
                break
            if tag != ITEM:
                raise Unusual
            prefix = f"{path}/{len(items)}/"
            if length == UNDEFINED_LENGTH:
                items.append(self._dataset(pos, None, prefix, depth + 1))
            else:
                if pos + length > (len(data) if end is None else end):
                    raise Unusual
                items.append(self._dataset(pos, pos + length, prefix, depth + 1))
            pos = self.pos
        if end is not None and pos != end:
            raise Unusual
        self.pos = pos
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}

    def _fragments(self, pos: int) -> int:
        """The end of encapsulated pixel data: items up to a sequence delimiter."""
        data = self.data
        while True:
            group, element, length = _TAG_LENGTH.unpack_from(data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM or length == UNDEFINED_LENGTH or pos + length > len(data):
                raise Unusual
            pos += length


def _implicit_vr(tag: int, length: int) -> tuple[str, bool]:
    """An implicit VR element's VR, and whether it is certain: the dictionary's when it gives
    exactly one; implicit VR pixel data is OW, as json_model._raw_vr has it, but only a bulk
    value may rely on that (pydicom settles an inline one)."""
    if tag >> 16 & 1:
        raise Unusual  # private: its VR is unknown
    if tag == 0x7FE00010 and length != UNDEFINED_LENGTH:
        return "OW", False
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise Unusual from None
    if " or " in vr or vr == "UN":
        raise Unusual
    return vr, True
