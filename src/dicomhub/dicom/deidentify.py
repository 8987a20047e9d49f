"""De-identification of one instance: PS3.15 Annex E, the Basic Application Level
Confidentiality Profile with the Retain Longitudinal Temporal Information with Modified Dates,
Retain Patient Characteristics and Clean Descriptors options.

The attribute actions are the standard's Table E.1-1, kept as data in ``deid_profile.tsv``.
Where an action depends on the IOD's attribute type (X/Z, X/D, X/Z/D, Z/D: "X unless Z or D is
required to maintain IOD conformance"), dicomhub does not resolve the type per IOD and takes the
branch that keeps every IOD conformant while carrying nothing of the original: X/Z gives Z,
X/D, X/Z/D and Z/D give D (on a sequence, X/Z/D gives Z, an empty sequence), and
X/Z/U* gives U (the sequence stays, its UIDs replaced, so references still resolve). Z always
gives a zero-length value. docs/conformance.md describes every action and the UID scheme.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import re
import secrets
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from importlib import resources

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from dicomhub.dicom.parse import read_part10
from dicomhub.errors import InvalidDicom, InvalidRequest

# PS3.16 CID 7050 De-identification Methods (scheme DCM)
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")

PrivateKey = int | tuple[str, int]  # a whole tag, or (private creator, element byte 0x00-0xFF)


@dataclass(frozen=True)
class Options:
    """What one call keeps beyond the Basic Profile (PS3.15 E.3)."""

    retain_modified_dates: bool = False  # E.3.6: dates shifted by the context's offset
    retain_patient_characteristics: bool = False  # E.3.5
    clean_descriptors: bool = False  # E.3.11
    keep_private: frozenset[PrivateKey] = frozenset()  # private attributes that stay

    def codes(self) -> list[tuple[str, str]]:
        chosen = [BASIC_PROFILE]
        if self.retain_modified_dates:
            chosen.append(MODIFIED_DATES)
        if self.retain_patient_characteristics:
            chosen.append(PATIENT_CHARACTERISTICS)
        if self.clean_descriptors:
            chosen.append(CLEAN_DESCRIPTORS)
        return chosen


class Context:
    """One de-identification context (an export, a download): every value derived from an
    original (UIDs, pseudonyms, the date offset) comes from a keyed hash, so within a context
    the same original always gives the same replacement, and contexts made with the same
    project ``key`` agree with each other. Without a key, a random one is drawn: replacements
    are then consistent within the context only."""

    def __init__(self, key: bytes | None = None):
        self._key = key if key is not None else secrets.token_bytes(32)

    def _hash(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(self._key, purpose + b"\x00" + value.encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of an instance UID: ``2.25.`` and a UUID (RFC 9562 version 8, its
        122 free bits from the keyed hash) as a decimal integer (PS3.5 B.2)."""
        raw = bytearray(self._hash(b"uid", original)[:16])  # no table: memory stays flat
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def pseudonym(self, original: str) -> str:
        """A dummy for an identifier or a name (action D on LO, SH, PN): distinct originals
        stay distinct, nothing of the original is kept; 16 characters (fits SH)."""
        return "ANON" + self._hash(b"pseudonym", original).hex()[:12].upper()

    @property
    def date_offset(self) -> timedelta:
        """The shift of every date under the modified-dates option: 1 to 10 years back,
        whole days (so intervals between dates stay, and times of day)."""
        days = int.from_bytes(self._hash(b"date-offset", "")[:8], "big") % 3288 + 365
        return timedelta(days=-days)


def deidentify(data: bytes, context: Context, options: Options = Options()) -> bytes:
    """De-identify a PS3.10 file: the new file in the same transfer syntax, pixel data byte
    for byte as stored, file meta following the new SOP Instance UID. Raises InvalidDicom for
    anything that is not a complete PS3.10 file."""
    return deidentify_file(data, context, options)[0]


