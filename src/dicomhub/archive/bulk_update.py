"""Bulk update (Microsoft's POST /v2/studies/$bulkUpdate, section 12 of its docs): attributes
of the Patient Identification, Patient Demographic and General Study modules changed in every
instance of up to 50 studies, each instance getting a new version (the original is kept).

A new version's file is the old one with its header rewritten and the rest of the file (pixel
data and whatever follows the last attribute that may change) copied after it in chunks:
never the whole file in memory, so a 2 GB whole-slide image updates in constant memory.

A study is updated at once: the new versions of all its instances are written first, then one
index transaction makes them the latest together (version_ops.update: as an upsert replaces
one, an ``update`` change-feed entry each). A reader sees the whole study before or after the
update, never part of it updated; an instance that could not be updated (its file refused the
change, or it was replaced or deleted meanwhile) keeps its version and is listed in the errors.

It is a leased background job that goes on from its checkpoint, saved after each study: the
next study and the result counts so far. A job resumed on another node starts the study it was
at again with those counts; the versions the dead runner wrote for it are never made the
latest (their uploads time out and the cleanup job deletes their blobs).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_partial
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from dicomhub import __version__
from dicomhub.archive.operations import OperationsService
from dicomhub.archive.spool import PartBody
from dicomhub.archive.store import StoreService
from dicomhub.clock import utcnow
from dicomhub.dicom.instance import InvalidInstance
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import Conflict, InvalidDicom, InvalidRequest, NotFound
from dicomhub.model import (
    DEFAULT_PARTITION,
    JobType,
    NewInstance,
    Scope,
    StoredInstance,
    blob_key,
)
from dicomhub.storage.protocols import BlobStore, Instances, Uploads

MAX_STUDIES = 50  # Microsoft's UpdateTags.MaxStudyInstanceUidLimit
CHUNK = 4 * 1024 * 1024  # bytes copied at once (Microsoft's staged blocks are 4 MiB)
MAX_ERRORS = 1000  # error lines kept in the result (failures past them are only counted)
IMPLEMENTATION_CLASS_UID = "2.25.64191228604113768518762741435993217804"
IMPLEMENTATION_VERSION_NAME = f"DICOMHUB_{__version__}"[:16]
# Section 12: the attributes that may change (none is a sequence)
CHANGEABLE_KEYWORDS = (
    # Patient Identification module
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "TypeOfPatientID",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    # Patient Demographic module
    "PatientAge",
    "Occupation",
    "ConfidentialityConstraintOnPatientDataDescription",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "QualityControlSubject",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "PatientTelephoneNumbers",
    "EthnicGroup",
    "PatientReligiousPreference",
    "PatientComments",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    # General Study module
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyDescription",
)
CHANGEABLE = {tag_for_keyword(k): k for k in CHANGEABLE_KEYWORDS}
# The header rewritten ends before the first top-level attribute past every changeable one
LAST_CHANGEABLE = max(CHANGEABLE)


class ChangeRefused(Exception):
    """An instance the change cannot apply to (why: its message)."""


def parse(body: Any) -> dict:
    """The job's payload from a request body; InvalidRequest (400) for anything not allowed."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            'the body must be a JSON object {"studyInstanceUids": [...], "changeDataset": {...}}'
        )
    fields = {str(k).lower(): v for k, v in body.items()}
    unknown = sorted(set(fields) - {"studyinstanceuids", "changedataset"})
    if unknown:
        raise InvalidRequest(f"unknown member(s) of the body: {', '.join(unknown)}")
    studies = fields.get("studyinstanceuids")
    if not isinstance(studies, list) or not studies:
        raise InvalidRequest("studyInstanceUids must be a non-empty array of Study Instance UIDs")
    if not all(isinstance(s, str) for s in studies):
        raise InvalidRequest("studyInstanceUids must be an array of strings")
    studies = list(dict.fromkeys(require_uid(s, "Study Instance UID") for s in studies))
    if len(studies) > MAX_STUDIES:
        raise InvalidRequest(
            f"a bulk update changes at most {MAX_STUDIES} studies; {len(studies)} were given"
        )
    changes = fields.get("changedataset")
    if not isinstance(changes, dict) or not changes:
        raise InvalidRequest("changeDataset must be a non-empty DICOM JSON object")
    for key, element in changes.items():
        _check_element(key, element)
    try:
        Dataset.from_json(changes)
    except Exception as exc:  # noqa: BLE001 - any malformed value
        raise InvalidRequest(f"changeDataset is not valid DICOM JSON: {exc}") from None
    return {"studies": studies, "changeDataset": changes}


