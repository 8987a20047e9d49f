"""Extended query tags: attributes a site makes searchable at run time (Microsoft's API).

Pure: validates the tags a client asks for, and takes an instance's values of a tag from its
DICOM JSON, normalised for matching exactly as the built-in keys are (``search_keys``), or
says why a value is invalid. The index stores each value typed: text, or a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import resolve
from dicomhub.dicom.search_keys import Key, Kind
from dicomhub.dicom.validate import validate_string
from dicomhub.errors import InvalidRequest

MAX_VALUES = 64  # values of one attribute indexed for one instance (the rest are ignored)
KINDS = {
    "AE": Kind.TEXT,
    "AS": Kind.TEXT,
    "CS": Kind.TEXT,
    "LO": Kind.TEXT,
    "SH": Kind.TEXT,
    "UI": Kind.UID,
    "PN": Kind.PN,
    "DA": Kind.DATE,
    "TM": Kind.TIME,
    "DT": Kind.DATETIME,
    "DS": Kind.NUMBER,
    "FD": Kind.NUMBER,
    "FL": Kind.NUMBER,
    "IS": Kind.NUMBER,
    "SL": Kind.NUMBER,
    "SS": Kind.NUMBER,
    "UL": Kind.NUMBER,
    "US": Kind.NUMBER,
}
_BINARY_INTEGERS = {
    "SL": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "US": (0, 2**16 - 1),
}
LEVELS = {"study": Level.STUDY, "series": Level.SERIES, "instance": Level.INSTANCE}


@dataclass(frozen=True)
class ExtendedTag:
    """An extended query tag as the index records it."""

    path: str  # 8 uppercase hex digits; inside a sequence, the sequence's and a dot before
    vr: str
    level: Level
    private_creator: str | None = None
    key: int | None = None  # in the index
    status: str = "Adding"  # Adding, Ready, Deleting
    query_status: str = "Enabled"  # Enabled, Disabled
    errors: int = 0
    operation: str | None = None  # the reindex operation while Adding

    @property
    def tag(self) -> int:
        """The attribute's own tag (inside its sequence, if it is in one)."""
        return int(self.path.rsplit(".", 1)[-1], 16)

    @property
    def attribute(self) -> int:
        """The top-level attribute holding the values: the tag, or its sequence."""
        return int(self.path.split(".", 1)[0], 16)

    @property
    def keyword(self) -> str:
        return ".".join(keyword_for_tag(int(p, 16)) or p for p in self.path.split("."))

    @property
    def kind(self) -> Kind:
        return KINDS[self.vr]

    def search_key(self) -> Key:
        return Key(
            self.keyword, self.level, self.kind, extended=self.key, extended_tag=self.attribute
        )


