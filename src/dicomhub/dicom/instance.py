"""From a parsed PS3.10 file to what the index records: identity, metadata, frames, bulk data.

Pure: the file's bytes arrive through a ``read_at(offset, length)`` callable.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomhub.dicom import frames as frame_index
from dicomhub.dicom.json_model import (
    MAX_ELEMENTS,
    EncodedDataset,
    compact,
    dumps,
    encode_dataset,
)
from dicomhub.dicom.parse import ParsedFile, PixelElement
from dicomhub.dicom.scan import Scanned
from dicomhub.dicom.search_keys import describe, multi_valued
from dicomhub.dicom.uids import clean_uid, is_valid_uid
from dicomhub.errors import InvalidRequest
from dicomhub.model import InstanceId, NewInstance

CORE_UIDS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
}
# Microsoft's v1 searchable attributes: v1 rejects an instance when one of them is invalid.
INDEXED = {
    "PatientID": 0x00100020,
    "PatientName": 0x00100010,
    "PatientBirthDate": 0x00100030,
    "StudyDate": 0x00080020,
    "StudyDescription": 0x00081030,
    "AccessionNumber": 0x00080050,
    "ReferringPhysicianName": 0x00080090,
    "Modality": 0x00080060,
    "PerformedProcedureStepStartDate": 0x00400244,
    "ManufacturerModelName": 0x00081090,
}


INDEXED_KEYS = {f"{tag:08X}": name for name, tag in INDEXED.items()}
PATIENT_ID = INDEXED["PatientID"]


class InvalidInstance(InvalidRequest):
    """The file is DICOM, but an attribute rules out storing it."""

    def __init__(self, message: str, sop_class: str = "", sop_instance: str = ""):
        super().__init__(message)
        self.sop_class = sop_class
        self.sop_instance = sop_instance


@dataclass
class IngestedInstance:
    """What ingest makes of one instance: the record the index keeps, and what only the STOW
    answer tells."""

    record: NewInstance
    warnings: list[str]  # ErrorComment of every attribute left out of metadata and index
    multi_valued: bool = False  # a searchable attribute has several values (the first is indexed)


def bulk_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


def ingest(
    parsed: ParsedFile,
    read_at,
    bulk_threshold: int,
    strict: bool,
    expected_study: str | None,
    also_indexed: frozenset[str] = frozenset(),
    max_elements: int = MAX_ELEMENTS,
) -> IngestedInstance:
    """Validate and describe one instance. ``strict`` is v1: indexed attributes (built in, and
    the paths ``also_indexed``, e.g. extended query tags) must be valid."""
    ds = parsed.dataset
    uids = {name: clean_uid(_raw_text(ds, tag)) for name, tag in CORE_UIDS.items()}
    _check_uids(uids, expected_study, strict and not _raw_text(ds, PATIENT_ID).strip("\x00 "))
    base = _bulk_base(uids)
    encoded = encode_dataset(
        ds,
        bulk_threshold,
        lambda path: base + path,
        None if parsed.deflated else read_at,
        max_elements,
    )
    warnings = []
    invalid = {path: message for path, message in encoded.errors if len(path) == 8}
    for path, message in encoded.errors:
        keyword = INDEXED_KEYS.get(path) or (path if path in also_indexed else None)
        comment = f"DICOM100: ({path[:4]},{path[4:8]}){path[8:]} - {message}"
        if strict and keyword:
            raise InvalidInstance(comment, uids["SOPClassUID"], uids["SOPInstanceUID"])
        warnings.append(comment)
    frames = None
    if parsed.pixel is not None and not parsed.deflated:
        extended = None
        if 0x7FE00001 in ds._dict and 0x7FE00002 in ds._dict:
            extended = (list(_uint64s(ds[0x7FE00001].value)), list(_uint64s(ds[0x7FE00002].value)))
        photometric = _raw_text(ds, 0x00280004).strip("\x00 ")
        frames = _frames(encoded.json, parsed.pixel, photometric, extended, read_at)
    return _described(
        uids,
        parsed.transfer_syntax,
        parsed.file_size,
        encoded,
        frames,
        parsed.deflated,
        warnings,
        invalid,
    )


def ingest_scanned(
    scanned: Scanned, data: bytes, strict: bool, expected_study: str | None
) -> IngestedInstance | None:
    """``ingest`` for a file ``scan`` read (every attribute valid); None when a value it
    relies on (a UID, the photometric interpretation) is not a single one, or the pixel data
    has an extended offset table: then ``ingest`` decides."""
    js = scanned.json
    texts = {name: _json_text(js, tag) for name, tag in CORE_UIDS.items()}
    photometric = _json_text(js, 0x00280004)
    patient = _json_text(js, PATIENT_ID)
    if None in texts.values() or photometric is None or patient is None or "7FE00001" in js:
        return None
    uids = {name: clean_uid(text) for name, text in texts.items()}  # as ``ingest`` reads them
    _check_uids(uids, expected_study, strict and not patient.strip("\x00 "))
    scanned.name_bulk(_bulk_base(uids))
    frames = None
    if scanned.pixel is not None:
        frames = _frames(
            js, scanned.pixel, photometric.strip("\x00 "), None, lambda o, n: data[o : o + n]
        )
    encoded = EncodedDataset(js, scanned.bulk)
    return _described(uids, scanned.transfer_syntax, len(data), encoded, frames, False, [], {})


def _check_uids(uids: dict[str, str], expected_study: str | None, no_patient: bool) -> None:
    sop_class, sop = uids["SOPClassUID"], uids["SOPInstanceUID"]
    for name, value in uids.items():
        if not value:
            raise InvalidInstance(f"DICOM100: {name} is missing or empty", sop_class, sop)
        if not is_valid_uid(value):
            raise InvalidInstance(
                f"DICOM100: {name} {value[:80]!r} is not a valid UID", sop_class, sop
            )
    if expected_study and uids["StudyInstanceUID"] != expected_study:
        raise InvalidInstance(
            f"DICOM100: StudyInstanceUID {uids['StudyInstanceUID']} does not match the study "
            f"{expected_study} of the request URL",
            sop_class,
            sop,
        )
    if no_patient:
        raise InvalidInstance(
            "DICOM100: PatientID is missing or empty (required by v1)", sop_class, sop
        )


def _bulk_base(uids: dict[str, str]) -> str:
    study, series = uids["StudyInstanceUID"], uids["SeriesInstanceUID"]
    return bulk_path(study, series, uids["SOPInstanceUID"]) + "/bulkdata/"


def _described(
    uids, transfer_syntax, size, encoded: EncodedDataset, frames, parse_on_read, warnings, invalid
) -> IngestedInstance:
    record = NewInstance(
        id=InstanceId(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"]),
        sop_class=uids["SOPClassUID"],
        transfer_syntax=transfer_syntax,
        size=size,
        metadata=dumps(encoded.json),
        frames=frames,
        bulk=compact(encoded.bulk),
        parse_on_read=parse_on_read,
        search=describe(encoded.json),
        invalid=invalid,
    )
    return IngestedInstance(record, warnings, multi_valued(encoded.json))


def _frames(js: dict, pixel: PixelElement, photometric: str, extended, read_at) -> str:
    """The frame index (as JSON); the image attributes are read from the instance's DICOM JSON
    (already decoded, and without the invalid values)."""
    bits = _json_int(js, "00280100", 8)
    if pixel.tag == 0x7FE00008:
        bits = 32
    elif pixel.tag == 0x7FE00009:
        bits = 64
    frame_bits = frame_index.native_frame_bits(
        _json_int(js, "00280010", 0),
        _json_int(js, "00280011", 0),
        _json_int(js, "00280002", 1),
        bits,
        photometric,
    )
    frames = _json_int(js, "00280008", 1)
    return compact(frame_index.index_frames(pixel, frames, frame_bits, read_at, extended).to_json())


def _json_text(js: dict, tag: int) -> str | None:
    """A text attribute's one value from DICOM JSON ("" when absent or empty, None when it
    has several)."""
    values = (js.get(f"{tag:08X}") or {}).get("Value") or [""]
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _json_int(js: dict, key: str, default: int) -> int:
    value = (js.get(key) or {}).get("Value") or [None]
    return value[0] if isinstance(value[0], int) and not isinstance(value[0], bool) else default


def _uint64s(data: bytes):
    for i in range(0, len(data) - 7, 8):
        yield int.from_bytes(data[i : i + 8], "little")


def _raw_text(ds: Dataset, tag: int) -> str:
    raw = ds._dict.get(tag)
    if raw is None:
        return ""
    value = getattr(raw, "value", None)
    if isinstance(raw, RawDataElement) and isinstance(value, bytes):
        if value.isascii() and b"\\" not in value:  # one plain value: its text, as pydicom's
            return value.decode("ascii")  # (callers strip the padding)
    try:
        value = ds[tag].value
    except Exception:
        return ""
    return "" if value is None else str(value)
