"""UPS-RS Push and Pull (PS3.18 chapter 11, PS3.4 Annex CC): create, retrieve, update, change
state, request cancellation and search workitems in the index.

Every change is decided on the workitem as read (``dicom.workitems``) and written only if the
workitem is still at that revision and state: when another change came first, it is decided
again on the new one. So of two performers claiming one workitem, one wins and the other is
told the workitem is already IN PROGRESS, whatever the engine and however many nodes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomhub.clock import utcnow
from dicomhub.dicom import workitem_events as events
from dicomhub.dicom import workitem_query as wq
from dicomhub.dicom import workitems as ups
from dicomhub.dicom.json_model import compact
from dicomhub.errors import Unavailable, WorkitemNotFound
from dicomhub.model import DEFAULT_PARTITION, StoredWorkitem
from dicomhub.storage.protocols import Workitems

ATTEMPTS = 20  # decisions made again when other changes keep coming first


@dataclass(frozen=True)
class Outcome:
    """A change's result: the state the workitem is in, and the warning of a success that
    changed nothing (B304, B306) as (code, text)."""

    state: str
    warning: tuple[str, str] | None = None


class WorkitemService:
    def __init__(self, index: Workitems, partition: str = DEFAULT_PARTITION):
        self.index = index
        self.partition = partition  # the data partition the workitems are in

    def of(self, partition: str) -> WorkitemService:
        """The workitems of data ``partition``."""
        return self if partition == self.partition else WorkitemService(self.index, partition)

    async def create(self, uid: str | None, body: Any) -> str:
        """Add a SCHEDULED workitem; its UID (from the query, the dataset, or made here)."""
        generated = f"2.25.{uuid.uuid4().int}"
        uid, dataset = ups.new_workitem(body, uid, generated, utcnow())
        values = wq.index_values(dataset)
        reports = [compact(events.state_report(dataset))]  # to the global subscribers
        await self.index.add_workitem(
            uid, ups.SCHEDULED, compact(dataset), values, utcnow(), reports, self.partition
        )
        return uid

    async def retrieve(self, uid: str) -> dict[str, Any]:
        """The workitem's dataset, without its Transaction UID."""
        return ups.public(json.loads((await self._get(uid)).dataset))

    async def update(self, uid: str, transaction: str | None, body: Any) -> Outcome:
        """Replace the attributes ``body`` holds (N-SET): without a Transaction UID while
        SCHEDULED, with the one that claimed it while IN PROGRESS."""

        def decide(item: StoredWorkitem, stored: dict) -> tuple[dict, str, str | None]:
            ups.check_update(item.state, item.lock, transaction)
            return ups.updated(stored, body, utcnow()), item.state, item.lock

        return await self._change(uid, decide)

    async def change_state(self, uid: str, body: Any) -> Outcome:
        """Claim (IN PROGRESS), complete or cancel the workitem (N-ACTION Change UPS State)."""
        target, transaction = ups.state_request(body)
        return await self._transition(
            uid,
            lambda item: ups.change_state(item.state, item.lock, target, transaction),
            final=True,
        )

    async def request_cancel(self, uid: str, body: Any) -> Outcome:
        """Ask for the workitem's cancellation (N-ACTION Request UPS Cancel)."""
        request = ups.dataset(body, required=False)  # a malformed one is refused before anything
        subscribers = await self.index.workitem_subscribers(uid, self.partition)
        return await self._transition(
            uid, lambda item: ups.request_cancel(item.state, subscribers), body, request
        )

    async def search(self, params: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
        """One page of matches, and the query parameters that were ignored."""
        query = wq.parse(params)
        query.partition = self.partition
        found = await self.index.search_workitems(query)
        return [wq.result(json.loads(text), query) for text in found], query.ignored

    # -- the decision loop ---------------------------------------------------------------------

    async def _get(self, uid: str) -> StoredWorkitem:
        item = await self.index.workitem(uid, self.partition)
        if item is None:
            raise WorkitemNotFound("C307", f"no workitem {uid}")
        return item

    async def _transition(
        self,
        uid: str,
        rule: Callable[[StoredWorkitem], ups.Transition],
        cancel_body: Any = None,
        cancel_request: dict | None = None,
        final: bool = False,
    ) -> Outcome:
        """Apply ``rule``'s transition; with ``final``, a workitem reaching COMPLETED or
        CANCELED must meet the final state requirements (C304)."""
        warnings: list[tuple[str, str] | None] = []

        def decide(item: StoredWorkitem, stored: dict) -> tuple | None:
            transition = rule(item)
            if transition.cancel_requested:  # the workitem unchanged; its subscribers told
                report = events.cancel_requested(uid, cancel_request or {})
                return stored, item.state, item.lock, [report]
            if transition.state is None:
                warnings.append(transition.warning)
                return None
            if transition.state == ups.CANCELED and item.state == ups.SCHEDULED:
                dataset = ups.cancelled(stored, cancel_body, utcnow())
            else:
                dataset = ups.with_state(stored, transition, utcnow())
            if final:
                ups.check_final_state(dataset, transition.state)
            return dataset, transition.state, transition.lock or item.lock

        outcome = await self._change(uid, decide)
        return Outcome(outcome.state, warnings[-1] if warnings else None)

    async def _change(
        self, uid: str, decide: Callable[[StoredWorkitem, dict], tuple | None]
    ) -> Outcome:
        """Read, decide, write if still current; again when another change came first."""
        for _ in range(ATTEMPTS):
            item = await self._get(uid)
            decision = decide(item, json.loads(item.dataset))
            if decision is None:  # a success that changes nothing
                return Outcome(item.state)
            dataset, state, lock, *told = decision
            reports = told[0] if told else events.change_reports(json.loads(item.dataset), dataset)
            written = await self.index.replace_workitem(
                uid,
                item.revision,
                item.state,
                state,
                lock,
                compact(dataset),
                wq.index_values(dataset),
                utcnow(),
                [compact(r) for r in reports],
                self.partition,
            )
            if written:
                return Outcome(state)
        raise Unavailable("index", f"workitem {uid} kept changing; try again")