def parse_new(entry: Any, core_tags: frozenset[int]) -> ExtendedTag:
    """A tag to add, from one item of a POST body (``{path, vr, privateCreator, level}``, names
    in any case, as Microsoft's API takes them)."""
    if not isinstance(entry, dict):
        raise InvalidRequest("each extended query tag must be a JSON object")
    fields = {str(k).lower(): v for k, v in entry.items()}
    path = fields.get("path")
    if not isinstance(path, str) or not path.strip():
        raise InvalidRequest("an extended query tag needs a path (a tag or a keyword)")
    parts = path.strip().split(".")
    if len(parts) > 2:
        raise InvalidRequest(f"{path}: only tags directly inside a top-level sequence are indexed")
    tags = [resolve(part) for part in parts]
    if None in tags:
        raise InvalidRequest(f"{path} is not a tag (8 hex digits) or a DICOM keyword")
    sequence = tags[0] if len(tags) == 2 else None
    tag = tags[-1]
    if sequence is not None:
        if (sequence >> 16) % 2 == 1 or (tag >> 16) % 2 == 1:
            raise InvalidRequest(f"{path}: private tags inside sequences are not supported")
        if _dictionary_vr(sequence) != "SQ":
            raise InvalidRequest(f"{path}: {parts[0]} is not a sequence")
    private = (tag >> 16) % 2 == 1
    if private and (tag & 0xFFFF) < 0x1000:
        raise InvalidRequest(f"{path}: private creator elements and group lengths are not indexed")
    if tag & 0xFFFF == 0:
        raise InvalidRequest(f"{path}: group length elements are not indexed")
    vr = fields.get("vr")
    vr = vr.strip().upper() if isinstance(vr, str) and vr.strip() else None
    creator = fields.get("privatecreator")
    creator = creator.strip() if isinstance(creator, str) and creator.strip() else None
    if private:
        if vr is None:
            raise InvalidRequest(f"{path}: a private tag needs its VR")
        if creator is None:
            raise InvalidRequest(f"{path}: a private tag needs its privateCreator")
        if len(creator) > 64:
            raise InvalidRequest(f"{path}: privateCreator is longer than 64 characters")
    else:
        if creator is not None:
            raise InvalidRequest(f"{path}: privateCreator is only for private tags")
        known = _dictionary_vr(tag)
        if known is None:
            raise InvalidRequest(f"{path} is not a tag of the DICOM dictionary")
        if vr is not None and vr not in known.split(" or "):
            raise InvalidRequest(f"{path}: its VR is {known}, not {vr}")
        vr = vr or known
    if vr not in KINDS:
        raise InvalidRequest(
            f"{path}: VR {vr} cannot be indexed (supported: {', '.join(sorted(KINDS))})"
        )
    level = LEVELS.get(str(fields.get("level", "")).strip().lower())
    if level is None:
        raise InvalidRequest(f"{path}: level must be Study, Series or Instance")
    if sequence is None and tag in core_tags:
        raise InvalidRequest(f"{path} is searchable already (a built-in matching key)")
    full = f"{tag:08X}" if sequence is None else f"{sequence:08X}.{tag:08X}"
    return ExtendedTag(full, vr, level, creator if private else None)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def values(js: dict[str, Any], tag: ExtendedTag) -> tuple[list[tuple[Any, ...]], str | None]:
    """(kind, text, number) rows of the tag's values in an instance (kind 1: a word of a name,
    for fuzzy matching), and the reason when a value is invalid (then no rows)."""
    if tag.private_creator is not None and not _creator_matches(js, tag):
        return [], None
    if "." in tag.path:  # the attribute in any item of its sequence
        sequence, inner = tag.path.split(".")
        items = (js.get(sequence) or {}).get("Value") or []
        elements = [item[inner] for item in items if isinstance(item, dict) and item.get(inner)]
    else:
        elements = [js[tag.path]] if js.get(tag.path) else []
    raws = []
    for element in elements:
        if element.get("vr") not in (None, tag.vr) and not (tag.vr, element["vr"]) == ("US", "SS"):
            return [], f"{tag.path} has VR {element.get('vr')} in this instance, not {tag.vr}"
        raws += element.get("Value") or []
    rows: list[tuple[Any, ...]] = []
    offset = sk.timezone_offset(js)
    for raw in raws[:MAX_VALUES]:
        if raw is None or raw == "":
            continue
        text = sk.pn_text(raw) if tag.vr == "PN" else str(raw)
        problem = _invalid(tag.vr, text)
        if problem:
            return [], f"{tag.path} value {text[:64]!r} {problem}"
        if tag.kind is Kind.NUMBER:
            rows.append((0, None, sk.number(text)))
            continue
        normalised = sk.normalise(tag.kind, text, offset)
        if normalised is None:
            continue
        rows.append((0, normalised, None))
        if tag.vr == "PN":
            rows += [(1, word, None) for word in sorted(sk.name_words(text))]
    return rows, None


def _creator_matches(js: dict[str, Any], tag: ExtendedTag) -> bool:
    group, block = tag.tag >> 16, (tag.tag >> 8) & 0xFF
    creator = _first_text(js, f"{group:04X}{block:04X}")
    return creator is not None and creator.strip() == tag.private_creator


def _first_text(js: dict[str, Any], path: str) -> str | None:
    found = (js.get(path) or {}).get("Value") or []
    return str(found[0]) if found and found[0] is not None else None


def _invalid(vr: str, text: str) -> str | None:
    """Why a value is not a valid ``vr`` value, or None: string VRs as STOW validates them
    (``validate``), binary numbers by their range."""
    if vr in ("FD", "FL"):
        return None if sk.number(text) is not None else f"is not a number ({vr})"
    bounds = _BINARY_INTEGERS.get(vr)
    if bounds is not None:
        number = sk.number(text)
        if number is None or number != int(number) or not bounds[0] <= number <= bounds[1]:
            return f"is not an integer from {bounds[0]} to {bounds[1]} ({vr})"
        return None
    return validate_string(vr, text)
