"""Audit entries of DIMSE operations (the HTTP routes' audit log, protocol ``dimse``)."""

from __future__ import annotations

import time

from dicomhub.clock import utcnow
from dicomhub.model import READ, WRITE, AuditEntry

# the data actions of the HTTP routes that do the same
ACTIONS = {
    "C-STORE": WRITE,
    "C-FIND": READ,
    "C-GET": READ,
    "C-MOVE": READ,
    "N-ACTION": WRITE,
    "N-CREATE": WRITE,
    "N-SET": WRITE,
    "N-GET": READ,
    "N-EVENT-REPORT": WRITE,
}  # storage commitment and UPS changes: by storers


def audit_entry(
    aet: str,
    caller: tuple[str, str],
    command: str,
    status: int,
    clock: float,
    detail: dict,
    **fields,
) -> AuditEntry:
    """The entry of ``command`` between ``caller`` (AE title, address) and dicomhub (``aet``),
    begun at ``clock`` (time.perf_counter())."""
    ae_title, address = caller
    return AuditEntry(
        time=utcnow(),
        protocol="dimse",
        method=command,
        path=f"{ae_title}->{aet}",
        status=status,
        principal=ae_title,
        address=address,
        action=ACTIONS.get(command),
        duration_ms=round((time.perf_counter() - clock) * 1000, 3),
        detail=detail,
        **fields,
    )
