"""Webhook subscriptions (issue 23): managed by administrators, delivered by leased workers.

The change feed is the outbox. A change-feed entry is written in the transaction of its change,
so there is no event without its change and no change without its event, and a store writes
nothing more. Each subscription keeps the sequence it has delivered up to; a delivery step
(``step``, run by any node's workers) takes the lease of a subscription that is due, reads the
feed after its cursor and POSTs the events it wants, one at a time, in order, recording the
cursor once per batch (docs/events.md). A receiver that fails gets the same event again after
a backoff (exponential, with jitter) until the retry window has passed since its first failure;
the event is then kept as a dead letter (replayable) and delivery moves on, each following
event getting one attempt until one is taken again. Delivery is at least once: the event id
(the change-feed sequence) is the idempotency key a receiver sees again if a step dies between
sending and recording. The delivery step itself is ``webhook_delivery.Delivery``; the live
event stream, which has no subscription, is ``webhook_stream.LiveStream``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from dicomhub.archive.webhook_delivery import Delivery
from dicomhub.archive.webhook_stream import LiveStream
from dicomhub.clock import monotonic, utcnow
from dicomhub.errors import Forbidden, InvalidRequest, NotFound
from dicomhub.model import DeadLetter, Subscription
from dicomhub.settings_groups import Webhooks as WebhookSettings
from dicomhub.storage.protocols import ChangeFeed, InstanceSearch, Webhooks
from dicomhub.webhooks import events, signing, study_filter
from dicomhub.webhooks.client import DeliveryFailed, WebhookClient
from dicomhub.webhooks.targets import TargetRefused, check_target

log = logging.getLogger(__name__)

FIELDS = {"url", "eventTypes", "filter", "secret", "schema", "state"}
STATES = ("active", "paused")  # what an administrator sets ("failing" is the delivery's)


class WebhookIndex(Webhooks, ChangeFeed, InstanceSearch, Protocol):
    """What the webhooks use of the index: their subscriptions, the change feed, and QIDO
    matching (a study filter)."""


class WebhookService:
    def __init__(self, index: WebhookIndex, settings: WebhookSettings):
        self.index = index
        self.settings = settings
        self.lease = timedelta(seconds=settings.lease)
        self._client: WebhookClient | None = None
        # told of each attempt (outcome, seconds) and dead letter (seconds None): the
        # composition root connects the metrics (telemetry/instruments.webhook)
        self.observe: Callable[[str, float | None], None] = lambda outcome, seconds: None

    # -- administration ------------------------------------------------------------------------

    async def create(self, body: Any, within: frozenset[str] | None = None) -> Subscription:
        """A new subscription from a request body; it gets the changes made from now on. Its
        secret is the body's, else a new one (the caller sees it once, in the answer).
        ``within``: the partitions of a partition-scoped administrator (None: everywhere)."""
        fields = _fields(body)
        if "url" not in fields:
            raise InvalidRequest("a subscription needs a url")
        now = utcnow()
        latest = await self.index.latest_change(include_metadata=False)
        subscription = Subscription(
            id=str(uuid.uuid4()),
            url="",
            event_types=events.IMAGE_TYPES,
            filter={},
            secret=signing.new_secret(),
            schema="cloudevents",
            paused=False,
            created=now,
            updated=now,
            sequence=latest.sequence if latest else 0,
            delivered=0,
            attempts=0,
            failing_since=None,
            next_attempt=now,
            last_error=None,
            holder=None,
        )
        subscription = await self._apply(subscription, fields)
        _check_within(subscription, within)
        await self.index.create_subscription(subscription)
        return subscription

    async def get(self, id: str, within: frozenset[str] | None = None) -> Subscription:
        found = await self.index.subscription(id)
        if found is None:
            raise NotFound(f"no webhook subscription {id}")
        _check_within(found, within)
        return found

    async def listing(self, within: frozenset[str] | None = None) -> list[Subscription]:
        return [s for s in await self.index.subscriptions() if _inside(s, within)]

    async def update(
        self, id: str, body: Any, within: frozenset[str] | None = None
    ) -> Subscription:
        """Change what the body names (a partial update); ``state`` pauses or resumes."""
        fields = _fields(body)
        changed = await self._apply(await self.get(id, within), fields)
        _check_within(changed, within)
        now = utcnow()
        changed = dataclasses.replace(changed, updated=now, next_attempt=now)
        if not await self.index.update_subscription(changed):
            raise NotFound(f"no webhook subscription {id}")
        return await self.get(id)

    async def delete(self, id: str, within: frozenset[str] | None = None) -> None:
        await self.get(id, within)
        if not await self.index.delete_subscription(id):
            raise NotFound(f"no webhook subscription {id}")

    async def deadletters(
        self, id: str, offset: int, limit: int, within: frozenset[str] | None = None
    ) -> list[DeadLetter]:
        await self.get(id, within)
        return await self.index.deadletters(id, offset, limit)

    async def count_deadletters(self, id: str) -> int:
        return await self.index.count_deadletters(id)

    async def replay(self, id: str, event_id: str, within: frozenset[str] | None = None) -> None:
        """Have a dead letter delivered again by the subscription's next delivery step (once:
        refused again, it stays in the list with the new error)."""
        await self.get(id, within)
        if not await self.index.replay_deadletter(id, event_id, utcnow()):
            raise NotFound(f"subscription {id} has no dead letter {event_id}")

    async def status(self) -> list[tuple[str, str, int, int, int]]:
        """(id, state, lag, delivered, dead letters) of each subscription (for the metrics)."""
        latest = await self.latest_sequence()
        return [
            (
                s.id,
                s.state,
                max(0, latest - s.sequence),
                s.delivered,
                await self.index.count_deadletters(s.id),
            )
            for s in await self.index.subscriptions()
        ]

    # -- the live stream -------------------------------------------------------------------------

    async def latest_sequence(self) -> int:
        latest = await self.index.latest_change(include_metadata=False)
        return latest.sequence if latest else 0

    async def stream(
        self,
        after: int | None,
        event_types: tuple[str, ...],
        filter: dict[str, tuple[str, ...]],
    ) -> LiveStream:
        """A live stream of the events after change ``after`` (None: from now on) that pass
        (archive/webhook_stream.py)."""
        live = LiveStream(self, event_types, filter)
        await live.start(after)
        return live

    def stream_query(
        self,
        event_types: str | None,
        filters: dict[str, str],
        within: frozenset[str] | None = None,
    ) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """The event types (comma-separated; default the image events) and filters (each
        value comma-separated) of a stream request; InvalidRequest when bad. A reader of
        partitions ``within`` only (None: everywhere) gets their events only: Forbidden when
        it asks for another's."""
        types = (
            _event_types([t.strip() for t in event_types.split(",")])
            if event_types is not None
            else events.IMAGE_TYPES
        )
        filter = _filter({k: v.split(",") for k, v in filters.items()})
        if within is not None:
            asked = filter.get("partition")
            outside = sorted(set(asked) - within) if asked else []
            if outside:
                raise Forbidden(
                    f"the caller's roles do not grant reading partition {', '.join(outside)}"
                )
            filter["partition"] = asked or tuple(sorted(within))
        return types, filter

    async def _apply(self, subscription: Subscription, fields: dict[str, Any]) -> Subscription:
        """``subscription`` with the fields of a request body, each checked (InvalidRequest)."""
        changes: dict[str, Any] = {}
        if "url" in fields:
            url = fields["url"]
            if not isinstance(url, str):
                raise InvalidRequest("url is a string")
            try:
                await check_target(url, self.settings.allow_private)
            except TargetRefused as exc:
                raise InvalidRequest(f"url: {exc}") from None
            changes["url"] = url
        if "eventTypes" in fields:
            changes["event_types"] = _event_types(fields["eventTypes"])
        if "filter" in fields:
            changes["filter"] = _filter(fields["filter"])
        if "secret" in fields:
            secret = fields["secret"]
            try:
                signing.key_of(secret if isinstance(secret, str) else "")
            except ValueError as exc:
                raise InvalidRequest(f"secret: {exc}") from None
            changes["secret"] = secret
        if "schema" in fields:
            if fields["schema"] not in events.SCHEMAS:
                raise InvalidRequest(f"schema is one of {', '.join(events.SCHEMAS)}")
            changes["schema"] = fields["schema"]
        if "state" in fields:
            if fields["state"] not in STATES:
                raise InvalidRequest(f"state is one of {', '.join(STATES)}")
            changes["paused"] = fields["state"] == "paused"
        return dataclasses.replace(subscription, **changes)

    # -- delivery ------------------------------------------------------------------------------

    async def step(self, owner: str) -> bool:
        """Deliver what one due subscription has pending (its replays, its stable studies,
        then the feed after its cursor, one batch); False when none was due."""
        now = utcnow()
        subscription = await self.index.claim_subscription(owner, now, now + self.lease)
        if subscription is None:
            return False
        more = False
        try:
            more = await Delivery(self, subscription, owner).run()
        finally:
            wait = 0 if more else self.settings.poll_interval
            await self.index.release_subscription(
                subscription.id, owner, utcnow() + timedelta(seconds=wait)
            )
        return True

    async def check(self, subscription: Subscription) -> None:
        """Raise DeliveryFailed when the subscription's target is refused now (see
        ``check_target``)."""
        try:
            await check_target(subscription.url, self.settings.allow_private)
        except TargetRefused as exc:
            raise DeliveryFailed(str(exc)) from None

    async def send(self, subscription: Subscription, id: str, body: bytes) -> None:
        """POST one event (to a target checked by the caller); raises DeliveryFailed."""
        if self._client is None:
            self._client = WebhookClient(self.settings.timeout)
        schema = "eventgrid" if body[:1] == b"[" else "cloudevents"  # as it was built
        started = monotonic()
        try:
            await self._client.send(subscription.url, subscription.secret, id, schema, body)
        except DeliveryFailed:
            self.observe("failed", monotonic() - started)
            raise
        self.observe("delivered", monotonic() - started)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from 1 s up to the maximum, the
        upper half of it at random (so that receivers coming back are not hit all at once)."""
        delay = min(self.settings.max_backoff, 2.0 ** min(attempts - 1, 30))
        return delay / 2 + random.uniform(0, delay / 2)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _inside(subscription: Subscription, within: frozenset[str] | None) -> bool:
    """Whether a subscription lies within partitions ``within`` (None: everywhere): its
    filter names partitions, all of them among those."""
    if within is None:
        return True
    named = subscription.filter.get("partition", ())
    return bool(named) and set(named) <= within


def _check_within(subscription: Subscription, within: frozenset[str] | None) -> None:
    if not _inside(subscription, within):
        raise Forbidden(
            "the caller administers the subscriptions of partitions "
            f"{', '.join(sorted(within or ()))} only: those whose filter.partition names "
            "only these"
        )


def _fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("a subscription is a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown subscription fields: {', '.join(unknown)}")
    return body


def _event_types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("eventTypes is a non-empty list of event types")
    unknown = sorted(set(value) - set(events.EVENT_TYPES))
    if unknown:
        raise InvalidRequest(
            f"unknown event types {', '.join(unknown)} (known: {', '.join(events.EVENT_TYPES)})"
        )
    return tuple(dict.fromkeys(value))


def _filter(value: Any) -> dict[str, Any]:
    known = ", ".join((*events.FILTERS, study_filter.FIELD))
    if not isinstance(value, dict):
        raise InvalidRequest(f"filter is an object of {known}")
    out: dict[str, Any] = {}
    for field, wanted in value.items():
        if field == study_filter.FIELD:
            out[field] = study_filter.check(wanted)
            continue
        if field not in events.FILTERS:
            raise InvalidRequest(f"unknown filter {field!r} (known: {known})")
        values = [wanted] if isinstance(wanted, str) else wanted
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v.strip() for v in values)
        ):
            raise InvalidRequest(f"filter {field} is a value or a non-empty list of values")
        out[field] = tuple(v.strip() for v in values)
    return out
