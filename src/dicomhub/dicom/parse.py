"""Read the header of a PS3.10 file once, without loading large values (pixel data) into memory.

Large values are left deferred by pydicom: their RawDataElement keeps ``value_tell`` (absolute
file offset) and ``length``, which is all the metadata encoder and the frame index need.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

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


def read_part10(fp: BinaryIO, file_size: int, defer_size: int) -> ParsedFile:
    """Parse a PS3.10 file. Raises InvalidDicom for anything that is not a complete one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, defer_size=defer_size)
    except Exception as exc:  # pydicom raises many kinds for broken input
        raise InvalidDicom(f"not a readable DICOM PS3.10 file: {exc}") from exc
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
        for tag in PIXEL_TAGS:
            raw = ds._dict.get(tag)
            if isinstance(raw, RawDataElement) and raw.value_tell is not None:
                pixel = PixelElement(
                    tag, raw.value_tell, raw.length, raw.length == UNDEFINED_LENGTH
                )
                break
    return ParsedFile(ds, ts, file_size, deflated, pixel)


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
