"""One delivery step of one webhook subscription, under its lease (see archive/webhooks.py).

In order: the dead letters an administrator asked to replay; the StudyStable and SeriesStable
events of the studies and series whose quiet period has passed; the OperationFinished events
waiting in the outbox; then the change feed after the cursor, one batch, each event the
subscription wants POSTed in turn. Progress through the feed is recorded once per batch (the
cursor, the events delivered, the studies and series passed for their stable events: one index
write), not per event: after the batch, before stopping at a refused event, and whenever a
third of the lease has passed since the last record (a record renews the lease). A step that
dies before recording leaves the cursor where it was, so the events it sent since are sent
again, with the same ids, in the same order (at least once). Every record of progress is
conditional on the lease, so a node that lost it (it stalled past the lease, another took over)
stops at once instead of delivering out of order beside the new holder.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dicomhub.clock import monotonic, utcnow
from dicomhub.model import Action, DeadLetter, EventSource, Subscription
from dicomhub.storage.protocols import Place
from dicomhub.webhooks import events, study_filter
from dicomhub.webhooks.client import DeliveryFailed

if TYPE_CHECKING:
    from dicomhub.archive.webhooks import WebhookService

log = logging.getLogger(__name__)


class Delivery:
    def __init__(self, service: WebhookService, subscription: Subscription, owner: str):
        self.service = service
        self.index = service.index
        self.settings = service.settings
        self.root = service.settings.service_root
        self.subscription = subscription
        self.id = subscription.id
        self.owner = owner
        self.cursor = subscription.sequence  # recorded in the index
        self.passed = subscription.sequence  # delivered or filtered out up to here
        self.pending = 0  # events delivered since the last record
        self.marks: dict[Place, tuple[int, datetime]] = {}  # not yet recorded
        self.studies: dict[tuple[str, str, bool], bool] = {}  # passing the study filter, this step
        self.failing_since = subscription.failing_since
        self.attempts = subscription.attempts  # failed attempts at the next event
        self.quiet = timedelta(seconds=self.settings.study_stable_after)
        self.renewed = monotonic()  # when the lease was last renewed (or taken)
        self.checked = False  # the target, once a step

    def lease_until(self) -> datetime:
        """The lease's end, for a write that renews it."""
        self.renewed = monotonic()
        return utcnow() + self.service.lease

    async def run(self) -> bool:
        """True when the batch was full and delivered (more may follow at once)."""
        if not await self._replays() or not await self._stable() or not await self._outbox():
            return False
        batch = self.settings.batch_size
        changes = await self.index.events_after(self.cursor, batch)
        types, filter = self.subscription.event_types, self.subscription.filter
        renew = self.service.lease.total_seconds() / 3
        for change in changes:
            places = events.marks_stable(change, types, filter)
            wanted = events.matches(change, types, filter)
            if (places or wanted) and not await self._study_passes(change):
                places, wanted = [], False
            for place in places:
                self.marks[place] = (change.sequence, change.timestamp + self.quiet)
            if wanted and not await self._deliver(change):
                return False
            self.passed = change.sequence
            if monotonic() - self.renewed >= renew and not await self._record(self.passed):
                return False
        if (self.passed > self.cursor or self.marks) and not await self._record(self.passed):
            return False
        return len(changes) == batch

    # -- the change feed -----------------------------------------------------------------------

    async def _study_passes(self, change: EventSource) -> bool:
        """Whether the change's study passes the subscription's study filter (QIDO matching,
        by the index, on the study as it is now: once per study and step). The deletion of a
        study's last instances passes: its attributes are gone (see events.matches)."""
        wanted = self.subscription.filter.get(study_filter.FIELD)
        if not wanted:
            return True
        partition, study = change.id.partition, change.id.study
        key = (partition, study, change.action is Action.DELETE)
        if key not in self.studies:
            found = await self.index.count(study_filter.query(wanted, partition, study)) > 0
            if not found and change.action is Action.DELETE:
                found = (await self.index.place_state((partition, study, "")))[0] == 0
            self.studies[key] = found
        return self.studies[key]

    async def _deliver(self, change: EventSource) -> bool:
        """Deliver one event (its record waits for the batch's), dead-letter it, or schedule
        its retry (False: stop here, the progress before it recorded)."""
        event = events.event_of(change, self.root)
        body = events.body(event, self.subscription.schema, self.root)
        try:
            await self._send(event.id, body)
        except DeliveryFailed as exc:
            if self.pending and not await self._record(self.passed):
                return False  # the events the receiver took are recorded first
            return await self._failed(event, change.sequence, body, str(exc), None)
        self.pending += 1
        self.failing_since, self.attempts = None, 0
        return True

    async def _record(self, sequence: int, upto: int = 0) -> bool:
        """Move the cursor to ``sequence`` with the events delivered since the last record
        (and the studies and series marked for their stable events on the way, up to
        ``upto`` when that is further), renewing the lease."""
        upto = max(sequence, upto)
        marks = [(place, seq, due) for place, (seq, due) in self.marks.items() if seq <= upto]
        held = await self.index.subscription_delivered(
            self.id, self.owner, sequence, self.pending, self.lease_until(), marks
        )
        if not held:
            return self._lost()
        for place, *_ in marks:
            del self.marks[place]
        self.cursor = self.passed = sequence
        self.pending = 0
        self.failing_since, self.attempts = None, 0
        return True

    # -- StudyStable and SeriesStable: one wait, keyed by place -----------------------------

    async def _stable(self) -> bool:
        if not any(t in self.subscription.event_types for t in events.STABLE_TYPES):
            return True
        now = utcnow()
        due = await self.index.due_stable(self.id, now, self.settings.batch_size)
        for place, sequence, _ in due:
            count, latest, last = await self.index.place_state(place)
            if count == 0:  # the study (series) is gone: nothing is stable
                held = await self.index.stable_done(
                    self.id, self.owner, place, sequence, 0, self.lease_until()
                )
                if not held:
                    return self._lost()
                continue
            later = events.stable_later(latest, last, self.cursor, now, self.quiet)
            if later is not None:
                await self.index.postpone_stable(self.id, place, sequence, later)
                continue
            event = events.stable_event(place, sequence, now, self.root)
            body = events.body(event, self.subscription.schema, self.root)
            try:
                await self._send(event.id, body)
            except DeliveryFailed as exc:
                return await self._failed(event, sequence, body, str(exc), place)
            held = await self.index.stable_done(
                self.id, self.owner, place, sequence, 1, self.lease_until()
            )
            if not held:
                return self._lost()
            self.failing_since, self.attempts = None, 0
        return True

    # -- OperationFinished: the outbox -----------------------------------------------------------

    async def _outbox(self) -> bool:
        if events.OPERATION_FINISHED not in self.subscription.event_types:
            return True
        waiting = await self.index.outbox_events(self.id, self.settings.batch_size)
        for event_id, _, partition, time, data in waiting:
            if not events.operation_passes(partition, self.subscription.filter):
                held = await self.index.outbox_done(
                    self.id, self.owner, event_id, 0, self.lease_until()
                )
                if not held:
                    return self._lost()
                continue
            event = events.operation_event(event_id, time, data, self.root)
            body = events.body(event, self.subscription.schema, self.root)
            try:
                await self._send(event.id, body)
            except DeliveryFailed as exc:
                return await self._failed(event, 0, body, str(exc), None, outbox=True)
            held = await self.index.outbox_done(
                self.id, self.owner, event_id, 1, self.lease_until()
            )
            if not held:
                return self._lost()
            self.failing_since, self.attempts = None, 0
        return True

    # -- failures and replays ------------------------------------------------------------------

    async def _failed(
        self,
        event: events.Event,
        sequence: int,
        body: bytes,
        error: str,
        stable: Place | None,
        outbox: bool = False,
    ) -> bool:
        """A failed attempt: retry later (False), or past the retry window, dead-letter the
        event and go on (True; the following events get one attempt each until one is taken)."""
        now = utcnow()
        since = self.failing_since or now
        window = timedelta(seconds=self.settings.retry_window)
        attempts = self.attempts + 1
        in_feed = stable is None and not outbox  # a change-feed event: the cursor moves
        if now - since >= window:
            if in_feed and not await self._record(self.passed, upto=sequence):
                return False  # the studies marked so far first: the cursor moves past them
            letter = DeadLetter(
                self.id, event.id, sequence, event.type, body.decode(), error, attempts, now, False
            )
            log.warning(
                "webhook %s: event %s dead-lettered after %d attempts: %s",
                self.id,
                event.id,
                attempts,
                error,
            )
            if not await self.index.dead_letter(
                self.id, self.owner, letter, self.lease_until(), stable, outbox
            ):
                return self._lost()
            self.service.observe("dead_lettered", None)
            if in_feed:
                self.cursor = self.passed = sequence
            self.failing_since, self.attempts = since, 0
            return True
        backoff = now + timedelta(seconds=self.service.backoff(attempts))
        retry_at = max(now, min(backoff, since + window))
        await self.index.subscription_failed(self.id, self.owner, now, error, retry_at)
        log.info(
            "webhook %s: event %s not delivered (%s); retry at %s",
            self.id,
            event.id,
            error,
            retry_at.isoformat(),
        )
        return False

    async def _replays(self) -> bool:
        for letter in await self.index.pending_replays(self.id, self.settings.batch_size):
            try:
                await self._send(letter.event_id, letter.body.encode())
            except DeliveryFailed as exc:
                log.info("webhook %s: replay of %s failed: %s", self.id, letter.event_id, exc)
                await self.index.replay_failed(self.id, letter.event_id, str(exc), utcnow())
                self.service.observe("replay_failed", None)
            else:
                await self.index.replayed(self.id, letter.event_id)
                self.service.observe("replayed", None)
            if not await self.index.renew_subscription(self.id, self.owner, self.lease_until()):
                return self._lost()
        return True

    async def _send(self, id: str, body: bytes) -> None:
        """POST one event (raises DeliveryFailed). The target is checked again once a step,
        not for each event: a host may resolve to another address than when the subscription
        was made, but within a step the events go on the connection already open."""
        if not self.checked:
            await self.service.check(self.subscription)
            self.checked = True
        await self.service.send(self.subscription, id, body)

    def _lost(self) -> bool:
        log.warning("webhook %s: the lease was lost to another node", self.id)
        return False
