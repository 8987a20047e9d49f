"""DICOM to FHIR R4: a study's current instances (their DICOM JSON) as Patient, Endpoint and
ImagingStudy resources, in one transaction bundle. Pure: values in, values out.

Every write is conditional on an identifier (the study UID, the patient identifier, the
endpoint address), so replaying a change creates nothing twice.

Data partitions: each partition's studies are resources of their own. The default partition's
are identified as Microsoft's DICOMcast identifies them (the study UID as ``urn:dicom:uid``
``urn:oid:{uid}``); another partition's carry the same ``urn:oid:{uid}`` value under the
partition's DICOMweb base URL as the system (its Endpoint's address), so two partitions' copies
of one study never match one search. Patients are the partition's own too (their identifier
system qualified by that base URL): a PatientID names a person only within its partition.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from dicomhub.fhir.common import DCM, DICOM_UID, value
from dicomhub.fhir.observations import dose_observations
from dicomhub.model import DEFAULT_PARTITION

PARTITION_PATIENTS = re.compile(r"/partitions/[A-Za-z0-9_.-]{1,64}/patients(/|$)")  # systems
ENDPOINT_ID = "urn:dicomhub:endpoint"  # identifies a deployment's Endpoint by its address
CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDERS = {"M": "male", "F": "female", "O": "other"}
LATERALITY = {"L": ("7771000", "Left"), "R": ("24028007", "Right"), "B": ("51440002", "Both")}
SNOMED = "http://snomed.info/sct"


class Unmappable(ValueError):
    """The study cannot be written to FHIR as it is (e.g. it has no PatientID)."""


@dataclass(frozen=True)
class Options:
    endpoint: str  # the public DICOMweb base URL of the deployment (of the partition's, below)
    patient_system: str = ""  # identifier system of PatientID ("" : none)
    use_issuer: bool = False  # IssuerOfPatientID (0010,0021) as the system when present
    partition: str = DEFAULT_PARTITION  # the data partition whose studies these are

    def of(self, partition: str) -> Options:
        """The options of data ``partition``'s studies (``self``: the default partition's):
        its DICOMweb base is the Endpoint address, the resources' source and namespace."""
        if partition == self.partition:
            return self
        return replace(
            self, endpoint=f"{self.endpoint}/partitions/{partition}", partition=partition
        )

    @property
    def uid_system(self) -> str:
        """The identifier system of the study's (and dose reports') UIDs: ``urn:dicom:uid`` in
        the default partition (as DICOMcast), the partition's DICOMweb base in another."""
        return DICOM_UID if self.partition == DEFAULT_PARTITION else self.endpoint


def patient_identifier(first: dict, options: Options) -> tuple[str, str]:
    """(system, value) of the study's patient; Unmappable without a PatientID."""
    patient_id = str(value(first, "00100020", "") or "").strip()
    if not patient_id:
        raise Unmappable("the study has no PatientID (0010,0020): its patient cannot be matched")
    system = options.patient_system
    if options.use_issuer and value(first, "00100021"):
        system = str(value(first, "00100021")).strip()
    if options.partition != DEFAULT_PARTITION:  # the partition's own patients
        system = f"{options.endpoint}/patients" + (f"/{quote(system, safe=':')}" if system else "")
    return system, patient_id


def patient(first: dict, options: Options, existing: dict | None = None) -> dict:
    """The Patient with name, gender and birth date from DICOM; other fields of ``existing``
    (what the FHIR server holds) are kept."""
    system, patient_id = patient_identifier(first, options)
    out = dict(existing or {"resourceType": "Patient"})
    identifiers = list(out.get("identifier", []))
    mine = {"system": system, "value": patient_id} if system else {"value": patient_id}
    if not any(i.get("value") == patient_id and i.get("system", "") == system for i in identifiers):
        identifiers.append(mine)
    out["identifier"] = identifiers
    name = _human_name(value(first, "00100010"))
    if name:
        out["name"] = [name]
    sex = str(value(first, "00100040", "") or "").strip().upper()
    out["gender"] = GENDERS.get(sex, "unknown") if sex else out.get("gender", "unknown")
    birth = _date(value(first, "00100030"))
    if birth:
        out["birthDate"] = birth
    return out


