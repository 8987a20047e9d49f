"""What a C-GET or C-MOVE retrieves: the instances its identifier names by unique
keys (PS3.4 C.4.2.2.1), found with C-FIND's engine, and each as a data set to send."""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.dataset import Dataset

from dicomhub.archive.archive import Archive
from dicomhub.dicom import codecs
from dicomhub.dicom.cfind import query_level
from dicomhub.dimse.find import find
from dicomhub.errors import InvalidRequest
from dicomhub.model import DEFAULT_PARTITION, Scope, StoredInstance

UNIQUE = {  # level -> the unique key that must be given at it
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations is a US


async def instances(
    archive: Archive, identifier: Dataset, max_limit: int, partition: str = DEFAULT_PARTITION
) -> list[StoredInstance]:
    """The stored instances of data ``partition`` ``identifier`` names (InvalidRequest: it
    names none properly)."""
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
    async for match in find(archive, query, max_limit, partition):
        ids = (match.StudyInstanceUID, match.SeriesInstanceUID, match.SOPInstanceUID)
        scope = Scope(*ids, partition=partition)
        found += await archive.retrieve.instances(scope)
    return found


async def dataset(archive: Archive, instance: StoredInstance, accepted: frozenset[str]) -> Dataset:
    """The instance to send where ``accepted`` are the transfer syntaxes its SOP class may be
    sent in (empty: unknown): as stored when it may be, else converted to one that may."""
    target = await sending_syntax(archive, instance, accepted)
    if target is None:
        data = b"".join([chunk async for chunk in archive.retrieve.content(instance)])
    else:
        data = b"".join([chunk async for chunk in await archive.pixels.instance(instance, target)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


async def sending_syntax(
    archive: Archive, instance: StoredInstance, accepted: frozenset[str]
) -> str | None:
    """The syntax to convert the instance to, or None to send it as stored: Explicit VR Little
    Endian when a native syntax was accepted (pynetdicom re-encodes among native syntaxes),
    else the first accepted syntax the image can be converted to."""
    if not accepted or instance.transfer_syntax in accepted:
        return None
    convertible = archive.pixels.targets(instance, await archive.pixels.info(instance))
    if accepted & codecs.NATIVE:
        return codecs.EXPLICIT_VR_LE if codecs.EXPLICIT_VR_LE in convertible else None
    return next((ts for ts in codecs.TARGETS if ts in accepted and ts in convertible), None)
