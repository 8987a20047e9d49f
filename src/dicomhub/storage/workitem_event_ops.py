"""UPS subscriptions and event reports in the index (PS3.18 11.10-11.14, PS3.4 CC.2.3):
operations of ``instance_ops``'s kind, SQL kept as data.

Each workitem has a subscription list (``ups_subscription``); a Global Subscription
(``ups_global_subscription``) adds its subscriber to the lists of the workitems existing when
it is made and of every workitem created later until it is suspended (a Filtered Global
Subscription: those matching its filter). A change writes its reports to the queue
(``ups_event``) of each subscriber on the workitem's list in the change's own transaction. A
report takes its subscriber's next sequence number by an UPDATE of the subscriber's row, so
on PostgreSQL transactions reporting to one subscriber take turns on that row (in subscriber
order: no deadlock) and numbers follow commit order: a reader that has seen number n never
later finds a smaller one committed. Reports leave the queue once delivered (``acknowledge``).
"""

from __future__ import annotations

import json
from datetime import datetime

from dicomhub.clock import to_micros
from dicomhub.dicom import workitem_events as wev
from dicomhub.dicom import workitems as ups
from dicomhub.dicom.json_model import compact
from dicomhub.dicom.workitem_query import parse
from dicomhub.model import DEFAULT_PARTITION
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.statements import Op, many, one, rows, run

ADD_SUBSCRIBER = (
    "INSERT INTO ups_subscriber (subscriber, last_sequence) VALUES (?, 0) ON CONFLICT DO NOTHING"
)
NEXT = (
    "UPDATE ups_subscriber SET last_sequence = last_sequence + 1 WHERE subscriber = ? "
    "RETURNING last_sequence"
)
ADD_EVENT = (
    "INSERT INTO ups_event (subscriber, sequence, workitem_uid, created, report) "
    "VALUES (?, ?, ?, ?, ?)"
)
SUBSCRIBE = (
    "INSERT INTO ups_subscription (workitem_key, subscriber, deletion_lock, created) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (workitem_key, subscriber) "
    "DO UPDATE SET deletion_lock = excluded.deletion_lock"
)
SUBSCRIBERS = "SELECT subscriber FROM ups_subscription WHERE workitem_key = ? ORDER BY subscriber"
WORKITEM = (
    "SELECT workitem_key, dataset FROM workitem WHERE partition_name = ? AND workitem_uid = ?"
)
GLOBALS = (
    "SELECT subscriber, deletion_lock, filter FROM ups_global_subscription "
    "WHERE suspended = ? ORDER BY subscriber"
)
SUBSCRIBE_GLOBAL = (
    "INSERT INTO ups_global_subscription "
    "(subscriber, kind, deletion_lock, filter, suspended, created) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (subscriber) DO UPDATE SET kind = excluded.kind, "
    "deletion_lock = excluded.deletion_lock, filter = excluded.filter, "
    "suspended = excluded.suspended"
)
PENDING = (
    "SELECT sequence, report FROM ups_event WHERE subscriber = ? AND sequence > ? "
    "ORDER BY sequence LIMIT ?"
)
ACKNOWLEDGE = "DELETE FROM ups_event WHERE subscriber = ? AND sequence <= ?"
PURGE = "DELETE FROM ups_event WHERE created < ?"
COUNT = (
    "SELECT count(*) FROM ups_subscription s JOIN workitem w ON w.workitem_key = s.workitem_key "
    "WHERE w.partition_name = ? AND w.workitem_uid = ?"
)


def queue(key: int, uid: str, reports: list[str], now: datetime) -> Op:
    """``reports`` to every subscriber of workitem ``key``; how many subscribers it has."""
    found = yield rows(SUBSCRIBERS, key)
    for row in found:
        yield from queue_to(row[0], uid, reports, now)
    return len(found)


def queue_to(subscriber: str, uid: str, reports: list[str], now: datetime) -> Op:
    for text in reports:
        row = yield one(NEXT, subscriber)
        yield run(ADD_EVENT, subscriber, row[0], uid, to_micros(now), text)


def join_global(d: Dialect, key: int, now: datetime) -> Op:
    """Workitem ``key``, just created, on the list of every global subscriber not suspended
    whose filter (if any) it matches."""
    found = yield rows(GLOBALS, False)
    for subscriber, lock, text in found:
        if text is not None and not (yield from _matches(d, key, text)):
            continue
        yield run(SUBSCRIBE, key, subscriber, bool(lock), to_micros(now))


def _matches(d: Dialect, key: int, text: str) -> Op:
    from dicomhub.storage.workitem_ops import where  # it writes events: imports this module

    clauses, params = where(parse([tuple(p) for p in json.loads(text)]), d)
    sql = f"SELECT 1 FROM workitem w WHERE w.workitem_key = ? AND {' AND '.join(clauses)}"
    return (yield one(sql, key, *params)) is not None


EVERY_SUBSCRIBER = (
    "SELECT subscriber FROM ups_global_subscription UNION "
    "SELECT subscriber FROM ups_subscription ORDER BY 1"
)


