"""Frames and bulk data of a file without usable offsets (a deflated data set): parse it."""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

import pydicom
from pydicom.encaps import generate_frames

from dicomhub.dicom.frames import extract_bits, native_frame_bits
from dicomhub.errors import NotFound


def _read(fp: BinaryIO) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fp)


def frames_by_parsing(data: bytes, numbers: list[int] | None) -> list[bytes]:
    """The requested frames (1-based; None: every frame) of a whole PS3.10 file."""
    ds = _read(io.BytesIO(data))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    if numbers is None:
        numbers = list(range(1, count + 1))
    missing = [n for n in numbers if not 1 <= n <= count]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist; the instance has {count} frame(s)")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        return [frames[n - 1] for n in numbers]
    bits = native_frame_bits(
        ds.Rows,
        ds.Columns,
        ds.get("SamplesPerPixel", 1),
        ds.BitsAllocated,
        str(ds.get("PhotometricInterpretation", "")),
    )
    out = []
    for n in numbers:
        first = (n - 1) * bits
        chunk = ds.PixelData[first // 8 : (first + bits + 7) // 8 + 1]
        out.append(extract_bits(chunk, first % 8, bits) if bits % 8 else chunk[: bits // 8])
    return out


def value_by_parsing(fp: BinaryIO, path: str) -> bytes:
    """The value at ``GGGGEEEE[/item/GGGGEEEE...]``; KeyError when there is none."""
    ds = _read(fp)
    parts = path.strip("/").split("/")
    while True:
        tag = int(parts[0], 16)
        if tag not in ds:
            raise KeyError(path)
        elem = ds[tag]
        if len(parts) == 1:
            value = elem.value
            if not isinstance(value, bytes):
                raise KeyError(path)
            return value
        index = int(parts[1])
        if elem.VR != "SQ" or index >= len(elem.value):
            raise KeyError(path)
        ds = elem.value[index]
        parts = parts[2:]
