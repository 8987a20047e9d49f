"""A DICOMDIR (PS3.10 section 8, PS3.3 annex F) for a file-set made of stored instances,
written from their DICOM JSON metadata: no instance file is opened to build it.

Records are PATIENT, STUDY, SERIES and, per instance, the record type of its SOP class (IMAGE
unless pydicom's table of the standard's record types says otherwise), in that hierarchy, with
the keys PS3.3 F.5 lists for the first four (values missing from an instance are written
empty). Offsets (0004,1200), (0004,1202), (0004,1400) and (0004,1420) count bytes from the
start of the file (the preamble), as PS3.10 defines the File Meta Information to begin there.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import _FOUR_LEVEL_SOP_CLASSES
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

from dicomhub.dicom.codecs import EXPLICIT_VR_LE

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_SEQUENCE = struct.pack("<HH2sHL", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
# (keyword, tag as in DICOM JSON) of each level's record keys (PS3.3 F.5.1 to F.5.4)
PATIENT = (("PatientName", "00100010"), ("PatientID", "00100020"))
STUDY = (
    ("StudyDate", "00080020"),
    ("StudyTime", "00080030"),
    ("AccessionNumber", "00080050"),
    ("StudyDescription", "00081030"),
    ("StudyInstanceUID", "0020000D"),
    ("StudyID", "00200010"),
)
SERIES = (
    ("Modality", "00080060"),
    ("SeriesInstanceUID", "0020000E"),
    ("SeriesNumber", "00200011"),
)
INSTANCE = (
    ("InstanceNumber", "00200013"),
    ("ContentDate", "00080023"),
    ("ContentTime", "00080033"),
)
SOP_CLASS, SOP_INSTANCE = "00080016", "00080018"
# every tag a DICOMDIR is made of: all the metadata of an instance it needs
TAGS = frozenset(
    [tag for _, tag in PATIENT + STUDY + SERIES + INSTANCE] + [SOP_CLASS, SOP_INSTANCE]
)


@dataclass
class FileRecord:
    """One instance of the file-set: its metadata, where it lies and how it is encoded."""

    metadata: dict  # DICOM JSON
    file_id: list[str]  # e.g. ["DICOM", "ST000001", "SE000001", "IM000001"]
    transfer_syntax: str


@dataclass
class _Node:
    record: Dataset
    children: list[_Node] = field(default_factory=list)
    offset: int = 0


def build(files: list[FileRecord], fileset_id: str = "DICOMHUB") -> bytes:
    """The DICOMDIR of ``files``, in their order, grouped by patient, study and series."""
    roots: list[_Node] = []
    index: dict[tuple, _Node] = {}
    for f in files:
        meta = f.metadata
        patient = _value(meta, "00100020")
        keys = [
            ("PATIENT", patient, PATIENT),
            ("STUDY", (patient, _value(meta, "0020000D")), STUDY),
            ("SERIES", (patient, _value(meta, "0020000D"), _value(meta, "0020000E")), SERIES),
        ]
        siblings = roots
        for kind, key, attributes in keys:
            node = index.get((kind, key))
            if node is None:
                node = index[(kind, key)] = _Node(_record(kind, meta, attributes))
                siblings.append(node)
            siblings = node.children
        sop_class = _value(meta, SOP_CLASS)
        leaf = _record(_FOUR_LEVEL_SOP_CLASSES.get(sop_class, "IMAGE"), meta, INSTANCE)
        leaf.ReferencedFileID = f.file_id
        leaf.ReferencedSOPClassUIDInFile = sop_class
        leaf.ReferencedSOPInstanceUIDInFile = _value(meta, SOP_INSTANCE)
        leaf.ReferencedTransferSyntaxUIDInFile = f.transfer_syntax
        siblings.append(_Node(leaf))
    ordered = list(_depth_first(roots))
    uid = generate_uid()  # the DICOMDIR's own SOP Instance UID
    head = _head(fileset_id, uid, 0, 0)
    sizes = [len(_item(node.record)) for node in ordered]  # offsets are fixed-width (UL)
    position = len(head) + len(_SEQUENCE)
    for node, size in zip(ordered, sizes, strict=True):
        node.offset, position = position, position + size
    _link(roots)
    first, last = (roots[0].offset, roots[-1].offset) if roots else (0, 0)
    body = b"".join(_item(node.record) for node in ordered)
    return _head(fileset_id, uid, first, last) + _SEQUENCE + body + _SEQUENCE_END


def record_metadata(ds: Dataset) -> dict:
    """The DICOM JSON of ``ds``'s attributes a DICOMDIR record is made of (TAGS): what
    ``build`` takes for an instance whose data set is at hand (a de-identified one, whose
    values are not the index's)."""
    out = {}
    for tag in TAGS:
        elem = ds.get(int(tag, 16))
        if elem is None or elem.VR == "SQ":
            continue
        texts = [str(v) for v in (elem.value if elem.VM > 1 else [elem.value]) if v is not None]
        values = [{"Alphabetic": t} if elem.VR == "PN" else t for t in texts if t]
        out[tag] = {"vr": elem.VR, "Value": values} if values else {"vr": elem.VR}
    return out


def _value(meta: dict, tag: str):
    """The first value of ``tag`` in a DICOM JSON object, as a string ("" when absent)."""
    values = meta.get(tag, {}).get("Value") or [""]
    value = values[0]
    if isinstance(value, dict):  # PN
        return value.get("Alphabetic", "")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _record(kind: str, meta: dict, attributes) -> Dataset:
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for keyword, tag in attributes:
        if keyword.startswith("Content") and tag not in meta:
            continue  # only records of content (SR, waveforms, ...) need them
        setattr(record, keyword, _value(meta, tag))
    if any(not str(e.value).isascii() for e in record if isinstance(e.value, str)):
        record.SpecificCharacterSet = "ISO_IR 192"
    return record


def _depth_first(nodes: list[_Node]):
    for node in nodes:
        yield node
        yield from _depth_first(node.children)


def _link(nodes: list[_Node]) -> None:
    for n, node in enumerate(nodes):
        if n + 1 < len(nodes):
            node.record.OffsetOfTheNextDirectoryRecord = nodes[n + 1].offset
        if node.children:
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = node.children[0].offset
            _link(node.children)


def _encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(out, ds)
    return out.getvalue()


def _item(record: Dataset) -> bytes:
    content = _encode(record)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


def _head(fileset_id: str, uid: str, first: int, last: int) -> bytes:
    """Preamble, file meta (pydicom's implementation UID) and the File-set Identification
    module up to the records."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = EXPLICIT_VR_LE
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    ds = Dataset()
    ds.FileSetID = fileset_id
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
    ds.FileSetConsistencyFlag = 0
    return out.getvalue() + _encode(ds)
