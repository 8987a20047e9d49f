"""Deterministic synthetic DICOM for the benchmark (pydicom + numpy).

Every study is a pure function of (group, index): the same arguments give the same UIDs,
attributes and pixels on every run and machine, so both servers receive identical bytes and the
expected answer to every query is computed from the same records (``Study``), never hard-coded.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

ROOT = "1.2.826.0.1.3680043.10.5433"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LAST = [
    "SMITH",
    "JOHNSON",
    "GARCIA",
    "NGUYEN",
    "OBRIEN",
    "KOWALSKI",
    "ROSSI",
    "DUBOIS",
    "SATO",
    "MULLER",
    "HANSEN",
    "SILVA",
    "KIM",
    "PATEL",
    "IVANOV",
    "COHEN",
    "BROWN",
    "MARTIN",
]
FIRST = [
    "JOHN",
    "JURGEN",
    "MARIA",
    "ANH",
    "MARY ANN",
    "PIOTR",
    "GIULIA",
    "CHLOE",
    "HARUTO",
    "LENA",
    "OMAR",
    "SOFIA",
    "WEI",
    "PRIYA",
    "IGOR",
    "NOA",
    "JAMES",
    "EMMA",
]
STUDY_TYPES = [  # (modalities of the study's series, study description, body part)
    (("CT",), "CT CHEST WITH CONTRAST", "CHEST"),
    (("CT",), "CT HEAD WITHOUT CONTRAST", "HEAD"),
    (("MR",), "MR BRAIN", "BRAIN"),
    (("MR",), "MR KNEE LEFT", "KNEE"),
    (("PT", "CT"), "PET-CT WHOLE BODY", "WHOLEBODY"),
    (("CR",), "XR HAND 2 VIEWS", "HAND"),
    (("US",), "US ABDOMEN", "ABDOMEN"),
    (("MG",), "MG SCREENING BILATERAL", "BREAST"),
    (("DX",), "XR CHEST PA", "CHEST"),
    (("NM",), "NM BONE SCAN", "WHOLEBODY"),
]
GROUPS = {"reference": 1, "frames": 2, "search": 3, "stow": 10}  # stow runs use 10, 11, ...


@dataclass(frozen=True)
class Series:
    uid: str
    number: int
    modality: str
    description: str
    instances: int


@dataclass(frozen=True)
class Study:
    uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    body_part: str
    series: tuple[Series, ...]

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(s.modality for s in self.series)

    def sop_uids(self, series: Series) -> list[str]:
        return [f"{series.uid}.{i}" for i in range(1, series.instances + 1)]

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


def study(group: int, index: int, series_sizes: tuple[int, ...], patients: int = 5000) -> Study:
    """The study ``index`` of a group, with one series per entry of ``series_sizes``."""
    rng = random.Random(group * 1_000_003 + index)
    patient = rng.randrange(patients)
    prng = random.Random(patient)  # a patient keeps name, sex and birth date across studies
    modalities, description, body_part = STUDY_TYPES[rng.randrange(len(STUDY_TYPES))]
    uid = f"{ROOT}.{group}.{index}"
    series = tuple(
        Series(
            uid=f"{uid}.{n}",
            number=n,
            modality=modalities[(n - 1) % len(modalities)],
            description=f"{modalities[(n - 1) % len(modalities)]} {body_part} SERIES {n}",
            instances=size,
        )
        for n, size in enumerate(series_sizes, start=1)
    )
    return Study(
        uid=uid,
        patient_id=f"PAT{patient:06d}",
        patient_name=f"{prng.choice(LAST)}^{prng.choice(FIRST)}",
        birth_date=f"{prng.randint(1930, 2015)}{prng.randint(1, 12):02d}{prng.randint(1, 28):02d}",
        sex=prng.choice("MF"),
        date=f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        time=f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
        accession=f"ACC{group:02d}{index:07d}",
        description=description,
        referring=f"{rng.choice(LAST)}^{rng.choice(FIRST)}",
        body_part=body_part,
        series=series,
    )


@lru_cache(maxsize=64)
def ct_slice(size: int, position: int) -> bytes:
    """A CT-like slice (body ellipse, bone ring, noise) as 16-bit little-endian stored values
    (rescale intercept -1024)."""
    rng = np.random.default_rng(position)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    phase = position / 50
    body = (x / 0.8) ** 2 + (y / (0.6 + 0.05 * np.sin(phase))) ** 2 < 1
    bone = np.abs(np.hypot(x - 0.1 * np.cos(phase), y) - 0.3) < 0.03
    hu = np.where(body, 40.0, -1000.0) + np.where(bone, 900.0, 0.0)
    hu += rng.normal(0, 12, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype("<u2").tobytes()


def frame_bytes(size: int, frame: int) -> bytes:
    """The stored bytes of frame ``frame`` (1-based) of a multi-frame instance."""
    return ct_slice(size, 10_000 + (frame - 1) % 40)


def instance(st: Study, series: Series, number: int, size: int, frames: int = 1) -> bytes:
    """Part 10 bytes (Explicit VR Little Endian, uncompressed) of instance ``number``."""
    ds = Dataset()
    ds.SOPClassUID = ENHANCED_CT if frames > 1 else CT_IMAGE
    ds.SOPInstanceUID = f"{series.uid}.{number}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = st.uid, series.uid
    ds.PatientName, ds.PatientID = st.patient_name, st.patient_id
    ds.PatientBirthDate, ds.PatientSex = st.birth_date, st.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = st.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = st.time
    ds.AccessionNumber, ds.StudyDescription = st.accession, st.description
    ds.ReferringPhysicianName, ds.StudyID = st.referring, st.accession[-4:]
    ds.Modality, ds.SeriesNumber = series.modality, series.number
    ds.SeriesDescription, ds.BodyPartExamined = series.description, st.body_part
    ds.Manufacturer, ds.InstitutionName = "DICOMHUB BENCH", "GENERAL HOSPITAL"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-250, -250, -number * 1.25]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation, ds.SliceThickness = -number * 1.25, 1.25
    ds.PixelSpacing = [500 / size, 500 / size]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = b"".join(frame_bytes(size, f) for f in range(1, frames + 1))
    else:
        ds.PixelData = ct_slice(size, number % 64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def instances(st: Study, size: int):
    """(SOPInstanceUID, Part 10 bytes) of every instance of a study, in order."""
    for series in st.series:
        for number in range(1, series.instances + 1):
            yield f"{series.uid}.{number}", instance(st, series, number, size)
