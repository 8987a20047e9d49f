"""What a C-GET or C-MOVE retrieves: the instances its identifier names by unique
keys (PS3.4 C.4.2.2.1), found with C-FIND's engine, and each as a data set to send."""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.dataset import Dataset

from dicomhub.archive.archive import Archive
from dicomhub.dicom.cfind import query_level
from dicomhub.dimse.find import find
from dicomhub.errors import InvalidRequest
from dicomhub.model import Scope, StoredInstance

UNIQUE = {  # level -> the unique key that must be given at it
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations is a US


async def instances(archive: Archive, identifier: Dataset, max_limit: int) -> list[StoredInstance]:
    """The stored instances ``identifier`` names (InvalidRequest: it names none properly)."""
    level = query_level(identifier)
    if not str(identifier.get(UNIQUE[level], "") or "").strip():
        raise InvalidRequest(f"a retrieve at {level} level needs {UNIQUE[level]}")
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in KEYS[: list(UNIQUE).index(level) + 1]:  # the unique keys down to the level
        value = identifier.get(keyword)
        if value is not None and str(value).strip():
            setattr(query, keyword, value)
    for keyword in KEYS[1:]:
        if keyword not in query:
            setattr(query, keyword, "")
    found = []
    async for match in find(archive, query, max_limit):
        scope = Scope(match.StudyInstanceUID, match.SeriesInstanceUID, match.SOPInstanceUID)
        found += await archive.retrieve.instances(scope)
    return found


async def dataset(archive: Archive, instance: StoredInstance) -> Dataset:
    data = b"".join([chunk async for chunk in archive.retrieve.content(instance)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))
