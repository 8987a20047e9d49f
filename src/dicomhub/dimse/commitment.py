"""Storage Commitment Push Model as SCP (PS3.4 J.3): an N-ACTION asks the archive to commit
instances; an N-EVENT-REPORT answers, per instance.

The N-ACTION is answered at once, once its Transaction UID is recorded in the index as an
operation named after it: a Transaction UID used before is refused (PS3.4 J.3.2: it shall not
be reused). The archive then looks every instance up in the index (an instance is committed
when it is stored with the SOP Class the request names: its blob was durable before its index
row existed). The report to a requester listed in ``--dimse-peers`` is a job (``deliver``): any
node's job runner sends it on a new association, in which dicomhub takes the SCP role, and
tries again with the runner's backoff; it survives a restart or a killed node. To any other
requester it goes on its own association, if it still holds it open. A report that cannot be
delivered is logged and audited as such.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from dicomhub.dimse.audit import audit_entry
from dicomhub.dimse.callers import Peer, caller_of, parse_partitions, parse_peers
from dicomhub.dimse.status import (
    INVALID_OBJECT_INSTANCE,
    NO_SUCH_ACTION,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
    status_of,
)
from dicomhub.dimse.tls import tls_args
from dicomhub.errors import DicomhubError, InvalidRequest, Unavailable
from dicomhub.model import DEFAULT_PARTITION, JobType
from dicomhub.settings_groups import Dimse

log = logging.getLogger(__name__)

MAX_REFERENCES = 100_000  # instances in one request (0x0213 above)
REPLY_TIMEOUT = 10.0  # for a report on the request's association
RECORD_TIMEOUT = 30.0  # for the index to record the transaction
CHUNK = 100  # SOP Instance UIDs looked up in one query


def operation_id(transaction: str) -> str:
    """The operation of a Transaction UID: one per UID, so a reused one is found."""
    return "commitment-" + hashlib.sha256(transaction.encode()).hexdigest()[:32]


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
                peer = self.service.peers.get(caller)
                if not self._record(asked, (caller, address), peer is not None):
                    status = PROCESSING_FAILURE
                    detail["message"] = "the Transaction UID was used before (PS3.4 J.3.2)"
                elif peer is None:  # the request's association is the only way back
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

    def _record(self, request: Request, caller: tuple[str, str], to_peer: bool) -> bool:
        """Record the transaction (for a peer, as the job that delivers its report); False when
        its Transaction UID was used before."""
        payload = {
            "transaction": request.transaction,
            "references": [list(r) for r in request.references],
            "requester": list(caller),
        }
        kind = JobType.STORAGE_COMMITMENT if to_peer else JobType.COMMITMENT_ANSWERED
        started = self.service.archive.operations.start(
            str(kind), payload, id=operation_id(request.transaction)
        )
        future = asyncio.run_coroutine_threadsafe(started, self.service.loop)
        try:
            return future.result(RECORD_TIMEOUT) is not None
        except TimeoutError:
            future.cancel()
            raise Unavailable("index", "recording the transaction took too long") from None

    @staticmethod
    def _parse(event) -> Request:
        try:
            return parse_request(event.action_information, MAX_REFERENCES)
        except DicomhubError:
            raise
        except Exception as exc:  # noqa: BLE001 - an Action Information pydicom cannot read
            raise InvalidRequest(f"the Action Information cannot be read: {exc}") from exc

    async def _answer(self, assoc, caller: tuple[str, str], request: Request) -> None:
        """The report on the request's association (a requester that is no peer)."""
        clock = time.perf_counter()
        service = self.service
        event_type, info, detail = await _report(
            service.archive, service.settings, request, caller[0]
        )
        status = await asyncio.to_thread(_send_back, assoc, event_type, info)
        detail["via"] = "the request's association"
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


async def deliver(archive, settings: Dimse, payload: dict) -> dict:
    """The job of a report to a requester in ``--dimse-peers``: look the instances up, send the
    report on a new association; one that is not delivered raises, and the job runner tries
    again later (with backoff, up to the job's attempts)."""
    clock = time.perf_counter()
    request = Request(payload["transaction"], [tuple(r) for r in payload["references"]])
    caller = tuple(payload["requester"])
    peer = parse_peers(settings.peers).get(caller[0])
    if peer is None:
        raise Unavailable("dimse", f"{caller[0]} is no longer in --dimse-peers")
    event_type, info, detail = await _report(archive, settings, request, caller[0])
    status = await asyncio.to_thread(_send_new, settings, peer, caller[0], event_type, info)
    detail["via"] = f"a new association to {peer}"
    if status != SUCCESS:
        detail["message"] = "the report was not delivered (tried again later)"
    if archive.audit is not None:
        outcome = PROCESSING_FAILURE if status is None else status
        entry = audit_entry(settings.aet, caller, "N-EVENT-REPORT", outcome, clock, detail)
        archive.audit.record(entry)
    if status != SUCCESS:
        raise Unavailable("dimse", f"the storage commitment report to {peer} was not delivered")
    return detail


async def _report(
    archive, settings: Dimse, request: Request, requester: str
) -> tuple[int, Dataset, dict]:
    """The report's Event Type ID and Event Information, and its audit detail: of the
    instances of the requester's data partition (--dimse-partitions)."""
    partition = parse_partitions(settings.partitions).get(requester, DEFAULT_PARTITION)
    try:
        failed = await failures(archive, request, settings.max_results, partition)
    except Exception:  # noqa: BLE001 - reported as failures, never silently dropped
        log.exception("storage commitment %s: the lookup failed", request.transaction)
        failed = {sop: PROCESSING_FAILURE for _, sop in request.references}
    event_type, info = report(request, failed, settings.aet)
    detail = {
        "transaction": request.transaction,
        "committed": len(request.references) - len(failed),
        "failed": len(failed),
    }
    return event_type, info, detail


def _send_new(settings: Dimse, peer: Peer, ae_title: str, event_type: int, info: Dataset):
    ae = AE(ae_title=settings.aet)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.timeout
    ae.add_requested_context(commitment.SOP_CLASS)
    role = build_role(commitment.SOP_CLASS, scu_role=False, scp_role=True)
    assoc = ae.associate(
        peer.host, peer.port, ae_title=ae_title, ext_neg=[role], **tls_args(settings, peer)
    )
    if not assoc.is_established:
        return None
    try:
        return _send(assoc, event_type, info)
    finally:
        assoc.release()


async def failures(
    archive, request: Request, max_limit: int, partition: str = DEFAULT_PARTITION
) -> dict[str, int]:
    """The Failure Reason of each requested SOP Instance UID data ``partition`` does not hold
    with the requested SOP Class."""
    stored: dict[str, set[str]] = {}
    uids = list(dict.fromkeys(sop for _, sop in request.references))
    for start in range(0, len(uids), CHUNK):
        params = [
            ("SOPInstanceUID", "\\".join(uids[start : start + CHUNK])),
            ("limit", str(max_limit)),
        ]
        query = parse_query(params, Level.INSTANCE, max_limit=max_limit)
        query.partition = partition
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
