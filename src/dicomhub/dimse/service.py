"""The DIMSE service (pynetdicom): C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, Storage Commitment
(``commitment.py``), Modality Worklist C-FIND (``worklist.py``) and the UPS Push and Pull
services (``workitems.py``; their C-FIND in ``worklist.py``) as SCP.

pynetdicom serves each association in a thread of its own; every handler hands its work to
the archive on the server's event loop and waits for it, so a C-STORE is stored exactly as a
STOW part is (the same validation, duplicate rule, blob, index row and change-feed entry).
Every operation is audited like an HTTP request (protocol ``dimse``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    Verification,
)

from dicomhub.archive.archive import Archive
from dicomhub.archive.spool import PartBody
from dicomhub.dicom import commitment, stow, worklist
from dicomhub.dimse import retrieve
from dicomhub.dimse.audit import audit_entry
from dicomhub.dimse.callers import Callers, Peer, caller_of, parse_partitions, parse_peers
from dicomhub.dimse.commitment import Commitments
from dicomhub.dimse.find import find
from dicomhub.dimse.status import (
    CANCELLED,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    PENDING_WARNING,
    STORE_STATUS,
    SUCCESS,
    TOO_MANY,
    UNABLE,
    UNREACHABLE,
    status_of,
)
from dicomhub.dimse.tls import tls_args, tls_context
from dicomhub.dimse.workitems import WorkitemHandlers
from dicomhub.dimse.worklist import modality_worklist, ups_find
from dicomhub.errors import DicomhubError
from dicomhub.model import DEFAULT_PARTITION
from dicomhub.settings_groups import Dimse
from dicomhub.telemetry import instruments

log = logging.getLogger(__name__)

FIND_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
]
GET_MODELS = [
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
]
MOVE_MODELS = [
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
]
FIND_LEVELS = {worklist.MWL_FIND: "WORKLIST", worklist.UPS_PULL: "UPS"}  # audited as levels
MAX_CONTEXTS = 128  # presentation contexts one association may propose
ACSE_TIMEOUT = 10.0  # seconds to the A-ASSOCIATE-RQ (and other ACSE messages)
NATIVE = [
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Of what a requestor proposes, take its encapsulated (compressed) syntax first, so that images
# arrive as they were made, then the native ones in this order (Implicit VR loses the VRs).
PREFERRED = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in NATIVE] + NATIVE


ASSOCIATION_EVENTS = ("A-ASSOCIATE-RJ", "A-ABORT")  # audited, counted as associations


class DimseService:
    def __init__(self, archive: Archive, settings: Dimse):
        self.archive = archive
        self.settings = settings
        self.callers = Callers(settings.callers)
        self.partitions = parse_partitions(settings.partitions)
        self.peers = parse_peers(settings.peers)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.commitments = Commitments(self)
        self.workitems = WorkitemHandlers(self)

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.aet)
        ae.maximum_associations = self.settings.max_associations
        ae.network_timeout = ae.dimse_timeout = self.settings.timeout
        # a connection that does not associate soon gives its slot back
        ae.acse_timeout = min(ACSE_TIMEOUT, self.settings.timeout)
        ae.require_calling_aet = self.callers.ae_titles
        ae.add_supported_context(Verification, PREFERRED)
        for context in AllStoragePresentationContexts:  # SCU role too: C-GET's sub-operations
            ae.add_supported_context(
                context.abstract_syntax, PREFERRED, scu_role=True, scp_role=True
            )
        for model in FIND_MODELS + GET_MODELS + MOVE_MODELS:
            ae.add_supported_context(model, PREFERRED)
        ae.add_supported_context(commitment.SOP_CLASS, PREFERRED)
        ae.add_supported_context(ModalityWorklistInformationFind, PREFERRED)
        for ups_class in (UnifiedProcedureStepPush, UnifiedProcedureStepPull):
            ae.add_supported_context(ups_class, PREFERRED)
        return ae

    async def run(self) -> None:
        """Serve until cancelled."""
        self.loop = asyncio.get_running_loop()
        if not log.isEnabledFor(logging.DEBUG):  # one INFO line per association otherwise
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        handlers = [
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_N_ACTION, self._action),
            (evt.EVT_N_CREATE, self.workitems.create),
            (evt.EVT_N_GET, self.workitems.get),
            (evt.EVT_N_SET, self.workitems.set),
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_ABORTED, self._aborted),
        ]
        address = (self.settings.host, self.settings.port)
        server = self.application_entity().start_server(
            address, block=False, evt_handlers=handlers, ssl_context=tls_context(self.settings)
        )
        log.info("DIMSE service %s listening on %s:%d", self.settings.aet, *address)
        try:
            await asyncio.Event().wait()
        finally:
            self.commitments.close()
            await asyncio.to_thread(server.shutdown)

    def tls_args(self, peer: Peer) -> dict:
        """The ``associate()`` options for an association dicomhub opens to ``peer``."""
        return tls_args(self.settings, peer)

    # -- handlers (in pynetdicom's association threads) -----------------------------------

    def _echo(self, event) -> int:
        status = SUCCESS
        self._audit(event, "C-ECHO", None, status, 0, time.perf_counter())
        return status

    def _accepted(self, event) -> None:
        instruments.dimse_association("accepted")

    def _action(self, event):
        """N-ACTION: Storage Commitment, or a UPS state change or cancellation request."""
        if event.context.abstract_syntax == commitment.SOP_CLASS:
            return self.commitments.action(event)
        return self.workitems.action(event)

    def _rejected(self, event) -> None:
        """An association refused (an AE title not allowed, too many associations)."""
        instruments.dimse_association("rejected")
        self._audit(event, "A-ASSOCIATE-RJ", None, 0, 0, time.perf_counter())

    def _aborted(self, event) -> None:
        instruments.dimse_association("aborted")
        self._audit(event, "A-ABORT", None, 0, 0, time.perf_counter())

    def _store(self, event) -> int:
        clock = time.perf_counter()
        caller, address = caller_of(event)
        if not self.callers.allows(caller, address, "store"):
            self._audit(event, "C-STORE", None, NOT_AUTHORIZED, 0, clock)
            return NOT_AUTHORIZED
        data = event.encoded_dataset(include_meta=True)
        if len(data) > self.settings.max_part_size:
            self._audit(event, "C-STORE", None, OUT_OF_RESOURCES, len(data), clock)
            return OUT_OF_RESOURCES
        outcome = self._call(self._store_bytes(data, self.partition_of(caller)))
        status = SUCCESS if outcome.failure is None else STORE_STATUS[outcome.failure]
        if outcome.failure is not None:
            log.info("C-STORE from %s refused (0x%04X): %s", caller, status, outcome.message)
        self._audit(event, "C-STORE", outcome, status, len(data), clock)
        return status

    def _find(self, event):
        """Pending responses, one per match, read from the archive a page at a time."""
        clock = time.perf_counter()
        caller, address = caller_of(event)
        if not self.callers.allows(caller, address, "find"):
            self._audit(event, "C-FIND", None, NOT_AUTHORIZED, 0, clock)
            yield NOT_AUTHORIZED, None
            return
        matches, status, detail, results, level = 0, SUCCESS, {}, None, ""
        try:
            identifier = event.identifier  # decoded here: a malformed one is 0xC000 below
            sop_class = str(event.request.AffectedSOPClassUID)
            level = FIND_LEVELS.get(sop_class) or str(identifier.get("QueryRetrieveLevel", ""))
            results, pending = self._finder(sop_class, identifier, self.partition_of(caller))
            while True:
                if event.is_cancelled:
                    status = CANCELLED
                    yield CANCELLED, None
                    return
                try:
                    found = self._call(_next(results))
                except StopAsyncIteration:
                    return
                matches += 1
                yield pending, found
        except DicomhubError as exc:
            status, detail = status_of(exc), {"message": str(exc)}
            yield status, None
        except Exception:  # noqa: BLE001 - the peer gets a status, the log the cause
            log.exception("C-FIND from %s failed", caller)
            status = UNABLE
            yield UNABLE, None
        finally:
            if results is not None:
                self._call(results.aclose())
            detail.update(matches=matches, level=level)
            self._audit(event, "C-FIND", None, status, 0, clock, detail)

    def _finder(self, sop_class: str, identifier, partition: str):
        """The responses of a C-FIND by its SOP class (instances or workitems of data
        ``partition``), and their pending status (0xFF01 when keys of the identifier do not
        filter)."""
        if sop_class == worklist.MWL_FIND:
            results = modality_worklist(self.archive, identifier, partition)
            unsupported = worklist.query(identifier).unsupported
        elif sop_class == worklist.UPS_PULL:
            results = ups_find(self.archive, identifier, partition)
            unsupported = worklist.ups_query(identifier)[1]
        else:
            results = find(self.archive, identifier, self.settings.max_results, partition)
            return results, PENDING
        return results, PENDING_WARNING if unsupported else PENDING

    def _get(self, event):
        """The number of C-STORE sub-operations, then each instance, sent back on this
        association (pynetdicom counts completed, failed and warning sub-operations)."""
        clock = time.perf_counter()
        detail: dict = {}
        status = SUCCESS
        try:
            refusal, found = self._selection(event, detail)
            if refusal is not None:
                status = refusal
                yield 1
                yield refusal, None
                return
            yield len(found)
            for result in self._send(event, found, event.assoc.accepted_contexts):
                status = result[0] if result[0] == CANCELLED else status
                yield result
        finally:
            self._audit(event, "C-GET", None, status, 0, clock, detail)

    def _move(self, event):
        """The destination (a --dimse-peers entry), the number of C-STORE sub-operations, then
        each instance; pynetdicom opens the association to the destination and sends them.
        pynetdicom can refuse before that association only with 0xA801, so a refusal for
        another reason (0x0124, 0xA900, 0xA702) comes after it is opened."""
        clock = time.perf_counter()
        name = event.move_destination
        name = (name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)).strip()
        detail: dict = {"destination": name}
        status = SUCCESS
        try:
            peer = self.peers.get(name)
            why = "is not a peer" if peer is None else _unreachable(peer)
            if why:
                status, detail["message"] = UNREACHABLE, f"the move destination {why}"
                yield None, None
                return
            refusal, found = self._selection(event, detail)
            accepted: list = []  # the destination association's, once it is accepted
            options = {
                "contexts": _move_contexts(found),
                "evt_handlers": [
                    (evt.EVT_ACCEPTED, lambda e: accepted.extend(e.assoc.accepted_contexts))
                ],
            }
            yield peer.host, peer.port, options | self.tls_args(peer)
            # pynetdicom associates with the destination after the count (unless there is
            # nothing to send): until resumed past it, the destination was not reached
            status = UNREACHABLE if found or refusal is not None else SUCCESS
            if refusal is not None:
                yield 1
                status = refusal
                yield refusal, None
                return
            yield len(found)
            status = SUCCESS
            for result in self._send(event, found, accepted):
                status = result[0] if result[0] == CANCELLED else status
                yield result
        finally:
            self._audit(event, "C-MOVE", None, status, 0, clock, detail)

    def _selection(self, event, detail: dict) -> tuple[int | None, list]:
        """What a C-GET or C-MOVE retrieves, or why it is refused (a status)."""
        caller, address = caller_of(event)
        if not self.callers.allows(caller, address, "retrieve"):
            return NOT_AUTHORIZED, []
        try:
            identifier = event.identifier
            detail["level"] = str(identifier.get("QueryRetrieveLevel", ""))
            limit = self.settings.max_results
            partition = self.partition_of(caller)
            found = self._call(retrieve.instances(self.archive, identifier, limit, partition))
        except DicomhubError as exc:
            detail["message"] = str(exc)
            return status_of(exc), []
        detail["instances"] = len(found)
        return (TOO_MANY if len(found) > retrieve.MAX_SUBOPERATIONS else None), found

    def _send(self, event, found: list, contexts: list):
        """(Pending, data set) for each instance, or Cancel once the peer asks for it. An
        instance whose stored syntax the receiver did not accept (``contexts``: the accepted
        presentation contexts of the association the sub-operations use, read as they are
        sent) is converted to one it did."""
        accepted: dict[str, frozenset[str]] = {}
        for instance in found:
            if not accepted:
                for cx in contexts:
                    syntaxes = accepted.get(cx.abstract_syntax, frozenset())
                    accepted[cx.abstract_syntax] = syntaxes | {str(cx.transfer_syntax[0])}
            if event.is_cancelled:
                yield CANCELLED, None
                return
            syntaxes = accepted.get(instance.sop_class, frozenset())
            try:
                found_dataset = self._call(retrieve.dataset(self.archive, instance, syntaxes))
            except DicomhubError as exc:  # cannot convert: as stored (the sub-operation fails)
                log.info("%s not converted: %s", instance.id.sop, exc)
                found_dataset = self._call(retrieve.dataset(self.archive, instance, frozenset()))
            yield PENDING, found_dataset

    async def _store_bytes(self, data: bytes, partition: str) -> stow.PartOutcome:
        return await self.archive.store.store_part(PartBody.of(data), None, None, None, partition)

    def partition_of(self, ae_title: str) -> str:
        """The data partition a calling AE title addresses (--dimse-partitions)."""
        return self.partitions.get(ae_title, DEFAULT_PARTITION)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _audit(
        self,
        event,
        command: str,
        outcome,
        status: int,
        size: int,
        clock: float,
        detail: dict | None = None,
    ):
        uids = (outcome.retrieve_path or "").split("/")[1::2] if outcome else []
        study, series, sop = (uids + [None, None, None])[:3]
        detail = dict(detail or {})
        if outcome and outcome.message:
            detail["message"] = outcome.message
        instance = sop or (outcome.sop_instance if outcome else None)
        self.record(
            caller_of(event),
            command,
            status,
            clock,
            detail,
            bytes_in=size,
            study=study,
            series=series,
            instance=instance,
        )

    def record(
        self,
        caller: tuple[str, str],
        command: str,
        status: int,
        clock: float,
        detail: dict,
        **fields,
    ) -> None:
        """Audit a DIMSE operation of ``caller`` (AE title, address), and count it, from any
        thread."""
        if command not in ASSOCIATION_EVENTS:
            instruments.dimse_operation(command, status)
        if self.archive.audit is None:
            return
        entry = audit_entry(self.settings.aet, caller, command, status, clock, detail, **fields)
        self.loop.call_soon_threadsafe(self.archive.audit.record, entry)


def _move_contexts(found: list) -> list:
    """What a C-MOVE proposes to its destination: each SOP class in each stored syntax, then
    each SOP class in the native syntaxes (to convert to where a stored one is refused); at
    most MAX_CONTEXTS."""
    pairs = dict.fromkeys((i.sop_class, i.transfer_syntax) for i in found)
    contexts = [build_context(sop, ts) for sop, ts in pairs]
    native = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts += [build_context(sop, native) for sop in dict.fromkeys(sop for sop, _ in pairs)]
    return contexts[:MAX_CONTEXTS] or [build_context(Verification)]


def _unreachable(peer: Peer) -> str | None:
    """Why the peer cannot be reached now, or None (checked before pynetdicom associates, so
    that the refusal is answered, and audited, at once)."""
    try:
        socket.create_connection((peer.host, peer.port), timeout=5).close()
    except OSError as exc:
        return f"cannot be reached at {peer.host}:{peer.port} ({exc.strerror or exc})"
    return None


async def _next(results):
    return await anext(results)


async def run_dimse(archive: Archive, settings: Dimse) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await DimseService(archive, settings).run()
