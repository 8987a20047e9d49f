"""A PS3.10 file in another transfer syntax, written piece by piece (PS3.5 section 7 and A.4).

The data set up to Pixel Data comes from ``read_header`` (the stored bytes before the pixel
value); the pixels arrive frame by frame, so no whole volume is ever held in memory.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from dicomhub.dicom.codecs import PixelInfo
from dicomhub.errors import InvalidDicom

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_DROPPED_GROUPS = (0x7FE0, 0xFFFA, 0xFFFC)  # pixel data and offsets, signatures, padding


@dataclass(frozen=True)
class Header:
    dataset: Dataset  # everything before Pixel Data
    pixel_vr: str  # "OB" or "OW" as stored ("OW" when the file does not say)


def read_header(prefix: bytes) -> Header:
    """Parse the stored bytes up to (and including) the Pixel Data element header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(prefix), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds for broken input
        raise InvalidDicom(f"the stored header cannot be read: {exc}") from exc
    at = prefix.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data tag, little endian
    if at < 0:
        at = prefix.rfind(b"\x7f\xe0\x00\x10")  # big endian
    vr = prefix[at + 4 : at + 6] if at >= 0 else b""
    return Header(ds, vr.decode() if vr in (b"OB", b"OW") else "OW")


@dataclass(frozen=True)
class Lossy:
    """How a lossy target changed the pixels (PS3.3 C.7.6.1.1.5)."""

    ratio: float
    method: str


def header_bytes(
    header: Dataset, target: str, info: PixelInfo | None, lossy: Lossy | None, was_lossy: bool
) -> bytes:
    """File meta and data set (without Pixel Data) of the new file, not yet deflated."""
    ds = Dataset()
    for element in header:  # shared with the cached header: replaced below, never changed
        if element.tag.group not in _DROPPED_GROUPS:
            ds.add(element)
    changes: dict[str, object] = {}
    if info is not None:
        changes["PhotometricInterpretation"] = info.photometric
        changes["BitsStored"] = info.bits_stored
        changes["PlanarConfiguration"] = info.planar if info.samples > 1 else None
    if lossy is not None or was_lossy:
        changes["LossyImageCompression"] = "01"
    if lossy is not None:
        changes["LossyImageCompressionRatio"] = [
            *_values(ds, "LossyImageCompressionRatio"),
            lossy.ratio,
        ]
        changes["LossyImageCompressionMethod"] = [
            *_values(ds, "LossyImageCompressionMethod"),
            lossy.method,
        ]
    for keyword, value in changes.items():
        if keyword in ds:
            delattr(ds, keyword)  # drops the reference; the shared element stays as it was
        if value is not None:
            setattr(ds, keyword, value)
    meta = FileMetaDataset(header.file_meta)
    meta.TransferSyntaxUID = target
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_file_meta_info(out, meta, enforce_standard=True)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
    return out.getvalue()


def _values(ds: Dataset, keyword: str) -> list:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | pydicom.multival.MultiValue) else [value]


def native_pixels_header(length: int, vr: str) -> bytes:
    """The Pixel Data element header (Explicit VR Little Endian) of a native value."""
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, vr.encode(), 0, length + length % 2)


def encapsulated_header() -> bytes:
    """The start of encapsulated Pixel Data: its element header and an empty Basic Offset
    Table (frames are then one fragment each, PS3.5 A.4)."""
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + _ITEM + bytes(4)


def fragment(frame: bytes) -> bytes:
    pad = len(frame) % 2
    return _ITEM + struct.pack("<L", len(frame) + pad) + frame + b"\x00" * pad


class Deflater:
    """Deflates everything after the file meta, the first ``meta_length`` bytes (PS3.5 A.5)."""

    def __init__(self, meta_length: int):
        self.meta_left = meta_length
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> bytes:
        meta, rest = chunk[: self.meta_left], chunk[self.meta_left :]
        self.meta_left -= len(meta)
        return meta + self.compressor.compress(rest)

    def flush(self) -> bytes:
        return self.compressor.flush()


def meta_length(data: bytes) -> int:
    """The length of preamble, prefix and file meta group at the start of ``data``."""
    (group_length,) = struct.unpack_from("<L", data, 128 + 4 + 8)
    return 128 + 4 + 12 + group_length