def deidentify_file(
    data: bytes, context: Context, options: Options = Options()
) -> tuple[bytes, Dataset]:
    """As ``deidentify``, with the de-identified data set the file holds (what a DICOMDIR
    record, or a file name, is made from)."""
    parsed = read_part10(io.BytesIO(data), len(data), len(data) + 1)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = deidentify_dataset(parsed.dataset, context, options)
            pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many kinds for values it cannot read or write
        raise InvalidDicom(f"the instance cannot be de-identified: {exc}") from exc
    return buffer.getvalue(), out


# the options by the names requests give them (docs/conformance.md 3.1.1)
OPTION_NAMES = {
    "retainModifiedDates": "retain_modified_dates",
    "retainPatientCharacteristics": "retain_patient_characteristics",
    "cleanDescriptors": "clean_descriptors",
}


def options_named(text: str) -> Options:
    """Options from a comma-separated list of OPTION_NAMES (case-insensitive; empty: the
    Basic Profile alone). Raises InvalidRequest for a name it does not know."""
    known = {name.lower(): field for name, field in OPTION_NAMES.items()}
    chosen = {}
    for name in filter(None, (n.strip() for n in text.split(","))):
        field = known.get(name.lower())
        if field is None:
            raise InvalidRequest(
                f"unknown de-identification option {name[:40]!r}: the options are "
                + ", ".join(OPTION_NAMES)
            )
        chosen[field] = True
    return Options(**chosen)


def option_names(options: Options) -> list[str]:
    """The names of the options chosen (as OPTION_NAMES spells them)."""
    return [name for name, field in OPTION_NAMES.items() if getattr(options, field)]


def deidentify_dataset(ds: Dataset, context: Context, options: Options = Options()) -> Dataset:
    """A de-identified copy of ``ds`` (``ds`` is not changed), with a new file meta group
    when ``ds`` has one."""
    run = _Run(context, options, _identifying_values(ds, options))
    out = run.dataset(ds, KEEP)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = _method_text(options)
    out.DeidentificationMethodCodeSequence = _method_codes(ds, options)
    out.LongitudinalTemporalInformationModified = (
        "MODIFIED" if options.retain_modified_dates else "REMOVED"
    )
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = _file_meta(meta, out, context)
        out.preamble = b"\x00" * 128  # a preamble may carry another format's header (TIFF)
    return out


# --- the profile table ---------------------------------------------------------------------

_OPTION_COLUMNS = ("retain_patient_characteristics", "retain_modified_dates", "clean_descriptors")


@dataclass(frozen=True)
class _Row:
    basic: str
    by_option: tuple[tuple[str, str], ...]  # (option field, action)
    name: str


@cache
def profile_table() -> tuple[dict[int, _Row], tuple[tuple[int, int, _Row], ...]]:
    """Table E.1-1: exact tags, and (mask, value, row) for the repeating groups."""
    exact: dict[int, _Row] = {}
    masked = []
    text = resources.files("dicomhub.dicom").joinpath("deid_profile.tsv").read_text("utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        tag, basic, *option_actions, name = line.split("\t")
        by_option = tuple((o, a) for o, a in zip(_OPTION_COLUMNS, option_actions, strict=True) if a)
        row = _Row(basic, by_option, name)
        if "x" in tag:
            mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
            masked.append((mask, int(tag.replace("x", "0"), 16), row))
        else:
            exact[int(tag, 16)] = row
    return exact, tuple(masked)


def _row(tag: int) -> _Row | None:
    exact, masked = profile_table()
    row = exact.get(tag)
    if row is None:
        for mask, value, candidate in masked:
            if tag & mask == value and not (tag >> 16) & 1:
                return candidate
    return row


# the branch taken for each code that depends on the IOD (see the module docstring); on a
# sequence, X/Z/D gives an empty one rather than items of dummies
_RESOLVED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}
_RESOLVED_SQ = {**_RESOLVED, "X/Z/D": "Z"}