def _check_element(key: str, element: Any) -> None:
    try:
        tag = int(key, 16) if len(key) == 8 else None
    except ValueError:
        tag = None
    if tag is None:
        raise InvalidRequest(f"changeDataset key {key[:20]!r} is not a tag (8 hex digits)")
    name = keyword_for_tag(tag) or key
    allowed = ", ".join(CHANGEABLE_KEYWORDS)
    if not isinstance(element, dict):
        raise InvalidRequest(f"changeDataset {name}: the value must be a DICOM JSON element")
    if element.get("vr") == "SQ":
        raise InvalidRequest(f"changeDataset {name}: sequences cannot be changed")
    if tag not in CHANGEABLE:
        raise InvalidRequest(
            f"changeDataset {name} ({key}) cannot be changed by a bulk update; these can: {allowed}"
        )
    if element.get("vr") != dictionary_VR(tag):
        raise InvalidRequest(f"changeDataset {name}: the vr must be {dictionary_VR(tag)}")
    extra = sorted(set(element) - {"vr", "Value"})
    if extra:
        raise InvalidRequest(f"changeDataset {name}: {', '.join(extra)} not allowed (only Value)")
    value = element.get("Value")
    if value is not None and not isinstance(value, list):
        raise InvalidRequest(f"changeDataset {name}: Value must be an array")


