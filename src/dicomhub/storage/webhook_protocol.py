"""The webhooks' seam of the index (the archive's webhooks see it; ``protocols.IndexStore``
includes it)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from dicomhub.model import DeadLetter, EventSource, Subscription

# where a stable event waits: (partition, study, series), series '' for the study itself
Place = tuple[str, str, str]


class Webhooks(Protocol):
    """Webhook subscriptions (see storage/webhook_ops.py). The change feed is their outbox:
    each keeps the sequence delivered up to, events are read from the feed after it, and a
    store writes nothing for them. A lease on a subscription lets one node at a time deliver
    to it, in order; only the holder records progress."""

    async def create_subscription(self, subscription: Subscription) -> None: ...

    async def subscription(self, id: str) -> Subscription | None: ...

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first."""

    async def update_subscription(self, subscription: Subscription) -> bool:
        """Replace its URL, event types, filter, secret, schema, paused flag and next
        attempt; False when there is no such subscription."""

    async def delete_subscription(self, id: str) -> bool:
        """Remove it and its dead letters; False when there was none."""

    async def claim_subscription(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> Subscription | None:
        """Take the lease of the unpaused subscription whose delivery is due first (no live
        lease on it); concurrent claimers never get the same one."""

    async def subscription_delivered(
        self,
        id: str,
        owner: str,
        sequence: int,
        count: int,
        lease_until: datetime,
        marks: list[tuple[Place, int, datetime]] = (),
    ) -> bool:
        """Move the cursor to ``sequence`` (``count`` more events delivered), clear the
        failures, keep the lease and, in the same transaction, mark the studies and series
        passed for their stable event (``marks``: place, its last change, when it is due);
        False, nothing done, when the lease was lost."""

    async def renew_subscription(self, id: str, owner: str, lease_until: datetime) -> bool:
        """Keep the lease; False when it was lost."""

    async def subscription_failed(
        self, id: str, owner: str, now: datetime, error: str, retry_at: datetime
    ) -> int | None:
        """Record a failed attempt at the next event, to retry at ``retry_at``; the failed
        attempts so far, None when the lease was lost."""

    async def dead_letter(
        self,
        id: str,
        owner: str,
        letter: DeadLetter,
        lease_until: datetime,
        stable: Place | None = None,
        outbox: bool = False,
    ) -> bool:
        """Keep ``letter`` and move the cursor past its sequence (a stable event's, of place
        ``stable``: forget the place instead; an ``outbox`` event's: drop it), in one
        transaction; False (nothing done) when the lease was lost."""

    async def outbox_events(
        self, id: str, limit: int
    ) -> list[tuple[str, str, str | None, datetime, dict]]:
        """(event id, type, partition, time, data) of the subscription's waiting outbox events
        (dicomhub.OperationFinished, written with the operation's final state), oldest first."""

    async def outbox_done(
        self, id: str, owner: str, event_id: str, count: int, lease_until: datetime
    ) -> bool:
        """Drop a delivered (``count`` 1, clearing the failures) or unwanted (0) outbox event;
        False without the lease."""

    async def finished_operations(
        self, since: datetime, limit: int
    ) -> list[tuple[str, str | None, datetime, dict]]:
        """(event id, partition, time, data) of the OperationFinished events of the operations
        that finished at ``since`` or later, oldest first, read from the operations themselves
        (the live event stream's, which has no outbox)."""

    async def due_stable(
        self, id: str, now: datetime, limit: int
    ) -> list[tuple[Place, int, datetime]]:
        """(place, last change passed, due) of the marked studies and series due by ``now``."""

    async def place_state(self, place: Place) -> tuple[int, datetime | None, int | None]:
        """(instances the study or series holds, time and sequence of its last change adding
        one: a sequence larger than any when that change is not numbered yet)."""

    async def postpone_stable(
        self, id: str, place: Place, sequence: int, due: datetime
    ) -> None: ...

    async def stable_done(
        self,
        id: str,
        owner: str,
        place: Place,
        sequence: int,
        count: int,
        lease_until: datetime,
    ) -> bool:
        """Forget a marked place (its stable event delivered: ``count`` 1, clearing the
        failures; or not to be: 0); False without the lease."""

    async def release_subscription(self, id: str, owner: str, not_before: datetime) -> None:
        """Let go of the lease; the subscription is due again at ``not_before`` at the
        earliest (later if a retry is scheduled later)."""

    async def deadletters(self, id: str, offset: int, limit: int) -> list[DeadLetter]:
        """Its dead letters, in sequence order."""

    async def count_deadletters(self, id: str) -> int: ...

    async def replay_deadletter(self, id: str, event_id: str, now: datetime) -> bool:
        """Ask for a dead letter to be delivered again (by the subscription's next delivery);
        False when there is no such dead letter."""

    async def pending_replays(self, id: str, limit: int) -> list[DeadLetter]: ...

    async def replayed(self, id: str, event_id: str) -> None:
        """A replayed dead letter was delivered: it leaves the list."""

    async def replay_failed(self, id: str, event_id: str, error: str, now: datetime) -> None:
        """A replay was refused: the dead letter stays, with the new error."""

    async def events_after(self, sequence: int, limit: int) -> list[EventSource]:
        """Change-feed entries after ``sequence``, in order, at most ``limit``, with the
        modality and SOP class of the instance when it is still stored."""
