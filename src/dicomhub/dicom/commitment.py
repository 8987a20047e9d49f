"""Storage Commitment Push Model (PS3.4 J.3): the N-ACTION request by which a storage SCU asks
the archive to take responsibility for instances it sent, and the N-EVENT-REPORT that says,
per instance, whether it did."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomhub.dicom.uids import is_valid_uid
from dicomhub.errors import InvalidRequest, PayloadTooLarge

SOP_CLASS = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
REQUEST = 1  # Action Type ID: Request Storage Commitment
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type IDs
NO_SUCH_OBJECT = 0x0112  # Failure Reasons (PS3.3 C.14.1.1)
CLASS_INSTANCE_CONFLICT = 0x0119


@dataclass(frozen=True)
class Request:
    transaction: str  # Transaction UID
    references: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID), as asked


def parse_request(info: Dataset | None, max_references: int) -> Request:
    """The Action Information of a storage commitment request (InvalidRequest: malformed,
    PayloadTooLarge: more than ``max_references`` instances)."""
    if info is None:
        raise InvalidRequest("the request has no Action Information")
    transaction = _uid(info, "TransactionUID")
    items = info.get("ReferencedSOPSequence")
    if not items:
        raise InvalidRequest("Referenced SOP Sequence (0008,1199) is missing or empty")
    if len(items) > max_references:
        raise PayloadTooLarge(
            f"{len(items)} instances in one request; at most {max_references} are committed"
        )
    references = [
        (_uid(item, "ReferencedSOPClassUID"), _uid(item, "ReferencedSOPInstanceUID"))
        for item in items
    ]
    return Request(transaction, references)


def report(request: Request, failures: dict[str, int], retrieve_ae: str) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information answering ``request``: ``failures`` holds the
    Failure Reason of each SOP Instance UID not committed; the others are committed."""
    info = Dataset()
    info.TransactionUID = request.transaction
    info.RetrieveAETitle = retrieve_ae
    committed, failed = [], []
    for sop_class, sop_instance in request.references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        if sop_instance in failures:
            item.FailureReason = failures[sop_instance]
            failed.append(item)
        else:
            committed.append(item)
    if committed:
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    return (SOME_FAILED if failed else ALL_COMMITTED), info


def _uid(item: Dataset, keyword: str) -> str:
    value = str(item.get(keyword, "") or "").strip("\0 ")
    if not is_valid_uid(value):
        raise InvalidRequest(f"{keyword} {value[:80]!r} is missing or not a valid UID")
    return value