def rewrite_header(fp: BinaryIO, changes: Dataset) -> tuple[bytes, int]:
    """The new file's header (preamble, file meta, the dataset up to the last attribute that
    may change) and the offset in ``fp`` (the old file) where the rest to copy after it starts.
    ChangeRefused when the change does not apply."""
    fp.seek(0)
    try:
        ds = read_partial(fp, stop_when=lambda tag, vr, length: tag > LAST_CHANGEABLE)
    except Exception as exc:  # noqa: BLE001 - a stored file pydicom cannot read
        raise ChangeRefused(f"the stored file cannot be read: {exc}") from None
    rest = fp.tell()
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise ChangeRefused("the stored file has no transfer syntax in its file meta information")
    if syntax == DeflatedExplicitVRLittleEndian:
        raise ChangeRefused("a deflated file cannot be updated in place")
    for element in changes:
        if element.is_empty and element.tag in ds and not ds[element.tag].is_empty:
            raise ChangeRefused(
                f"{element.keyword} has a value in the instance: a value cannot be changed to null"
            )
        _check_encodable(ds, element)
        ds[element.tag] = copy.deepcopy(element)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out = DicomBytesIO()
    try:
        out.write((getattr(ds, "preamble", None) or b"\0" * 128) + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        # in the encoding the dataset was read in (as the rest of the file is written), which
        # a file whose transfer syntax misnames it keeps
        implicit, little = ds.original_encoding
        # read as implicit VR though the transfer syntax says explicit (pydicom falls back)
        implicit = implicit or any(getattr(ds.get_item(t), "VR", "") is None for t in ds.keys())
        out.is_implicit_VR, out.is_little_endian = implicit, little
        write_dataset(out, ds)
    except Exception as exc:  # noqa: BLE001 - e.g. a value the character set cannot encode
        raise ChangeRefused(f"the new header cannot be written: {exc}") from None
    return out.getvalue(), rest


def _check_encodable(ds: Dataset, element) -> None:
    """A text value the instance's character set (Specific Character Set) cannot hold is refused:
    the instance is not re-encoded (its other values, the rest of its file, keep theirs)."""
    declared = ds.get("SpecificCharacterSet")
    names = [] if declared is None else [declared] if isinstance(declared, str) else list(declared)
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(names) > 1:  # ISO 2022 code extensions: pydicom switches between them
        return
    codec = convert_encodings(names)[0] if names else "ascii"  # none: the default repertoire
    values = element.value if element.VM > 1 else [element.value]
    for value in values:
        if value is None or not isinstance(value, str | PersonName):
            continue
        try:
            str(value).encode(codec)
        except (UnicodeEncodeError, LookupError):
            charset = " \\".join(names) or "the default repertoire (none declared)"
            raise ChangeRefused(
                f"{element.keyword} {str(value)!r} cannot be encoded in the instance's character "
                f"set, {charset}"
            ) from None


class BulkUpdateService:
    def __init__(
        self,
        index: Uploads,
        instances: Instances,
        blobs: BlobStore,
        operations: OperationsService,
        store: StoreService,
        spool_dir: Path,
        replaced_delay: float,
    ):
        """``replaced_delay``: seconds before the blob of a replaced version (not the
        original) is deleted, as for upserts (--delete-delay)."""
        self.index = index
        self.instances = instances
        self.blobs = blobs
        self.operations = operations
        self.store = store
        self.spool_dir = spool_dir
        self.replaced_delay = timedelta(seconds=replaced_delay)

    async def start(self, body: Any, partition: str = DEFAULT_PARTITION) -> str:
        """Queue the bulk update ``body`` asks for, of studies of data partition ``partition``;
        its operation id. Conflict (409) while another is queued or running: one at a time."""
        payload = {**parse(body), "partition": partition}
        wanted = uuid.uuid4().hex
        got = await self.operations.start(str(JobType.BULK_UPDATE), payload, True, wanted)
        if got != wanted:
            raise Conflict(
                f"bulk update operation {got} is queued or running; one bulk update runs at "
                "a time: try again once it has completed (GET /v2/operations/" + f"{got})"
            )
        return wanted

    async def run(self, payload: dict, checkpoint: dict | None, progress) -> dict:
        changes = Dataset.from_json(payload["changeDataset"])
        studies = payload["studies"]
        state = checkpoint or {
            "study": 0,
            "results": {"studyUpdated": 0, "studyFailed": 0, "instanceUpdated": 0, "errors": []},
        }
        results = state["results"]
        for number in range(state["study"], len(studies)):
            start = {"study": number, "results": _copy(results)}  # where a resumed job goes on

            def share(part: float, at: int = number, checkpoint: dict = start) -> None:
                progress(int((at + part) * 100 / len(studies)), checkpoint)

            study = Scope(studies[number], partition=payload.get("partition", DEFAULT_PARTITION))
            failed = await self._update_study(study, changes, results, share)
            results["studyFailed" if failed else "studyUpdated"] += 1
            progress(
                int((number + 1) * 100 / len(studies)),
                {"study": number + 1, "results": _copy(results)},
            )
        return results

    async def _update_study(self, study: Scope, changes: Dataset, results: dict, share) -> bool:
        """Update every instance of ``study``: each new version written first, then all made
        the latest at once (one index transaction). Whether one of them failed."""
        found = sorted(await self.instances.instances(study), key=_order)
        if not found:
            _error(results, f"study {study.study}: not found")
            return True
        failed = False
        ready: list[tuple[StoredInstance, int, NewInstance]] = []
        try:
            for done, instance in enumerate(found, 1):
                outcome = await self._write_version(instance, changes)
                if isinstance(outcome, str):
                    failed = True
                    _error(results, f"{_name(instance)}: {outcome}")
                else:
                    ready.append((instance, *outcome))
                share(done / (len(found) + 1))
            if not ready:
                return failed
            outcomes = await self.index.bulk_update(
                [(version, record, old.version) for old, version, record in ready],
                utcnow() + self.replaced_delay,
            )
        except BaseException:  # nothing of the study committed: the new versions go
            await asyncio.shield(self._release_all(v for _, v, _ in ready))
            raise
        for (old, version, record), outcome in zip(ready, outcomes, strict=True):
            if outcome is None:
                results["instanceUpdated"] += 1
                continue
            failed = True
            _error(results, f"{_name(old)}: {outcome}")
            await asyncio.shield(
                self.store._release(version, blob_key(record.id.partition, version))
            )
        return failed

    async def _release_all(self, versions) -> None:
        for version in versions:
            await self.store._release(version)

    async def _write_version(
        self, instance: StoredInstance, changes: Dataset
    ) -> tuple[int, NewInstance] | str:
        """The new version of ``instance`` with ``changes``, its blob written (not yet the
        latest): its version and record, or why it could not be made."""
        try:
            body = await self._rewrite(instance, changes)
        except NotFound:
            return "the stored file of the instance is missing"
        except ChangeRefused as exc:
            return str(exc)
        try:
            try:
                described = await asyncio.to_thread(
                    self.store._describe, body, instance.id.study, None
                )
            except (InvalidInstance, InvalidDicom) as exc:
                return f"the updated file is not valid: {exc}"
            record = described.record.in_partition(instance.id.partition)
            (version,) = await self.index.reserve_versions(record.id.partition, 1)
            try:
                await self.blobs.put(blob_key(record.id.partition, version), body.path or body.data)
            except BaseException:
                await asyncio.shield(self.store._release(version))
                raise
            return version, record
        finally:
            body.discard()

    async def _rewrite(self, instance: StoredInstance, changes: Dataset) -> PartBody:
        """The new file, spooled: the new header, then the old file's rest copied in chunks."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)  # a worker does not clear it at start
        local = await self.blobs.local_path(instance.blob_key)
        source: PartBody | None = None
        if local is None:  # an object store: its object copied to a local file first
            source = PartBody(self.spool_dir, 1 << 62)
            try:
                async for chunk in self.blobs.stream(instance.blob_key, chunk_size=CHUNK):
                    await source.write(chunk)
                source.close()
            except BaseException:
                source.discard()
                raise
        new = PartBody(self.spool_dir, 1 << 62)
        try:
            fp = source.open() if source is not None else open(local, "rb")  # noqa: SIM115
            try:
                header, rest = await asyncio.to_thread(rewrite_header, fp, changes)
                await new.write(header)
                fp.seek(rest)
                while chunk := await asyncio.to_thread(fp.read, CHUNK):
                    await new.write(chunk)
            finally:
                fp.close()
            new.close()
        except FileNotFoundError:
            new.discard()
            raise NotFound(f"the file of version {instance.version}") from None
        except BaseException:
            new.discard()
            raise
        finally:
            if source is not None:
                source.discard()
        return new


def _copy(results: dict) -> dict:
    return {**results, "errors": list(results["errors"])}


def _name(instance: StoredInstance) -> str:
    ids = instance.id
    return f"instance {ids.study}/{ids.series}/{ids.sop}"


def _order(instance: StoredInstance) -> tuple[str, str]:
    return (instance.id.series, instance.id.sop)


def _error(results: dict, line: str) -> None:
    if len(results["errors"]) < MAX_ERRORS:
        results["errors"].append(line)
