"""Which attributes belong to which level of the Study Root model, and what QIDO-RS returns.

Patient attributes count as study attributes (PS3.18 10.6.1.2.3, Study Root). Study and series
attributes are what the General Study / Patient / Patient Study / Clinical Trial and General
Series / Frame of Reference / General Equipment modules of PS3.3 define; everything else is an
instance attribute.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.datadict import tag_for_keyword


class Level(IntEnum):
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown keyword {keyword}")
        tags.add(tag)
    return frozenset(tags)


# Present at every level.
COMMON = _tags("SpecificCharacterSet", "TimezoneOffsetFromUTC")

STUDY_ATTRIBUTES = COMMON | _tags(
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "QualityControlSubject", "OtherPatientNames", "OtherPatientIDsSequence", "EthnicGroup",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "ReferencedPatientSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "AnatomicRegionsInStudyCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "MedicalAlerts", "Allergies", "SmokingStatus",
    "PregnancyStatus", "LastMenstrualDate", "PatientState", "PatientSexNeutered", "Occupation",
    "AdditionalPatientHistory", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "ServiceEpisodeDescription",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip

SERIES_ATTRIBUTES = COMMON | _tags(
    # General Series
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "ProtocolName",
    "SeriesDescription", "SeriesDescriptionCodeSequence", "OperatorsName",
    "OperatorIdentificationSequence", "ReferencedPerformedProcedureStepSequence",
    "RelatedSeriesSequence", "BodyPartExamined", "PatientPosition", "RequestAttributesSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence", "CommentsOnThePerformedProcedureStep",
    "AnatomicalOrientationType",
    # Clinical Trial Series
    "ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID",
    "ClinicalTrialSeriesDescription",
    # Frame of Reference
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    # General Equipment
    "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName",
    "InstitutionalDepartmentName", "ManufacturerModelName", "DeviceSerialNumber", "DeviceUID",
    "GantryID", "SoftwareVersions", "SpatialResolution", "DateOfLastCalibration",
    "TimeOfLastCalibration",
)  # fmt: skip

# Kept with each instance row so a default instance search reads no full metadata.
INSTANCE_SUMMARY = COMMON | _tags(
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames", "AcquisitionDateTime",
)  # fmt: skip

# Computed by the server (PS3.18 10.6.3.3 and PS3.4 C.6.1.1.4/5).
RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
STUDY_SERIES_COUNT = 0x00201206
STUDY_INSTANCE_COUNT = 0x00201208
SERIES_INSTANCE_COUNT = 0x00201209
COMPUTED = {
    Level.STUDY: frozenset(
        {
            RETRIEVE_URL,
            INSTANCE_AVAILABILITY,
            MODALITIES_IN_STUDY,
            SOP_CLASSES_IN_STUDY,
            STUDY_SERIES_COUNT,
            STUDY_INSTANCE_COUNT,
        }
    ),
    Level.SERIES: frozenset({RETRIEVE_URL, INSTANCE_AVAILABILITY, SERIES_INSTANCE_COUNT}),
    Level.INSTANCE: frozenset({RETRIEVE_URL, INSTANCE_AVAILABILITY}),
}

# PS3.18 tables 10.6.3-3/4/5, plus what Microsoft's server returns by default (v1 and v2).
DEFAULTS = {
    Level.STUDY: COMMON
    | _tags(
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "RetrieveURL",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyDescription",
    ),  # fmt: skip
    Level.SERIES: COMMON
    | _tags(
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "RetrieveURL",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "ManufacturerModelName",
        "InstanceAvailability",
    ),  # fmt: skip
    Level.INSTANCE: COMMON
    | _tags(
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "RetrieveURL",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),  # fmt: skip
}


_STUDY_ONLY = STUDY_ATTRIBUTES | (COMPUTED[Level.STUDY] - COMPUTED[Level.INSTANCE])


def level_of(tag: int) -> Level:
    """The level an attribute belongs to (computed attributes by their meaning)."""
    if tag in _STUDY_ONLY:
        return Level.STUDY
    if tag in SERIES_ATTRIBUTES or tag == SERIES_INSTANCE_COUNT:
        return Level.SERIES
    return Level.INSTANCE