def status_change(report: str, now: datetime) -> Op:
    """``report`` (an SCP Status Change) to every AE title with a subscription (global or to
    a workitem); how many."""
    found = yield rows(EVERY_SUBSCRIBER)
    for row in found:
        yield from queue_to(row[0], wev.GLOBAL, [report], now)
    return len(found)


def subscribe(subscriber: str, uid: str, deletion_lock: bool, now: datetime) -> Op:
    """``subscriber`` on workitem ``uid``'s list, sent its initial State Report; False when
    there is no such workitem."""
    row = yield one(WORKITEM, DEFAULT_PARTITION, uid)
    if row is None:
        return False
    yield run(ADD_SUBSCRIBER, subscriber)
    yield run(SUBSCRIBE, row[0], subscriber, deletion_lock, to_micros(now))
    report = _compact(wev.state_report(json.loads(row[1])))
    yield from queue_to(subscriber, uid, [report], now)
    return True


def subscribe_all(
    d: Dialect,
    subscriber: str,
    kind: str,
    deletion_lock: bool,
    filter_params: list[tuple[str, str]] | None,
    now: datetime,
) -> Op:
    """A Global (or Filtered Global) Subscription, made or renewed (no longer suspended):
    ``subscriber`` on the list of every SCHEDULED or IN PROGRESS workitem (matching the
    filter) not on it yet, and sent its initial State Report; how many it joined."""
    text = json.dumps(filter_params) if filter_params is not None else None
    yield run(ADD_SUBSCRIBER, subscriber)
    yield run(SUBSCRIBE_GLOBAL, subscriber, kind, deletion_lock, text, False, to_micros(now))
    clauses = ["w.partition_name = ?", "w.state IN (?, ?)"]
    params = [DEFAULT_PARTITION, ups.SCHEDULED, ups.IN_PROGRESS]  # subscriptions: the default's
    if filter_params is not None:
        more, values = _where(d, filter_params)
        clauses += more
        params += values
    found = yield rows(
        "SELECT w.workitem_key, w.workitem_uid, w.dataset FROM workitem w "
        f"WHERE {' AND '.join(clauses)} AND NOT EXISTS (SELECT 1 FROM ups_subscription s "
        "WHERE s.workitem_key = w.workitem_key AND s.subscriber = ?) ORDER BY w.workitem_key",
        *params,
        subscriber,
    )
    if found:
        micros = to_micros(now)
        yield many(SUBSCRIBE, [(r[0], subscriber, deletion_lock, micros) for r in found])
    for row in found:
        report = _compact(wev.state_report(json.loads(row[2])))
        yield from queue_to(subscriber, row[1], [report], now)
    return len(found)


def _where(d: Dialect, filter_params: list[tuple[str, str]]) -> tuple[list[str], list]:
    from dicomhub.storage.workitem_ops import where

    return where(parse(filter_params), d)


def unsubscribe(subscriber: str, uid: str) -> Op:
    """``subscriber`` off workitem ``uid``'s list, its reports of it not yet delivered
    dropped; None when there is no such workitem, else whether it was on the list."""
    row = yield one(WORKITEM, DEFAULT_PARTITION, uid)
    if row is None:
        return None
    gone = yield one(
        "DELETE FROM ups_subscription WHERE workitem_key = ? AND subscriber = ? "
        "RETURNING subscriber",
        row[0],
        subscriber,
    )
    yield run("DELETE FROM ups_event WHERE subscriber = ? AND workitem_uid = ?", subscriber, uid)
    return gone is not None


def unsubscribe_all(subscriber: str) -> Op:
    """The global subscription and every workitem subscription of ``subscriber`` removed, its
    queue emptied; whether it had any."""
    had = yield one(
        "DELETE FROM ups_global_subscription WHERE subscriber = ? RETURNING subscriber", subscriber
    )
    lists = yield rows(
        "DELETE FROM ups_subscription WHERE subscriber = ? RETURNING workitem_key", subscriber
    )
    yield run("DELETE FROM ups_event WHERE subscriber = ?", subscriber)
    return had is not None or bool(lists)


def suspend(subscriber: str) -> Op:
    """Stop adding ``subscriber`` to new workitems (its global subscription suspended; the
    workitems it is subscribed to already keep it); whether it had a global subscription."""
    row = yield one(
        "UPDATE ups_global_subscription SET suspended = ? WHERE subscriber = ? "
        "RETURNING subscriber",
        True,
        subscriber,
    )
    return row is not None


def pending(subscriber: str, after: int, limit: int) -> Op:
    found = yield rows(PENDING, subscriber, after, limit)
    return [(r[0], r[1]) for r in found]


def acknowledge(subscriber: str, sequence: int) -> Op:
    yield run(ACKNOWLEDGE, subscriber, sequence)


def purge(before: datetime) -> Op:
    yield run(PURGE, to_micros(before))


def count(uid: str, partition: str = DEFAULT_PARTITION) -> Op:
    row = yield one(COUNT, partition, uid)
    return row[0]


def _compact(report: dict) -> str:
    return compact(report)
