"""Read the header of a PS3.10 file once, without loading large values (pixel data) into memory.

Large values are left deferred by pydicom: their RawDataElement keeps ``value_tell`` (absolute
file offset) and ``length``, which is all the metadata encoder and the frame index need.
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomhub.errors import InvalidDicom

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class PixelElement:
    tag: int
    offset: int  # absolute file offset of the value
    length: int  # UNDEFINED_LENGTH for encapsulated pixel data
    encapsulated: bool


@dataclass
class ParsedFile:
    dataset: Dataset
    transfer_syntax: str
    file_size: int
    deflated: bool  # offsets are meaningless for a deflated dataset
    pixel: PixelElement | None


def read_part10(
    fp: BinaryIO, file_size: int, defer_size: int, max_inflated: int = 512 * 1024**2
) -> ParsedFile:
    """Parse a PS3.10 file. Raises InvalidDicom for anything that is not a complete one, and
    for a deflated data set that expands past ``max_inflated`` bytes."""
    check_inflated(fp, max_inflated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = _read_common(fp, defer_size) or pydicom.dcmread(fp, defer_size=defer_size)
    except RecursionError:
        raise InvalidDicom("the data set nests sequences too deep to be read") from None
    except Exception as exc:  # pydicom raises many kinds for broken input
        raise InvalidDicom(f"not a readable DICOM PS3.10 file: {_why(exc)}") from exc
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
    if not ts:
        raise InvalidDicom("the file meta information has no TransferSyntaxUID (0002,0010)")
    if len(ds._dict) == 0:
        raise InvalidDicom("the file holds no data set")
    deflated = ts == DeflatedExplicitVRLittleEndian
    pixel = None
    if not deflated:
        _check_complete(ds, file_size)
        _check_no_tail(ds, fp, file_size)
        for tag in PIXEL_TAGS:
            raw = ds._dict.get(tag)
            if isinstance(raw, RawDataElement) and raw.value_tell is not None:
                pixel = PixelElement(
                    tag, raw.value_tell, raw.length, raw.length == UNDEFINED_LENGTH
                )
                break
    return ParsedFile(ds, ts, file_size, deflated, pixel)


_NO_HEADER = "missing DICOM File Meta Information header"
_PYDICOM_ADVICE = re.compile(r"\s*Use force=True[^.]*\.?")  # advice for pydicom users, not ours


def _why(exc: Exception) -> str:
    """What pydicom found wrong, in the server's words (without its advice to its callers)."""
    message = str(exc)
    if _NO_HEADER in message:
        return (
            "it does not start with the 128-byte preamble and 'DICM' prefix of a PS3.10 "
            "file (a bare data set, or not DICOM)"
        )
    return _PYDICOM_ADVICE.sub("", message).strip() or exc.__class__.__name__


def _read_common(fp: BinaryIO, defer_size: int) -> Dataset | None:
    """The common file (preamble, explicit VR meta group, a little endian data set) read with
    pydicom's element reader but without dcmread's general machinery (file meta validation,
    FileDataset), which costs as much as the data set itself for a small instance. None, with
    ``fp`` back where it was, for anything else: dcmread decides (the data set is then read
    the same way, see the differential test)."""
    start = fp.tell()
    syntax = _meta_syntax(fp)
    if syntax not in _COMMON_SYNTAXES and not (
        syntax is not None and syntax.startswith(_ENCAPSULATED)
    ):
        fp.seek(start)
        return None
    data_start = fp.tell()
    first = fp.read(2)
    fp.seek(start + 132)
    meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
    found = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
    if fp.tell() != data_start or found != syntax or first == b"\x00\x00":  # a command set
        fp.seek(start)
        return None
    implicit = syntax == ImplicitVRLittleEndian
    dataset = read_dataset(fp, implicit, True, defer_size=defer_size)
    end = fp.tell()
    fp.seek(start)
    preamble = fp.read(128)
    fp.seek(end)
    # as dcmread: a FileDataset (deferred values are read back through ``fp``), the encoding the
    # syntax names, and (0008,0005) converted
    ds = FileDataset(fp, dataset, preamble, meta, implicit, True)
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds


_COMMON_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
_ENCAPSULATED = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000, HTJ2K, MPEG...: explicit LE


def _check_complete(ds: Dataset, file_size: int) -> None:
    """A truncated file: its last element claims more bytes than the file has."""
    for raw in ds._dict.values():
        if not isinstance(raw, RawDataElement):
            continue
        if raw.length != UNDEFINED_LENGTH and raw.value_tell + raw.length > file_size:
            raise InvalidDicom(
                f"the file is truncated: element ({raw.tag >> 16:04X},{raw.tag & 0xFFFF:04X}) "
                f"needs {raw.length} bytes, only {max(0, file_size - raw.value_tell)} remain"
            )


def _check_no_tail(ds: Dataset, fp: BinaryIO, file_size: int) -> None:
    """A file cut inside an element's header: pydicom stops at the few bytes left over, which
    are not padding (zeros)."""
    last = ds._dict[max(ds._dict)]
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return
    end = last.value_tell + last.length
    if 0 < file_size - end <= 16:
        fp.seek(end)
        if fp.read(16).strip(b"\x00"):
            raise InvalidDicom(
                f"the file is truncated: {file_size - end} bytes after the last element do not "
                "make an element"
            )


_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def check_inflated(fp: BinaryIO, limit: int) -> None:
    """A deflated data set (PS3.5 A.5) must not expand past ``limit`` bytes: it is inflated
    here, a chunk at a time and thrown away, before pydicom inflates it whole (no zip bombs)."""
    start = fp.tell()
    try:
        if _meta_syntax(fp) != DeflatedExplicitVRLittleEndian:
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflater.eof and (chunk := fp.read(1 << 20)):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))
                if total > limit:
                    raise InvalidDicom(
                        f"the deflated data set expands past {limit} bytes (max_inflated_size)"
                    )
                chunk = inflater.unconsumed_tail
    except (zlib.error, struct.error, UnicodeDecodeError):
        return  # not what it claims: pydicom's parse says why
    finally:
        fp.seek(start)


def _meta_syntax(fp: BinaryIO) -> str | None:
    """The Transfer Syntax UID of the file meta group; ``fp`` is left where the data set
    starts. None when there is no preamble and prefix."""
    head = fp.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        return None
    syntax = None
    while True:
        at = fp.tell()
        header = fp.read(8)
        if len(header) < 8 or struct.unpack("<H", header[:2])[0] != 0x0002:
            fp.seek(at)
            return syntax
        element, vr = struct.unpack("<H", header[2:4])[0], header[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<L", fp.read(4))
        else:
            (length,) = struct.unpack("<H", header[6:8])
        value = fp.read(min(length, 1 << 16))
        if length > 1 << 16:
            fp.seek(length - (1 << 16), 1)
        if element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii")
