"""DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3, C.4) and the one table from what the archive
says (a STOW failure reason, an error of the tree) to the status a peer is answered with."""

from __future__ import annotations

from dicomhub.dicom import stow
from dicomhub.errors import (
    DicomhubError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    WorkitemError,
)

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND (worklist, UPS): matching, some keys given were not matched
CANCELLED = 0xFE00
DUPLICATE = 0x0111  # warning on C-STORE: duplicate SOP Instance (refused, as STOW refuses it)
NOT_AUTHORIZED = 0x0124  # refused: not authorized
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700  # C-STORE: refused, out of resources
TOO_MANY = 0xA702  # C-GET/C-MOVE: out of resources, unable to perform sub-operations
UNREACHABLE = 0xA801  # C-MOVE: move destination unknown (or not reachable)
IDENTIFIER_INVALID = 0xA900  # data set does not match SOP Class
UNABLE = 0xC000  # C-FIND/C-GET/C-MOVE: unable to process
INVALID_ARGUMENT = 0x0115  # N-ACTION: invalid argument value
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_ACTION = 0x0123
UPS_NOT_SCHEDULED = 0xC309  # N-CREATE: the provided UPS state was not SCHEDULED
RESOURCE_LIMITATION = 0x0213

STORE_STATUS = {  # STOW failure reason -> C-STORE status
    stow.PROCESSING_FAILURE: PROCESSING_FAILURE,
    stow.VALIDATION_FAILURE: IDENTIFIER_INVALID,
    stow.SOP_INSTANCE_ALREADY_EXISTS: DUPLICATE,
    stow.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}


ERROR_STATUS = [  # error -> (C-FIND/C-GET/C-MOVE status, N-ACTION status); first match wins
    (Forbidden, NOT_AUTHORIZED, NOT_AUTHORIZED),
    (PayloadTooLarge, TOO_MANY, RESOURCE_LIMITATION),
    (InvalidRequest, IDENTIFIER_INVALID, INVALID_ARGUMENT),
    (DicomhubError, UNABLE, PROCESSING_FAILURE),
]


def status_of(error: DicomhubError, action: bool = False) -> int:
    """The status answering a request the archive refused with ``error`` (``action``: an
    N-ACTION, else a query or retrieval)."""
    return next(a if action else q for kind, q, a in ERROR_STATUS if isinstance(error, kind))


def workitem_status(error: DicomhubError, create: bool = False) -> int:
    """The status of a UPS DIMSE request (PS3.4 Annex CC) the archive refused: the Annex CC
    code the refusal names (UPS-RS names the same ones), save that N-CREATE (``create``) says
    C309, not C303, of a state other than SCHEDULED."""
    if isinstance(error, WorkitemError):
        code = int(error.code, 16)
        return UPS_NOT_SCHEDULED if create and code == 0xC303 else code
    return status_of(error, action=True)
