"""Radiation dose structured reports (PS3.16 TID 10001, 10011, 10021) as FHIR Observations, as
DICOMcast wrote them: one dose summary per report (LOINC 73569-6) and one per irradiation event
(DCM 113852), each part of the ImagingStudy. Pure: DICOM JSON in, resources out."""

from __future__ import annotations

from typing import Any

from dicomhub.fhir.common import DCM, DICOM_UID, value

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SR_SCHEMES = {"DCM": DCM, "SCT": "http://snomed.info/sct", "LN": LOINC, "UCUM": UCUM}
REPORTS = {"113701", "113500"}  # X-Ray / Radiopharmaceutical Radiation Dose Report
EVENTS = {"113706", "113819", "113502"}  # X-ray, CT and radiopharmaceutical irradiation events
EVENT_UID = "113769"
TARGET_REGION = "123014"
SUMMARY = {  # numeric items of the summary
    "113722",  # Dose Area Product Total
    "113725",  # Dose (RP) Total
    "113726",  # Fluoro Dose Area Product Total
    "113730",  # Total Fluoro Time
    "113731",  # Total Number of Radiographic Frames
    "113813",  # CT Dose Length Product Total
    "113812",  # Total Number of Irradiation Events
    "113507",  # Administered activity
    "113830",  # Mean CTDIvol
}
EVENT_VALUES = {"113830", "113838", "113734", "113738", "113824"}  # CTDIvol, DLP, ...


def dose_observations(
    sr: dict, patient_ref: str, study_ref: str, system: str = DICOM_UID
) -> list[dict]:
    """The Observations of one SR instance's DICOM JSON; none when it is not a dose report.
    Their UIDs are identifiers of ``system`` (the study's, projection.Options.uid_system)."""
    root = _concept(sr)
    if root is None or root[0] not in REPORTS:
        return []
    sop = str(value(sr, "00080018"))
    common = {"status": "preliminary", "subject": {"reference": patient_ref}}
    common["partOf"] = [{"reference": study_ref}]
    summary_values: dict[str, dict] = {}
    events = []
    for item, inside_event in _walk(sr.get("0040A730", {}).get("Value", []), False):
        concept = _concept(item)
        if concept is None:
            continue
        if concept[0] in EVENTS and not inside_event:
            events.append(item)
        elif not inside_event and concept[0] in SUMMARY and concept[0] not in summary_values:
            component = _component(item)
            if component:
                summary_values[concept[0]] = component
    out = [
        {
            "resourceType": "Observation",
            **common,
            "identifier": [{"system": system, "value": f"urn:oid:{sop}"}],
            "code": {
                "coding": [
                    {
                        "system": LOINC,
                        "code": "73569-6",
                        "display": "Radiation exposure and protection information",
                    }
                ]
            },
            "component": list(summary_values.values()),
        }
    ]
    for event in events:
        observation = _event(event, common, system)
        if observation:
            out.append(observation)
    return [o for o in out if o.get("component") or o.get("bodySite")]


def _event(event: dict, common: dict, system: str) -> dict | None:
    uid = None
    components, body_site = [], None
    for item, _ in _walk(event.get("0040A730", {}).get("Value", []), False):
        concept = _concept(item)
        if concept is None:
            continue
        if concept[0] == EVENT_UID:
            uid = value(item, "0040A124")
        elif concept[0] == TARGET_REGION:
            codes = item.get("0040A168", {}).get("Value", [])
            if codes:
                body_site = {"coding": [_coding(codes[0])]}
        elif concept[0] in EVENT_VALUES:
            component = _component(item)
            if component:
                components.append(component)
    if uid is None:
        return None
    out: dict[str, Any] = {
        "resourceType": "Observation",
        **common,
        "identifier": [{"system": system, "value": f"urn:oid:{uid}"}],
        "code": {"coding": [{"system": DCM, "code": "113852", "display": "Irradiation Event"}]},
    }
    if body_site:
        out["bodySite"] = body_site
    if components:
        out["component"] = components
    return out


def _walk(items: list[dict], inside_event: bool):
    """Every content item with whether it is inside an irradiation event, depth first."""
    for item in items:
        yield item, inside_event
        concept = _concept(item)
        nested = inside_event or (concept is not None and concept[0] in EVENTS)
        yield from _walk(item.get("0040A730", {}).get("Value", []), nested)


def _concept(item: dict) -> tuple[str, str, str] | None:
    names = item.get("0040A043", {}).get("Value") or []
    if not names:
        return None
    name = names[0]
    return (
        str(value(name, "00080100", "")),
        str(value(name, "00080102", "")),
        str(value(name, "00080104", "")),
    )


def _coding(code: dict) -> dict:
    scheme = str(value(code, "00080102", ""))
    out = {
        "system": SR_SCHEMES.get(scheme, f"urn:dicom:scheme:{scheme}"),
        "code": str(value(code, "00080100", "")),
    }
    meaning = value(code, "00080104")
    if meaning:
        out["display"] = str(meaning)
    return out


def _component(item: dict) -> dict | None:
    """A NUM content item as an Observation component with a UCUM quantity."""
    measured = item.get("0040A300", {}).get("Value") or []
    if not measured:
        return None
    number = value(measured[0], "0040A30A")
    try:
        number = float(number)
    except (TypeError, ValueError):
        return None
    units = measured[0].get("004008EA", {}).get("Value") or []
    unit = str(value(units[0], "00080100", "")) if units else ""
    names = item["0040A043"]["Value"]
    quantity: dict[str, Any] = {"value": number}
    if unit:
        quantity.update(unit=unit, system=UCUM, code=unit)
    return {"code": {"coding": [_coding(names[0])]}, "valueQuantity": quantity}
