"""Storage Commitment Push Model as SCP (PS3.4 J.3): an N-ACTION asks the archive to commit
instances; an N-EVENT-REPORT answers, per instance.

The N-ACTION is answered at once. The archive then looks every instance up in the index (an
instance is committed when it is stored with the SOP Class the request names: its blob was
durable before its index row existed). The report goes to a requester listed in
``--dimse-peers`` on a new association, in which dicomhub takes the SCP role, tried again after
each of ``RETRY_DELAYS``; to any other requester on its own association, if it still holds it
open. A report that cannot be delivered is logged and audited as such.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.pdu_primitives import A_RELEASE

from dicomhub.dicom import commitment
from dicomhub.dicom.commitment import Request, parse_request, report
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import parse_query
from dicomhub.dimse.callers import Peer, caller_of
from dicomhub.dimse.status import (
    INVALID_OBJECT_INSTANCE,
    NO_SUCH_ACTION,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
    status_of,
)
from dicomhub.errors import DicomhubError, InvalidRequest

log = logging.getLogger(__name__)

MAX_REFERENCES = 100_000  # instances in one request (0x0213 above)
RETRY_DELAYS = (10.0, 60.0)  # before the second and third new associations
REPLY_TIMEOUT = 10.0  # for a report on the request's association
CHUNK = 100  # SOP Instance UIDs looked up in one query


class Commitments:
    def __init__(self, service):
        self.service = service  # the DimseService: archive, settings, peers, loop, audit
        self.pending: set[Future] = set()

    def action(self, event) -> tuple[int, None]:
        """EVT_N_ACTION: accept or refuse the request; the report follows from the loop."""
        clock = time.perf_counter()
        caller, address = caller_of(event)
        request = event.request
        detail: dict = {}
        status = SUCCESS
        try:
            if not self.service.callers.allows(caller, address, "store"):
                status = NOT_AUTHORIZED
            elif request.ActionTypeID != commitment.REQUEST:
                status, detail["message"] = NO_SUCH_ACTION, "Action Type ID must be 1"
            elif request.RequestedSOPInstanceUID != commitment.SOP_INSTANCE:
                status = INVALID_OBJECT_INSTANCE
                detail["message"] = f"the Requested SOP Instance must be {commitment.SOP_INSTANCE}"
            else:
                asked = self._parse(event)
                detail.update(transaction=asked.transaction, instances=len(asked.references))
                answer = self._answer(event.assoc, (caller, address), asked)
                future = asyncio.run_coroutine_threadsafe(answer, self.service.loop)
                self.pending.add(future)
                future.add_done_callback(self.pending.discard)
        except DicomhubError as exc:
            status, detail["message"] = status_of(exc, action=True), str(exc)
        self.service.record((caller, address), "N-ACTION", status, clock, detail)
        return status, None

    def close(self) -> None:
        """Stop the reports still to be sent (at shutdown)."""
        for future in list(self.pending):
            future.cancel()

    @staticmethod
    def _parse(event) -> Request:
        try:
            return parse_request(event.action_information, MAX_REFERENCES)
        except DicomhubError:
            raise
        except Exception as exc:  # noqa: BLE001 - an Action Information pydicom cannot read
            raise InvalidRequest(f"the Action Information cannot be read: {exc}") from exc

    async def _answer(self, assoc, caller: tuple[str, str], request: Request) -> None:
        clock = time.perf_counter()
        service = self.service
        try:
            failed = await failures(service.archive, request, service.settings.qido_max_limit)
        except Exception:  # noqa: BLE001 - reported as failures, never silently dropped
            log.exception("storage commitment %s: the lookup failed", request.transaction)
            failed = {sop: PROCESSING_FAILURE for _, sop in request.references}
        event_type, info = report(request, failed, service.settings.dimse_aet)
        detail = {
            "transaction": request.transaction,
            "committed": len(request.references) - len(failed),
            "failed": len(failed),
        }
        peer = service.peers.get(caller[0])
        status = None
        if peer is None:  # the request's association is the only way back
            status = await asyncio.to_thread(_send_back, assoc, event_type, info)
            detail["via"] = "the request's association"
        for delay in (0.0, *RETRY_DELAYS) if peer is not None else ():
            await asyncio.sleep(delay)
            status = await asyncio.to_thread(self._send_new, peer, caller[0], event_type, info)
            detail["via"] = f"a new association to {peer}"
            if status == SUCCESS:
                break
        if status != SUCCESS:
            log.warning(
                "storage commitment %s: the report to %s was not delivered (%s)",
                request.transaction,
                caller[0],
                detail["via"],
            )
            detail["message"] = "the report was not delivered"
        outcome = PROCESSING_FAILURE if status is None else status
        service.record(caller, "N-EVENT-REPORT", outcome, clock, detail)

    def _send_new(self, peer: Peer, ae_title: str, event_type: int, info: Dataset):
        settings = self.service.settings
        ae = AE(ae_title=settings.dimse_aet)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.dimse_timeout
        ae.add_requested_context(commitment.SOP_CLASS)
        role = build_role(commitment.SOP_CLASS, scu_role=False, scp_role=True)
        assoc = ae.associate(
            peer.host, peer.port, ae_title=ae_title, ext_neg=[role], **self.service.tls_args(peer)
        )
        if not assoc.is_established:
            return None
        try:
            return _send(assoc, event_type, info)
        finally:
            assoc.release()


async def failures(archive, request: Request, max_limit: int) -> dict[str, int]:
    """The Failure Reason of each requested SOP Instance UID the archive does not hold with the
    requested SOP Class."""
    stored: dict[str, set[str]] = {}
    uids = list(dict.fromkeys(sop for _, sop in request.references))
    for start in range(0, len(uids), CHUNK):
        params = [
            ("SOPInstanceUID", "\\".join(uids[start : start + CHUNK])),
            ("limit", str(max_limit)),
        ]
        query = parse_query(params, Level.INSTANCE, max_limit=max_limit)
        page = await archive.search.search(query, "")
        for result in page.results:
            sop, sop_class = result["00080018"]["Value"][0], result["00080016"]["Value"][0]
            stored.setdefault(sop, set()).add(sop_class)
    return {
        sop: commitment.NO_SUCH_OBJECT if sop not in stored else commitment.CLASS_INSTANCE_CONFLICT
        for sop_class, sop in request.references
        if sop_class not in stored.get(sop, ())
    }


def _send_back(assoc, event_type: int, info: Dataset) -> int | None:
    """Send the report on the request's association, unless the requester has released it
    (or asks to); wait at most REPLY_TIMEOUT for its answer."""
    if not assoc.is_established or isinstance(assoc.dul.peek_next_pdu(), A_RELEASE):
        return None
    timeout, assoc.dimse_timeout = assoc.dimse_timeout, min(REPLY_TIMEOUT, assoc.dimse_timeout)
    try:
        return _send(assoc, event_type, info)
    finally:
        assoc.dimse_timeout = timeout


def _send(assoc, event_type: int, info: Dataset) -> int | None:
    """Send the report; the peer's status, or None when it never answered."""
    try:
        response, _ = assoc.send_n_event_report(
            info, event_type, commitment.SOP_CLASS, commitment.SOP_INSTANCE
        )
    except (RuntimeError, ValueError, OSError) as exc:  # released meanwhile, no context
        log.info("storage commitment report not sent: %s", exc)
        return None
    return response.get("Status") if response else None
