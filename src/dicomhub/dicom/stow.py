"""The STOW-RS response (PS3.18 section 10.5.3) and its failure and warning codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# FailureReason (0008,1197) values, as Microsoft's server sends them (PS3.4 annex GG.4.1).
PROCESSING_FAILURE = 272  # 0x0110: not a readable DICOM file, or it could not be stored
VALIDATION_FAILURE = 43264  # 0xA900: invalid or missing required attribute, study mismatch
SOP_INSTANCE_ALREADY_EXISTS = 45070  # 0xB00E
OUT_OF_RESOURCES = 42752  # 0xA700: no space left to store it

# WarningReason (0008,1196) values.
ATTRIBUTES_DROPPED = 1  # invalid attributes left out of the index and metadata
IMPLICIT_VR = 45063  # 0xB007, "data set does not match SOP class": Microsoft's for Implicit VR
MULTI_VALUED_WARNING = (  # the HTTP Warning (299) text, as Microsoft's server sends it
    "One or more indexed Dicom tag(s) have multiple values, only first value is indexed."
)

STATUS_OK, STATUS_ACCEPTED, STATUS_NO_CONTENT, STATUS_CONFLICT = 200, 202, 204, 409


@dataclass
class PartOutcome:
    """What became of one part of a STOW request."""

    sop_class: str | None = None
    sop_instance: str | None = None
    retrieve_path: str | None = None  # relative to the base URL, for a stored instance
    failure: int | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)  # one ErrorComment per dropped attribute
    implicit_vr: bool = False  # stored in Implicit VR Little Endian
    multi_valued: bool = False  # an indexed attribute has several values (the first is indexed)

    @property
    def warning_reason(self) -> int | None:
        if self.implicit_vr:
            return IMPLICIT_VR
        return ATTRIBUTES_DROPPED if self.warnings else None


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def _comments(texts: list[str]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": [{"00000902": {"vr": "LO", "Value": [t]}} for t in texts]}


def _item(o: PartOutcome) -> dict[str, Any]:
    """The SOP Class and SOP Instance UIDs every item of the answer's sequences carries."""
    return {"00081150": _ui(o.sop_class or ""), "00081155": _ui(o.sop_instance or "")}


def _failed_item(o: PartOutcome) -> dict[str, Any]:
    item = {**_item(o), "00081197": _us(o.failure)}
    if o.message:
        item["00000902"] = {"vr": "LO", "Value": [o.message]}
    return item


def _stored_item(o: PartOutcome, base_url: str) -> dict[str, Any]:
    item = {**_item(o), "00081190": {"vr": "UR", "Value": [base_url + o.retrieve_path]}}
    if o.warning_reason:
        item["00081196"] = _us(o.warning_reason)
    if o.warnings:
        item["00741048"] = _comments(o.warnings)
    return item


def build_response(
    outcomes: list[PartOutcome], base_url: str, study_path: str | None, version: int
) -> tuple[int, dict[str, Any] | None]:
    """HTTP status and response dataset, as Microsoft's server decides them (reference 5.6):
    on v2 a stored instance with a WarningReason makes it 202; on v1 only failures do."""
    if not outcomes:
        return STATUS_NO_CONTENT, None
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict[str, Any] = {}
    if study_path and stored:
        body["00081190"] = {"vr": "UR", "Value": [base_url + study_path]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(o) for o in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_stored_item(o, base_url) for o in stored]}
    if not stored:
        return STATUS_CONFLICT, body
    if failed or (version >= 2 and any(o.warning_reason for o in stored)):
        return STATUS_ACCEPTED, body
    return STATUS_OK, body