def action(tag: int, options: Options, vr: str = "") -> str | None:
    """The action for a public attribute under ``options``: X, Z, D, K, C or U, or None for an
    attribute the table does not list (kept). Where two chosen options disagree (K and C), C."""
    row = _row(tag)
    if row is None:
        return None
    chosen = {a for o, a in row.by_option if getattr(options, o)}
    if chosen:
        return "C" if "C" in chosen else "K"
    return _basic(row, vr)


def _basic(row: _Row | None, vr: str) -> str:
    if row is None:
        return "X"
    return (_RESOLVED_SQ if vr == "SQ" else _RESOLVED).get(row.basic, row.basic)


# --- one run over one data set -------------------------------------------------------------

# What happens to the attributes the table does not list inside a sequence: kept (KEEP), text
# cleaned (CLEAN, inside a sequence whose action is C), or every text, name and date replaced
# by a dummy (DUMMY, inside a sequence whose action is D: items stay, so the references they
# hold still resolve, but nothing they say survives)
KEEP, CLEAN, DUMMY = 0, 1, 2

_DATES = {"DA", "DT", "TM"}
_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"}
_DUMMY_TEXT = {"AE", "LO", "SH", "ST", "LT", "UT", "UC", "PN", "UR", "DA", "DT", "TM"}
_PSEUDONYMS = {"LO", "SH", "PN"}
_DUMMIES = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "urn:x-anonymized",
}
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
# attributes the table does not list whose UIDs name a class, syntax, coding scheme or
# creator rather than an instance: kept (those it lists as U, like Instance Creator UID, not)
_NAMING_UIDS = re.compile(r"Class|TransferSyntax|CodingScheme|ContextUID|CreatorUID|Mapping")
_CODE_MACRO = frozenset(  # identifiers of coded entries: never cleaned as text
    {0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080106, 0x0008010F}
    | {0x00080119, 0x00080120}
)


