"""DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3, C.4) and the one table from what the archive
says (a STOW failure reason, an error of the tree) to the status a peer is answered with."""

from __future__ import annotations

from dicomhub.dicom import stow
from dicomhub.errors import DicomhubError, Forbidden, InvalidRequest

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
DUPLICATE = 0x0111  # warning on C-STORE: duplicate SOP Instance (refused, as STOW refuses it)
NOT_AUTHORIZED = 0x0124  # refused: not authorized
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700  # C-STORE: refused, out of resources
TOO_MANY = 0xA702  # C-GET/C-MOVE: out of resources, unable to perform sub-operations
UNREACHABLE = 0xA801  # C-MOVE: move destination unknown (or not reachable)
IDENTIFIER_INVALID = 0xA900  # data set does not match SOP Class
UNABLE = 0xC000  # C-FIND/C-GET/C-MOVE: unable to process

STORE_STATUS = {  # STOW failure reason -> C-STORE status
    stow.PROCESSING_FAILURE: PROCESSING_FAILURE,
    stow.VALIDATION_FAILURE: IDENTIFIER_INVALID,
    stow.SOP_INSTANCE_ALREADY_EXISTS: DUPLICATE,
}


def status_of(error: DicomhubError) -> int:
    """The status of a query or retrieval the archive refused with ``error``."""
    if isinstance(error, Forbidden):
        return NOT_AUTHORIZED
    if isinstance(error, InvalidRequest):
        return IDENTIFIER_INVALID
    return UNABLE
