"""One open live event stream (web/event_stream.py): what it has read and what it waits for.

The image events come from the change feed after the stream's cursor, each with its sequence
as the SSE id, so a client resumes from the last one it got. The other events are not in the
feed, and the stream keeps nothing in the index for them (it has no subscription): it works
them out as webhook delivery does (archive/webhook_delivery.py), in memory, for its life.

- StudyStable, SeriesStable: each change read that starts a place's wait (``events.
  marks_stable``) records the place with the change's sequence; once the quiet period has
  passed, the place is checked as delivery checks it (gone: nothing; a newer change, or one
  the stream has not read yet: wait on) and its event sent. A stream starting at change N
  (``after``, or the latest change for a stream from now on) first reads again, for their
  places only, the changes of the quiet period before N's time (before now, from now on): a
  study that became stable while a client was reconnecting is still told. So is, again, one
  told just before the reconnection: the same event, the same CloudEvent id (at least once).
- OperationFinished: the exports, bulk updates and reindexes that finished since the stream's
  start (N's time on a resume), read from the operations, each sent once a stream.

Neither carries an SSE id: the id a client resumes from stays a change-feed sequence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dicomhub.clock import utcnow
from dicomhub.model import OPERATION_FINISHED
from dicomhub.storage.protocols import Place
from dicomhub.webhooks import events

if TYPE_CHECKING:
    from dicomhub.archive.webhooks import WebhookService

# an operation's finish time is taken before its transaction commits: one finished a little
# before another already read may show up after it, so reads look back this far
SETTLE = timedelta(seconds=5)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (SSE id or None, event type, CloudEvent JSON)
Message = tuple[str | None, str, bytes]


class LiveStream:
    def __init__(
        self,
        service: WebhookService,
        event_types: tuple[str, ...],
        filter: dict[str, tuple[str, ...]],
    ):
        self.service, self.index = service, service.index
        self.settings = service.settings
        self.root = service.settings.service_root
        self.types, self.filter = event_types, filter
        self.quiet = timedelta(seconds=self.settings.study_stable_after)
        self.stable = any(t in event_types for t in events.STABLE_TYPES)
        self.operations = OPERATION_FINISHED in event_types
        self.cursor = 0  # the change feed read up to
        self.shown = 0  # image events are sent after this sequence only
        self.places: dict[Place, tuple[int, datetime]] = {}  # place: (sequence, due)
        self.since = EPOCH  # operations finished from then on
        self.sent: dict[str, datetime] = {}  # operation events sent, by event id

    async def start(self, after: int | None) -> None:
        """Stream the events after change ``after`` (None: from now on)."""
        now = utcnow()
        if after is None:
            after, since = await self.service.latest_sequence(), now
        elif after == 0:
            since = EPOCH  # the whole feed: every operation kept too
        else:
            found = await self.index.changefeed(after - 1, 1, True, include_metadata=False)
            since = found[0].timestamp if found and found[0].sequence == after else now
        self.cursor = self.shown = after
        self.since = since
        if self.stable and after > 0:
            # the quiet period before the start: its changes' places only (see above)
            window = await self.index.changefeed(
                0, 1, False, start=since - self.quiet, include_metadata=False
            )
            if window and window[0].sequence <= after:
                self.cursor = window[0].sequence - 1

    async def next(self) -> tuple[list[Message], bool]:
        """The messages of one read: the stable events due, the operations finished, then
        the image events of one batch of the change feed; and whether more is ready now."""
        out = await self._stable_events()
        if self.operations:
            out += await self._operation_events()
        batch = self.settings.batch_size
        changes = await self.index.events_after(self.cursor, batch)
        for change in changes:
            if self.stable:
                for place in events.marks_stable(change, self.types, self.filter):
                    self.places[place] = (change.sequence, change.timestamp + self.quiet)
            if change.sequence > self.shown and events.matches(change, self.types, self.filter):
                event = events.event_of(change, self.root)
                out.append((event.id, event.type, self._body(event)))
        if changes:
            self.cursor = changes[-1].sequence
        return out, len(changes) == batch

    async def _stable_events(self) -> list[Message]:
        """The places whose quiet period has passed, checked as webhook_delivery._stable does."""
        now = utcnow()
        out: list[Message] = []
        for place, (sequence, due) in list(self.places.items()):
            if due > now:
                continue
            count, latest, last = await self.index.place_state(place)
            if count == 0:  # the study (series) is gone: nothing is stable
                del self.places[place]
                continue
            later = events.stable_later(latest, last, self.cursor, now, self.quiet)
            if later is not None:
                self.places[place] = (sequence, later)
                continue
            del self.places[place]
            event = events.stable_event(place, sequence, now, self.root)
            out.append((None, event.type, self._body(event)))
        return out

    async def _operation_events(self) -> list[Message]:
        batch = self.settings.batch_size
        found = await self.index.finished_operations(self.since, batch)
        out: list[Message] = []
        for event_id, partition, time, data in found:
            if event_id in self.sent:
                continue
            self.sent[event_id] = time
            if events.operation_passes(partition, self.filter):
                event = events.operation_event(event_id, time, data, self.root)
                out.append((None, event.type, self._body(event)))
        if len(found) == batch:  # more at once: on from the last one read
            self.since = found[-1][2]
        elif found:
            self.since = max(self.since, found[-1][2] - SETTLE)
        self.sent = {k: t for k, t in self.sent.items() if t >= self.since}
        return out

    def _body(self, event: events.Event) -> bytes:
        return events.body(event, "cloudevents", self.root)