class _Run:
    def __init__(self, context: Context, options: Options, identifying: list[str]):
        self.context = context
        self.options = options
        self.cleaner = _cleaner(identifying)

    def dataset(self, ds: Dataset, mode: int) -> Dataset:
        out = Dataset()
        kept_blocks: set[tuple[int, int]] = set()
        for elem in ds:
            tag = int(elem.tag)
            if tag & 0xFFFF == 0:  # group lengths: retired, and wrong after the changes
                continue
            if elem.tag.is_private:
                if elem.tag.is_private_creator or not self._keep_private(ds, tag):
                    continue
                kept_blocks.add((tag >> 16, (tag >> 8) & 0xFF))
                new = self._element(elem, None, mode)
            else:
                new = self._element(elem, action(tag, self.options, elem.VR), mode)
            if new is not None:
                out.add(new)
        for group, block in kept_blocks:  # the creators of the private attributes kept
            out.add(ds[(group << 16) | block])
        return out

    def _keep_private(self, ds: Dataset, tag: int) -> bool:
        keep = self.options.keep_private
        if tag in keep:
            return True
        creator = ds.get(((tag >> 16) << 16) | ((tag >> 8) & 0xFF))
        if creator is None or not isinstance(creator.value, str):
            return False
        return (creator.value.strip(), tag & 0xFF) in keep

    def _element(self, elem: DataElement, act: str | None, mode: int) -> DataElement | None:
        vr = elem.VR
        if act == "X":
            return None
        if act == "Z":
            return DataElement(elem.tag, vr, Sequence() if vr == "SQ" else empty_value_for_VR(vr))
        if vr == "SQ":  # kept: its items are de-identified too
            inner = max(mode, DUMMY if act == "D" else CLEAN if act == "C" else KEEP)
            items = [self.dataset(item, inner) for item in elem.value]
            return DataElement(elem.tag, vr, Sequence(items))
        if act == "D":
            return DataElement(elem.tag, vr, self._dummy(elem))
        if act == "C":
            return self._clean(elem, mode)
        return self._kept(elem, act, mode)

    def _kept(self, elem: DataElement, act: str | None, mode: int) -> DataElement:
        """An attribute that stays (K, U, not listed): its UIDs replaced, its dates shifted
        under the modified-dates option, its text as the sequence it is in says."""
        vr, value = elem.VR, elem.value
        if vr == "UI" and (act == "U" or not _NAMING_UIDS.search(keyword_for_tag(elem.tag) or "")):
            return DataElement(elem.tag, vr, _each(value, self._uid))
        if vr in _DATES and self.options.retain_modified_dates:
            offset = self.context.date_offset
            return DataElement(elem.tag, vr, _each(value, lambda v: _shift(v, vr, offset)))
        if mode == DUMMY and vr in _DUMMY_TEXT and value not in (None, ""):
            return DataElement(elem.tag, vr, self._dummy(elem))
        if mode == CLEAN and vr in _TEXT and int(elem.tag) not in _CODE_MACRO:
            return self._clean_text(elem, mode)
        return elem  # as it was (pixel data keeps its encoding: undefined length, fragments)

    def _uid(self, value: str) -> str:
        value = value.rstrip("\x00 ")
        if not value or value in UID_dictionary:
            return value
        return self.context.uid(value)

    def _dummy(self, elem: DataElement):
        """Action D: a value of the VR that carries nothing of the original."""
        vr = elem.VR
        if vr == "UI":
            return _each(elem.value, self._uid) or self.context.uid("")
        if vr in _PSEUDONYMS:
            return self.context.pseudonym(str(elem.value or ""))
        if vr in _DUMMIES:
            return _DUMMIES[vr]
        if vr in _TEXT or vr == "AE":
            return "ANONYMIZED"
        if vr in _BINARY:
            return bytes(8)
        return 0  # AT, US, SS, UL, SL, UV, SV, FL, FD

    def _clean(self, elem: DataElement, mode: int) -> DataElement | None:
        """Action C: dates and times shifted; text cleaned (see ``_cleaner``); other values
        cannot be cleaned and get the basic action."""
        vr, tag = elem.VR, int(elem.tag)
        if vr in _DATES and self.options.retain_modified_dates:
            offset = self.context.date_offset
            return DataElement(elem.tag, vr, _each(elem.value, lambda v: _shift(v, vr, offset)))
        if vr in _TEXT and (
            _c_by(tag, "clean_descriptors", self.options)
            or _c_by(tag, "retain_patient_characteristics", self.options)
        ):
            return self._clean_text(elem, mode)
        return self._element(elem, _basic(_row(tag), vr), mode)

    def _clean_text(self, elem: DataElement, mode: int) -> DataElement | None:
        cleaned = _each(elem.value, self.cleaner)
        if elem.VR == "CS" and cleaned != _each(elem.value, str):  # CS cannot carry the mark
            return self._element(elem, _basic(_row(int(elem.tag)), "CS"), mode)
        return DataElement(elem.tag, elem.VR, cleaned)


def _c_by(tag: int, option: str, options: Options) -> bool:
    """Whether ``option`` is chosen and says C for the attribute."""
    row = _row(tag)
    return getattr(options, option) and row is not None and (option, "C") in row.by_option


