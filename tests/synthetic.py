"""Deterministic synthetic instances with chosen attributes (for search tests and volume)."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.10.1234."


def uid(*parts: int | str) -> str:
    return ROOT + ".".join(str(p) for p in parts)


def instance(study: str, series: str, sop: str, **attributes) -> bytes:
    """Part 10 bytes of a tiny CT image; keyword arguments set attributes (lists of dicts become
    sequences)."""
    ds = Dataset()
    ds.SOPClassUID = attributes.pop("SOPClassUID", CT_IMAGE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.PatientID = "P0"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = []
            for fields in value:
                item = Dataset()
                for k, v in fields.items():
                    setattr(item, k, v)
                items.append(item)
            setattr(ds, keyword, Sequence(items))
        else:
            setattr(ds, keyword, value)
    ds.PixelData = b"\x00\x01" * 4
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