def endpoint(options: Options) -> dict:
    """The Endpoint of the deployment's (or a data partition's) DICOMweb service."""
    name = "dicomhub DICOMweb"
    if options.partition != DEFAULT_PARTITION:
        name += f" (data partition {options.partition})"
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": ENDPOINT_ID, "value": options.endpoint}],
        "status": "active",
        "connectionType": {"system": CONNECTION, "code": "dicom-wado-rs"},
        "name": name,
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": options.endpoint,
    }


def imaging_study(
    instances: list[dict],
    patient_ref: str,
    endpoint_ref: str,
    source: str,
    uid_system: str = DICOM_UID,
) -> dict:
    """The ImagingStudy of a study's current instances (at least one, oldest first); study
    attributes come from the newest instance. Its UID is an identifier of ``uid_system``."""
    first = instances[-1]
    series: dict[str, list[dict]] = {}
    for item in instances:
        series.setdefault(str(value(item, "0020000E")), []).append(item)
    modalities = []
    for members in series.values():
        code = str(value(members[0], "00080060", "") or "OT")
        if code not in modalities:
            modalities.append(code)
    study_uid = str(value(first, "0020000D"))
    out: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "meta": {"source": source},
        "identifier": [{"system": uid_system, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": m} for m in modalities],
        "subject": {"reference": patient_ref},
        "endpoint": [{"reference": endpoint_ref}],
        "numberOfSeries": len(series),
        "numberOfInstances": len(instances),
    }
    accession = value(first, "00080050")
    if accession:
        out["identifier"].append(
            {
                "type": {"coding": [{"system": ACSN, "code": "ACSN"}]},
                "value": str(accession),
            }
        )
    started = _datetime(
        value(first, "00080020"), value(first, "00080030"), value(first, "00080201")
    )
    if started:
        out["started"] = started
    referrer = _human_name(value(first, "00080090"))
    if referrer:
        out["referrer"] = {"display": referrer["text"]}
    description = value(first, "00081030")
    if description:
        out["description"] = str(description)
    out["series"] = [_series(uid, members) for uid, members in series.items()]
    return out


def _series(uid: str, members: list[dict]) -> dict:
    first = members[-1]
    out: dict[str, Any] = {
        "uid": uid,
        "modality": {"system": DCM, "code": str(value(first, "00080060", "") or "OT")},
        "numberOfInstances": len(members),
    }
    number = _int(value(first, "00200011"))
    if number is not None:
        out["number"] = number
    description = value(first, "0008103E")
    if description:
        out["description"] = str(description)
    body_part = value(first, "00180015")
    if body_part:
        out["bodySite"] = {"display": str(body_part)}
    laterality = str(value(first, "00200060", "") or "").strip().upper()
    if laterality in LATERALITY:
        code, display = LATERALITY[laterality]
        out["laterality"] = {"system": SNOMED, "code": code, "display": display}
    started = _datetime(
        value(first, "00080021"), value(first, "00080031"), value(first, "00080201")
    )
    if started:
        out["started"] = started
    out["instance"] = [_instance(item) for item in members]
    return out


def _instance(item: dict) -> dict:
    out: dict[str, Any] = {
        "uid": str(value(item, "00080018")),
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{value(item, '00080016')}"},
    }
    number = _int(value(item, "00200013"))
    if number is not None:
        out["number"] = number
    title = value(item, "00420010") or _concept_name(item)  # document title, SR title
    if title:
        out["title"] = str(title)
    return out


def _concept_name(item: dict) -> str | None:
    names = item.get("0040A043", {}).get("Value") or []
    return value(names[0], "00080104") if names else None


def study_bundle(
    instances: list[dict],
    options: Options,
    existing_patient: dict | None = None,
    stale: tuple[str, ...] = (),
) -> dict:
    """The transaction that makes the FHIR server hold this study as it is now (patient
    attributes from the newest instance)."""
    first = instances[-1]
    system, patient_id = patient_identifier(first, options)
    patient_url = _urn(f"{options.endpoint}|patient|{system}|{patient_id}")
    endpoint_url = _urn(f"{options.endpoint}|endpoint")
    entries = [
        {
            "fullUrl": endpoint_url,
            "resource": endpoint(options),
            "request": {
                "method": "PUT",
                "url": "Endpoint?identifier=" + _token(ENDPOINT_ID, options.endpoint),
            },
        }
    ]
    resource = patient(first, options, existing_patient)
    if existing_patient and existing_patient.get("id"):
        request = {"method": "PUT", "url": f"Patient/{existing_patient['id']}"}
        patient_ref = f"Patient/{existing_patient['id']}"
        entries.append({"fullUrl": patient_url, "resource": resource, "request": request})
    else:  # exactly this identifier: never a data partition's patient of the same PatientID
        match = "identifier=" + _token(system, patient_id, exact=True)
        request = {"method": "POST", "url": "Patient", "ifNoneExist": match}
        patient_ref = patient_url
        entries.append({"fullUrl": patient_url, "resource": resource, "request": request})
    system = options.uid_system
    study = imaging_study(instances, patient_ref, endpoint_url, options.endpoint, system)
    study_uid = str(value(first, "0020000D"))
    study_url = _urn(f"{options.endpoint}|study|{study_uid}")
    entries.append(
        {
            "fullUrl": study_url,
            "resource": study,
            "request": {"method": "PUT", "url": study_search(study_uid, system)},
        }
    )
    for item in instances:  # dose reports, as DICOMcast wrote them
        for observation in dose_observations(item, patient_ref, study_url, system):
            url = "Observation?identifier=" + _token(system, observation["identifier"][0]["value"])
            entries.append({"resource": observation, "request": {"method": "PUT", "url": url}})
    for reference in stale:  # observations of dose reports no longer in the study
        entries.append({"request": {"method": "DELETE", "url": reference}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def observation_keys(instances: list[dict]) -> set[str]:
    """The identifiers (values) of the Observations the study's dose reports give."""
    return {
        o["identifier"][0]["value"] for item in instances for o in dose_observations(item, "", "")
    }


def study_search(study_uid: str, system: str = DICOM_UID) -> str:
    """The search for a study's ImagingStudy (``system``: ``Options.uid_system``)."""
    return "ImagingStudy?identifier=" + _token(system, f"urn:oid:{study_uid}")


def patient_search(first: dict, options: Options) -> str:
    """The search for the study's patient: by its identifier; without a system, by the
    PatientID under any system (as DICOMcast), see ``linkable``."""
    system, patient_id = patient_identifier(first, options)
    return "Patient?identifier=" + _token(system, patient_id)


def linkable(found: list[dict], first: dict, options: Options) -> dict | None:
    """The first of the Patients ``patient_search`` found that the study's patient is: not a
    data partition's own patient (found by its PatientID alone, under the partition's
    system), unless the study is that partition's."""
    system, patient_id = patient_identifier(first, options)
    for resource in found:
        systems = [
            i.get("system", "")
            for i in resource.get("identifier", [])
            if i.get("value") == patient_id
        ]
        if system or any(not PARTITION_PATIENTS.search(s) for s in systems):
            return resource
    return None


def _token(system: str, code: str, exact: bool = False) -> str:
    """A token search value; without a system, any system's, or (``exact``) none."""
    token = f"{system}|{code}" if system or exact else code
    return quote(token, safe="|")


def _urn(key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, key)}"


def _human_name(pn: Any) -> dict | None:
    """A HumanName from a DICOM JSON PN value (its alphabetic group)."""
    if not pn:
        return None
    text = str(pn.get("Alphabetic", "") if isinstance(pn, dict) else pn).strip()
    if not text:
        return None
    parts = (text.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    name: dict[str, Any] = {
        "use": "usual",
        "text": " ".join(p for p in (prefix, given, middle, family, suffix) if p),
    }
    if family:
        name["family"] = family
    given_names = [g for g in (given, middle) if g]
    if given_names:
        name["given"] = given_names
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def _date(da: Any) -> str | None:
    text = str(da or "").strip()
    if len(text) >= 8 and text[:8].isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    return None


def _datetime(da: Any, tm: Any, offset: Any) -> str | None:
    """A FHIR dateTime: the date, and the time only when the UTC offset is known (FHIR needs a
    zone with a time)."""
    date = _date(da)
    if date is None:
        return None
    time = str(tm or "").strip().split(".")[0]
    zone = str(offset or "").strip()
    if len(time) >= 4 and time.isdigit() and len(zone) == 5 and zone[0] in "+-":
        seconds = time[4:6] if len(time) >= 6 else "00"
        return f"{date}T{time[:2]}:{time[2:4]}:{seconds}{zone[:3]}:{zone[3:]}"
    return date


def _int(text: Any) -> int | None:
    try:
        number = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None