def _values(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _each(value, change):
    """``change`` applied to a value, or to each value of a multi-valued one (as text)."""
    if value is None or value == "":
        return value
    if isinstance(value, MultiValue | list | tuple):
        return [change(str(v)) for v in value]
    return change(str(value))


# --- dates ---------------------------------------------------------------------------------

_DA = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")


def _shift(value: str, vr: str, offset: timedelta) -> str:
    """A DA or DT moved by ``offset`` (whole days), at the precision it had; a TM is left as
    is (a whole-day shift keeps the time of day). Unreadable values become empty."""
    value = value.strip()
    if vr == "TM" or not value:
        return value
    head, rest = (value, "") if vr == "DA" else (value[:8], value[8:])
    found = _DA.match(head.replace(".", "") if vr == "DA" else head)
    if not found:
        return ""
    year, month, day = found.group(1), found.group(2), found.group(3)
    try:
        moved = date(int(year), int(month or 1), int(day or 1)) + offset
    except (ValueError, OverflowError):
        return ""
    text = f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"[: len(head.replace(".", ""))]
    return text + rest


# --- text cleaning -------------------------------------------------------------------------

_DATE_LIKE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d\d[-./]?(?:0[1-9]|1[0-2])[-./]?(?:0[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|1[0-2])[-./](?:19|20)?\d\d"
    r"|(?:0?[1-9]|1[0-2])[-./](?:0?[1-9]|[12]\d|3[01])[-./](?:19|20)?\d\d)(?!\d)"
)
_NAME_PARTS = re.compile(r"[\^=\s,]+")


def _identifying_values(ds: Dataset, options: Options) -> list[str]:
    """The text the profile takes out of this instance (values of the attributes it removes,
    empties or replaces, names word by word): what cleaning removes from descriptors."""
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.tag.is_private or action(int(elem.tag), options, elem.VR) not in ("X", "Z", "D"):
            continue
        if elem.VR not in _TEXT and elem.VR not in ("DA", "DT", "AE"):
            continue
        for value in _values(elem.value):
            text = str(value or "").strip()
            if elem.VR == "PN":
                found.update(p for p in _NAME_PARTS.split(text) if len(p) >= 2)
            elif len(text) >= 2:
                found.add(text)
                if elem.VR in ("DA", "DT") and len(text) >= 8:
                    y, m, d = text[:4], text[4:6], text[6:8]
                    found.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    return sorted(found, key=len, reverse=True)


def _cleaner(identifying: list[str]):
    """Clean Descriptors (PS3.15 E.3.11), as dicomhub does it: a descriptor keeps its text
    except every identifying value of the instance (case-insensitive, as a whole word) and
    every date-like token, each replaced by ``*``."""
    pattern = (
        re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(v) for v in identifying) + r")(?!\w)",
            re.IGNORECASE,
        )
        if identifying
        else None
    )

    def clean(text: str) -> str:
        if pattern is not None:
            text = pattern.sub("*", text)
        return _DATE_LIKE.sub("*", text)

    return clean


# --- the record of what was done (PS3.15 E.1.1, PS3.3 C.7.1.1) -----------------------------


def _method_text(options: Options) -> str:
    names = ["Basic"]
    names += ["ModifDates"] if options.retain_modified_dates else []
    names += ["PatChars"] if options.retain_patient_characteristics else []
    names += ["CleanDesc"] if options.clean_descriptors else []
    return "dicomhub PS3.15 E.1 " + "+".join(names)


def _method_codes(ds: Dataset, options: Options) -> Sequence:
    """Earlier de-identifications' codes, then this one's (CID 7050)."""
    items = [copy.deepcopy(item) for item in ds.get("DeidentificationMethodCodeSequence") or []]
    have = {str(item.get("CodeValue", "")) for item in items}
    for value, meaning in options.codes():
        if value in have:
            continue
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def _file_meta(meta: FileMetaDataset, out: Dataset, context: Context) -> FileMetaDataset:
    """Only what PS3.10 7.1 needs: no source or sending AE titles, no private information."""
    new = FileMetaDataset()
    new.MediaStorageSOPClassUID = meta.get("MediaStorageSOPClassUID") or out.get("SOPClassUID")
    sop = out.get("SOPInstanceUID") or context.uid(str(meta.get("MediaStorageSOPInstanceUID")))
    new.MediaStorageSOPInstanceUID = sop
    new.TransferSyntaxUID = meta.TransferSyntaxUID
    return new
