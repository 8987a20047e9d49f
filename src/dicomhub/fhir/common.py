"""What the FHIR projection modules share: code systems and reading DICOM JSON."""

from __future__ import annotations

from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"


def value(item: dict, tag: str, default: Any = None) -> Any:
    """The first value of ``tag`` in a DICOM JSON object."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else default
