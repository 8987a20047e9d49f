"""Webhook subscriptions in the index (operations of ``instance_ops``'s kind, SQL kept as data).

The change feed is the outbox: a subscription keeps the sequence it has delivered up to, and
its events are read from the feed after it, so a store writes nothing here. One node at a time
delivers to a subscription (a lease on its row, taken over when the holder stops renewing), in
sequence order. Events refused past the retry window are dead-lettered with their body.
"""

from __future__ import annotations

import json
from datetime import datetime

from dicomhub.clock import from_micros, to_micros
from dicomhub.model import Action, DeadLetter, EventSource, InstanceId, Subscription
from dicomhub.storage import instance_ops
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.statements import Op, one, rows, run, unsynced
from dicomhub.storage.webhook_protocol import Place

_COLUMNS = (
    "subscription_id, url, event_types, filter, secret, payload_schema, paused, created, "
    "updated, sequence, delivered, attempts, failing_since, next_attempt, last_error, "
    "lease_owner, lease_expires"
)
INSERT = (
    "INSERT INTO webhook_subscription (subscription_id, url, event_types, filter, secret, "
    "payload_schema, paused, created, updated, sequence, next_attempt) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET = f"SELECT {_COLUMNS} FROM webhook_subscription WHERE subscription_id = ?"
LIST = f"SELECT {_COLUMNS} FROM webhook_subscription ORDER BY created, subscription_id"
UPDATE = (
    "UPDATE webhook_subscription SET url = ?, event_types = ?, filter = ?, secret = ?, "
    "payload_schema = ?, paused = ?, updated = ?, next_attempt = ? WHERE subscription_id = ?"
)
DELETE = "DELETE FROM webhook_subscription WHERE subscription_id = ?"
DELETE_DEADLETTERS = "DELETE FROM webhook_deadletter WHERE subscription_id = ?"
# Due: not paused, its time come, no live lease (its holder died: the lease ran out), and work
# to do: changes after its cursor, a replay asked for, or a study whose stable time has come
# (an idle subscription is not claimed, so idle nodes poll without writing).
READY = (
    "SELECT s.subscription_id FROM webhook_subscription s "
    "WHERE s.paused = ? AND s.next_attempt <= ? AND (s.lease_owner IS NULL OR s.lease_expires < ?) "
    "AND (s.sequence < (SELECT coalesce(max(sequence), 0) FROM changefeed) "
    "OR EXISTS (SELECT 1 FROM webhook_deadletter d "
    "WHERE d.subscription_id = s.subscription_id AND d.replay = ?) "
    "OR EXISTS (SELECT 1 FROM webhook_stable w "
    "WHERE w.subscription_id = s.subscription_id AND w.due <= ?) "
    "OR EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.subscription_id = s.subscription_id)) "
    "ORDER BY s.next_attempt LIMIT 1{skip_locked}"
)
CLAIM = (
    "UPDATE webhook_subscription SET lease_owner = ?, lease_expires = ? "
    f"WHERE subscription_id = ? RETURNING {_COLUMNS}"
)
# Progress, only by the lease holder (False: the lease went to another node).
DELIVERED_KEPT = (  # an event that is no change-feed entry: the cursor stays
    "UPDATE webhook_subscription SET delivered = delivered + ?, attempts = 0, "
    "failing_since = NULL, last_error = NULL, lease_expires = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING sequence"
)
DELIVERED = (
    "UPDATE webhook_subscription SET sequence = ?, delivered = delivered + ?, attempts = 0, "
    "failing_since = NULL, last_error = NULL, lease_expires = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING sequence"
)
# Past a dead-lettered event: the failures go on counting from the first (see archive/webhooks).
PASSED = (
    "UPDATE webhook_subscription SET sequence = ?, attempts = 0, "
    "failing_since = coalesce(failing_since, ?), last_error = ?, lease_expires = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING sequence"
)
KEPT = (  # the same, for an event that is no change-feed entry (StudyStable): no cursor move
    "UPDATE webhook_subscription SET attempts = 0, "
    "failing_since = coalesce(failing_since, ?), last_error = ?, lease_expires = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING sequence"
)
RENEW = (
    "UPDATE webhook_subscription SET lease_expires = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING sequence"
)
FAILED = (
    "UPDATE webhook_subscription SET attempts = attempts + 1, "
    "failing_since = coalesce(failing_since, ?), last_error = ?, next_attempt = ? "
    "WHERE subscription_id = ? AND lease_owner = ? RETURNING attempts"
)
RELEASE = (
    "UPDATE webhook_subscription SET lease_owner = NULL, lease_expires = NULL, "
    "next_attempt = CASE WHEN next_attempt > ? THEN next_attempt ELSE ? END "
    "WHERE subscription_id = ? AND lease_owner = ?"
)
WAKE = "UPDATE webhook_subscription SET next_attempt = ? WHERE subscription_id = ?"
DEAD = (
    "INSERT INTO webhook_deadletter (subscription_id, event_id, sequence, event_type, body, "
    "error, attempts, dead, replay) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (subscription_id, event_id) DO UPDATE SET error = excluded.error, "
    "attempts = excluded.attempts, dead = excluded.dead, replay = excluded.replay"
)
_DL_COLUMNS = "subscription_id, event_id, sequence, event_type, body, error, attempts, dead, replay"
DEADLETTERS = (
    f"SELECT {_DL_COLUMNS} FROM webhook_deadletter WHERE subscription_id = ? "
    "ORDER BY sequence, event_id LIMIT ? OFFSET ?"
)
REPLAYS = (
    f"SELECT {_DL_COLUMNS} FROM webhook_deadletter WHERE subscription_id = ? AND replay = ? "
    "ORDER BY sequence, event_id LIMIT ?"
)
ASK_REPLAY = (
    "UPDATE webhook_deadletter SET replay = ? WHERE subscription_id = ? AND event_id = ? "
    "RETURNING sequence"
)
REPLAYED = "DELETE FROM webhook_deadletter WHERE subscription_id = ? AND event_id = ?"
REPLAY_FAILED = (
    "UPDATE webhook_deadletter SET replay = ?, error = ?, attempts = attempts + 1, dead = ? "
    "WHERE subscription_id = ? AND event_id = ?"
)
HELD = "SELECT 1 FROM webhook_subscription WHERE subscription_id = ? AND lease_owner = ?"
COUNT_DEADLETTERS = "SELECT count(*) FROM webhook_deadletter WHERE subscription_id = ?"
DELETE_STABLE = "DELETE FROM webhook_stable WHERE subscription_id = ?"
DELETE_OUTBOX = "DELETE FROM webhook_outbox WHERE subscription_id = ?"
# OperationFinished events waiting (written by storage/job_ops.finish), oldest first
OUTBOX = (
    "SELECT event_id, event_type, partition_name, time, data FROM webhook_outbox "
    "WHERE subscription_id = ? ORDER BY time, event_id LIMIT ?"
)
DROP_OUTBOX = "DELETE FROM webhook_outbox WHERE subscription_id = ? AND event_id = ?"

# StudyStable and SeriesStable: the studies and series passed (a place: partition, study,
# series; series '' for the study itself), their last change, and when each is due.
MARK_STABLE = (
    "INSERT INTO webhook_stable (subscription_id, partition_name, study_uid, series_uid, "
    "sequence, due) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (subscription_id, partition_name, study_uid, series_uid) "
    "DO UPDATE SET sequence = excluded.sequence, due = excluded.due"
)
DUE_STABLE = (
    "SELECT partition_name, study_uid, series_uid, sequence, due FROM webhook_stable "
    "WHERE subscription_id = ? AND due <= ? ORDER BY due, sequence, series_uid LIMIT ?"
)
_PLACE = "partition_name = ? AND study_uid = ? AND series_uid = ?"
POSTPONE_STABLE = (
    f"UPDATE webhook_stable SET due = ? WHERE subscription_id = ? AND {_PLACE} AND sequence = ?"
)
DROP_STABLE = f"DELETE FROM webhook_stable WHERE subscription_id = ? AND {_PLACE} AND sequence = ?"
# A study's (a series') instances now, and its last change that adds one (any, numbered or not
# yet: an unnumbered entry is one no reader has passed).
STUDY_COUNT = "SELECT instance_count FROM study WHERE partition_name = ? AND study_uid = ?"
SERIES_COUNT = (
    "SELECT se.instance_count FROM series se JOIN study st ON st.study_key = se.study_key "
    "WHERE st.partition_name = ? AND st.study_uid = ? AND se.series_uid = ?"
)
_LAST_CHANGE = (
    "SELECT max(timestamp) AS latest, max(coalesce(sequence, 4611686018427387904)) AS last "
    "FROM changefeed WHERE partition_name = ? AND study_uid = ? AND action <> ?"
)
STUDY_LAST_CHANGE = _LAST_CHANGE
SERIES_LAST_CHANGE = _LAST_CHANGE + " AND series_uid = ?"

# The change feed after a cursor, with what filters match on (the instance's current version;
# nothing once it is gone). Numbered entries only, as every reader of the feed.
EVENTS_AFTER = """
SELECT c.sequence, c.timestamp, c.action, c.partition_name, c.study_uid, c.series_uid, c.sop_uid,
    se.modality, i.sop_class_uid
FROM changefeed c
LEFT JOIN study st ON st.partition_name = c.partition_name AND st.study_uid = c.study_uid
LEFT JOIN series se ON se.study_key = st.study_key AND se.series_uid = c.series_uid
LEFT JOIN instance i ON i.series_key = se.series_key AND i.sop_uid = c.sop_uid
WHERE c.sequence > ? ORDER BY c.sequence LIMIT ?
"""


def create(subscription: Subscription) -> Op:
    s = subscription
    yield run(
        INSERT,
        s.id,
        s.url,
        json.dumps(list(s.event_types)),
        _filter_json(s.filter),
        s.secret,
        s.schema,
        s.paused,
        to_micros(s.created),
        to_micros(s.updated),
        s.sequence,
        to_micros(s.next_attempt),
    )
    return s


def get(id: str) -> Op:
    row = yield one(GET, id)
    return None if row is None else subscription(row)


def listing() -> Op:
    return [subscription(r) for r in (yield rows(LIST))]


def update(s: Subscription) -> Op:
    """Replace what an administrator may change (and wake its delivery); False when gone."""
    found = yield one(GET, s.id)
    if found is None:
        return False
    yield run(
        UPDATE,
        s.url,
        json.dumps(list(s.event_types)),
        _filter_json(s.filter),
        s.secret,
        s.schema,
        s.paused,
        to_micros(s.updated),
        to_micros(s.next_attempt),
        s.id,
    )
    return True


def delete(id: str) -> Op:
    found = yield one(GET, id)
    yield run(DELETE_DEADLETTERS, id)
    yield run(DELETE_STABLE, id)
    yield run(DELETE_OUTBOX, id)
    yield run(DELETE, id)
    return found is not None


def due(d: Dialect, now: datetime) -> Op:
    """Whether a subscription's delivery is due (read first, so that idle nodes poll the
    index without writing); numbers the change feed first where a reader does."""
    if d.number_changes:
        yield one(d.number_changes)
    micros = to_micros(now)
    row = yield one(READY.format(skip_locked=""), False, micros, micros, True, micros)
    return row is not None


@unsynced
def claim(d: Dialect, owner: str, now: datetime, lease_until: datetime) -> Op:
    """Take the lease of the subscription whose delivery is due first; None when none is."""
    micros = to_micros(now)
    ready = yield one(READY.format(skip_locked=d.skip_locked), False, micros, micros, True, micros)
    if ready is None:
        return None
    row = yield one(CLAIM, owner, to_micros(lease_until), ready[0])
    return subscription(row)


@unsynced
def delivered(
    id: str,
    owner: str,
    sequence: int,
    count: int,
    lease_until: datetime,
    marks: list[tuple[Place, int, datetime]] = (),
) -> Op:
    """Move the cursor (``count`` events delivered) and mark the places passed for their
    stable event (place, last change, due), together; False without the lease (nothing
    done)."""
    held = yield one(HELD, id, owner)
    if held is None:
        return False
    for place, last, due_at in marks:
        yield run(MARK_STABLE, id, *place, last, to_micros(due_at))
    row = yield one(DELIVERED, sequence, count, to_micros(lease_until), id, owner)
    return row is not None


@unsynced
def renew(id: str, owner: str, lease_until: datetime) -> Op:
    row = yield one(RENEW, to_micros(lease_until), id, owner)
    return row is not None


@unsynced
def failed(id: str, owner: str, now: datetime, error: str, retry_at: datetime) -> Op:
    """A failed attempt at the next event; the attempts so far (None: the lease was lost)."""
    row = yield one(FAILED, to_micros(now), error[:2000], to_micros(retry_at), id, owner)
    return None if row is None else row[0]


@unsynced
def dead_letter(
    id: str,
    owner: str,
    letter: DeadLetter,
    lease_until: datetime,
    stable: Place | None = None,
    outbox: bool = False,
) -> Op:
    """Give up on an event: keep it as a dead letter and move the cursor past it (or, for the
    stable event of place ``stable``, forget the place; for an ``outbox`` event, drop it),
    together."""
    held = yield one(HELD, id, owner)
    if held is None:
        return False
    yield run(
        DEAD,
        id,
        letter.event_id,
        letter.sequence,
        letter.event_type,
        letter.body,
        letter.error[:2000],
        letter.attempts,
        to_micros(letter.dead),
        False,
    )
    dead_at, error, until = to_micros(letter.dead), letter.error[:2000], to_micros(lease_until)
    if stable is not None or outbox:
        if stable is not None:
            yield run(DROP_STABLE, id, *stable, letter.sequence)
        else:
            yield run(DROP_OUTBOX, id, letter.event_id)
        row = yield one(KEPT, dead_at, error, until, id, owner)
    else:
        row = yield one(PASSED, letter.sequence, dead_at, error, until, id, owner)
    return row is not None


def due_stable(id: str, now: datetime, limit: int) -> Op:
    found = yield rows(DUE_STABLE, id, to_micros(now), limit)
    return [
        (
            (r["partition_name"], r["study_uid"], r["series_uid"]),
            r["sequence"],
            from_micros(r["due"]),
        )
        for r in found
    ]


def place_state(place: Place) -> Op:
    """(instances now, time of its last change adding one, that change's sequence)."""
    partition, study, series = place
    if series:
        count = yield one(SERIES_COUNT, partition, study, series)
        last = yield one(SERIES_LAST_CHANGE, partition, study, int(Action.DELETE), series)
    else:
        count = yield one(STUDY_COUNT, partition, study)
        last = yield one(STUDY_LAST_CHANGE, partition, study, int(Action.DELETE))
    if last is None or last["latest"] is None:
        return (count[0] if count else 0), None, None
    return (count[0] if count else 0), from_micros(last["latest"]), last["last"]


@unsynced
def postpone_stable(id: str, place: Place, sequence: int, due_at: datetime) -> Op:
    yield run(POSTPONE_STABLE, to_micros(due_at), id, *place, sequence)


@unsynced
def stable_done(
    id: str,
    owner: str,
    place: Place,
    sequence: int,
    count: int,
    lease_until: datetime,
) -> Op:
    """A place's stable event was delivered (``count`` 1) or is not to be (0: it is gone):
    forget the place, and with a delivery clear the failures; False without the lease."""
    held = yield one(HELD, id, owner)
    if held is None:
        return False
    yield run(DROP_STABLE, id, *place, sequence)
    if count:
        row = yield one(DELIVERED_KEPT, count, to_micros(lease_until), id, owner)
        return row is not None
    return True


def outbox(id: str, limit: int) -> Op:
    """(event id, type, partition, time, data) of its waiting outbox events, oldest first."""
    found = yield rows(OUTBOX, id, limit)
    return [
        (
            r["event_id"],
            r["event_type"],
            r["partition_name"],
            from_micros(r["time"]),
            json.loads(r["data"]),
        )
        for r in found
    ]


@unsynced
def outbox_done(id: str, owner: str, event_id: str, count: int, lease_until: datetime) -> Op:
    """An outbox event was delivered (``count`` 1, clearing the failures) or is not for this
    subscription (0): drop it; False without the lease."""
    held = yield one(HELD, id, owner)
    if held is None:
        return False
    yield run(DROP_OUTBOX, id, event_id)
    if count:
        row = yield one(DELIVERED_KEPT, count, to_micros(lease_until), id, owner)
        return row is not None
    return True


@unsynced
def release(id: str, owner: str, not_before: datetime) -> Op:
    """Let go of the lease; the next delivery not before ``not_before`` (or a retry's time)."""
    micros = to_micros(not_before)
    yield run(RELEASE, micros, micros, id, owner)


def deadletters(id: str, offset: int, limit: int) -> Op:
    return [dead(r) for r in (yield rows(DEADLETTERS, id, limit, offset))]


def count_deadletters(id: str) -> Op:
    return (yield one(COUNT_DEADLETTERS, id))[0]


def ask_replay(id: str, event_id: str, now: datetime) -> Op:
    """Mark a dead letter for delivery again and wake the subscription; False: no such one."""
    row = yield one(ASK_REPLAY, True, id, event_id)
    if row is None:
        return False
    yield run(WAKE, to_micros(now), id)
    return True


def replays(id: str, limit: int) -> Op:
    return [dead(r) for r in (yield rows(REPLAYS, id, True, limit))]


def replayed(id: str, event_id: str) -> Op:
    yield run(REPLAYED, id, event_id)


def replay_failed(id: str, event_id: str, error: str, now: datetime) -> Op:
    yield run(REPLAY_FAILED, False, error[:2000], to_micros(now), id, event_id)


def events_after(d: Dialect, sequence: int, limit: int) -> Op:
    found = yield from instance_ops.changes(d, EVENTS_AFTER, (sequence, limit))
    return [
        EventSource(
            sequence=r["sequence"],
            timestamp=from_micros(r["timestamp"]),
            action=Action(r["action"]),
            id=InstanceId(r["study_uid"], r["series_uid"], r["sop_uid"], r["partition_name"]),
            modality=r["modality"],
            sop_class=r["sop_class_uid"],
        )
        for r in found
    ]


def subscription(r) -> Subscription:
    return Subscription(
        id=r["subscription_id"],
        url=r["url"],
        event_types=tuple(json.loads(r["event_types"])),
        filter={
            k: v if isinstance(v, dict) else tuple(v) for k, v in json.loads(r["filter"]).items()
        },
        secret=r["secret"],
        schema=r["payload_schema"],
        paused=bool(r["paused"]),
        created=from_micros(r["created"]),
        updated=from_micros(r["updated"]),
        sequence=r["sequence"],
        delivered=r["delivered"],
        attempts=r["attempts"],
        failing_since=from_micros(r["failing_since"]) if r["failing_since"] else None,
        next_attempt=from_micros(r["next_attempt"]),
        last_error=r["last_error"],
        holder=r["lease_owner"],
    )


def dead(r) -> DeadLetter:
    return DeadLetter(
        subscription=r["subscription_id"],
        event_id=r["event_id"],
        sequence=r["sequence"],
        event_type=r["event_type"],
        body=r["body"],
        error=r["error"],
        attempts=r["attempts"],
        dead=from_micros(r["dead"]),
        replay=bool(r["replay"]),
    )


def _filter_json(filter: dict) -> str:
    """Value lists, and the study filter (an object) as it is."""
    return json.dumps(
        {k: v if isinstance(v, dict) else list(v) for k, v in filter.items()}, sort_keys=True
    )
