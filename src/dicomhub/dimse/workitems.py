"""The UPS DIMSE services as SCP (PS3.4 Annex CC): N-CREATE, N-GET, N-SET and N-ACTION (Change
UPS State, Request UPS Cancel) on the UPS Push and UPS Pull SOP classes, over the same
workitems (the caller's data partition's, ``--dimse-partitions``) and the same rules as
UPS-RS (``archive.workitems``: one state machine, one conditional write per change). The
Annex CC status codes the archive refuses with (``C301``, ``0120``, ...) are the DIMSE ones;
C-FIND on UPS Pull is ``worklist.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomhub.dicom import workitems as ups
from dicomhub.dimse.callers import caller_of
from dicomhub.dimse.status import (
    NO_SUCH_ACTION,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
    workitem_status,
)
from dicomhub.errors import DicomhubError, WorkitemInvalid

log = logging.getLogger(__name__)

UPS_PUSH, UPS_PULL = "1.2.840.10008.5.1.4.34.6.1", "1.2.840.10008.5.1.4.34.6.3"
SOP_CLASSES = (UPS_PUSH, UPS_PULL)
CHANGE_STATE, REQUEST_CANCEL = 1, 2  # Action Type IDs (PS3.4 CC.2.1, CC.2.2)
TRANSACTION = Tag(0x0008, 0x1195)


class WorkitemHandlers:
    def __init__(self, service):
        self.service = service  # the DimseService: archive, callers, loop, audit

    # -- the handlers (in pynetdicom's association threads) ----------------------------------

    def create(self, event) -> tuple[int, Dataset | None]:
        """EVT_N_CREATE: a SCHEDULED workitem (PS3.4 CC.2.5), its UID the request's Affected
        SOP Instance UID or one made here."""
        asked = event.request.AffectedSOPInstanceUID
        detail: dict[str, Any] = {"workitem": str(asked) if asked else None}

        def run():
            body = _json(event.attribute_list)
            given = str(asked) if asked else None
            uid = self._call(self._workitems(event).create(given, body))
            detail.update(workitem=uid, state=ups.SCHEDULED)
            if asked:
                return SUCCESS, None
            reply = Dataset()
            reply.AffectedSOPInstanceUID = uid
            return SUCCESS, reply

        return self._handle(event, "N-CREATE", "store", detail, run, create=True)

    def get(self, event) -> tuple[int, Dataset | None]:
        """EVT_N_GET: the attributes asked for (every one when none is named), never the
        Transaction UID (PS3.4 CC.2.7)."""
        uid = str(event.request.RequestedSOPInstanceUID or "")
        detail: dict[str, Any] = {"workitem": uid}

        def run():
            found = self._call(self._workitems(event).retrieve(uid))
            dataset = Dataset.from_json(found)
            detail["state"] = str(dataset.get("ProcedureStepState", ""))
            wanted = event.request.AttributeIdentifierList or []
            wanted = [Tag(wanted)] if isinstance(wanted, int) else [Tag(t) for t in wanted]
            if not wanted:
                dataset.SpecificCharacterSet = "ISO_IR 192"  # the JSON's text is Unicode
                return SUCCESS, dataset
            reply = Dataset()
            reply.SpecificCharacterSet = "ISO_IR 192"
            for tag in wanted:
                if tag == TRANSACTION:
                    continue
                if tag in dataset:
                    reply.add(dataset[tag])
                else:
                    reply.add_new(tag, _vr(tag), None)
            return SUCCESS, reply

        return self._handle(event, "N-GET", "find", detail, run)

    def set(self, event) -> tuple[int, Dataset | None]:
        """EVT_N_SET: the Modification List replaces those attributes (UPS-RS update); the
        Transaction UID in it is the lock of a workitem IN PROGRESS (PS3.4 CC.2.6)."""
        uid = str(event.request.RequestedSOPInstanceUID or "")
        detail: dict[str, Any] = {"workitem": uid}

        def run():
            changes = event.modification_list
            transaction = None
            if TRANSACTION in changes:
                transaction = str(changes[TRANSACTION].value or "").strip() or None
                del changes[TRANSACTION]
            workitems = self._workitems(event)
            outcome = self._call(workitems.update(uid, transaction, _json(changes)))
            detail["state"] = outcome.state
            return SUCCESS, None

        return self._handle(event, "N-SET", "store", detail, run)

    def action(self, event) -> tuple[int, Dataset | None]:
        """N-ACTION Change UPS State (1) or Request UPS Cancel (2)."""
        uid = str(event.request.RequestedSOPInstanceUID or "")
        kind = event.request.ActionTypeID
        detail: dict[str, Any] = {"workitem": uid, "actionTypeId": kind}

        def run():
            workitems = self._workitems(event)
            if kind not in (CHANGE_STATE, REQUEST_CANCEL):
                detail["message"] = "Action Type ID must be 1 (change state) or 2 (cancel)"
                return NO_SUCH_ACTION, None
            information = event.action_information
            body = _json(information) if information is not None else None
            if kind == CHANGE_STATE:
                outcome = self._call(workitems.change_state(uid, body))
            else:
                outcome = self._call(workitems.request_cancel(uid, body))
            detail["state"] = outcome.state
            if outcome.warning:
                detail["message"] = outcome.warning[1]
                return int(outcome.warning[0], 16), None
            if kind != CHANGE_STATE:
                return SUCCESS, None
            reply = Dataset()
            reply.ProcedureStepState = outcome.state
            return SUCCESS, reply

        return self._handle(event, "N-ACTION", "store", detail, run)

    # -- shared -----------------------------------------------------------------------------

    def _handle(self, event, command, permission, detail, run, create=False):
        """Run ``run`` for a caller with ``permission``; every refusal a status, every
        operation audited."""
        clock = time.perf_counter()
        caller, address = caller_of(event)
        answer: tuple[int, Dataset | None] = (SUCCESS, None)
        try:
            if not self.service.callers.allows(caller, address, permission):
                answer = (NOT_AUTHORIZED, None)
            else:
                answer = run()
        except DicomhubError as exc:
            detail["message"] = str(exc)
            answer = (workitem_status(exc, create), None)
        except Exception as exc:  # noqa: BLE001 - a data set pydicom cannot decode, ...
            log.info("%s from %s refused: %s", command, caller, exc)
            detail["message"] = f"the data set cannot be read: {exc}"[:500]
            answer = (PROCESSING_FAILURE, None)
        detail = {k: v for k, v in detail.items() if v is not None}
        self.service.record((caller, address), command, answer[0], clock, detail)
        return answer

    def _workitems(self, event):
        """The workitems of the caller's data partition (--dimse-partitions)."""
        caller, _ = caller_of(event)
        return self.service.archive.workitems.of(self.service.partition_of(caller))

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.service.loop).result()


def _json(dataset: Dataset | None) -> dict[str, Any]:
    """A data set as DICOM JSON (the UPS-RS request body), checked as UPS-RS checks it."""
    if dataset is None:
        return {}
    try:
        return dataset.to_json_dict()
    except (ValueError, TypeError, KeyError) as exc:
        raise WorkitemInvalid(ups.INVALID_VALUE, f"the data set cannot be read: {exc}") from exc


def _vr(tag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
