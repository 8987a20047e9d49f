"""FHIR: the projection of DICOM studies into FHIR R4, and a thin client."""
