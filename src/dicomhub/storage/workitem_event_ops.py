"""UPS subscriptions and event reports in the index (PS3.18 11.10-11.14, PS3.4 CC.2.3):
operations of ``instance_ops``'s kind, SQL kept as data.

A subscriber is an AE title in a data partition: its subscriptions, global subscription, queue
and sequence numbers are that partition's, apart from the same AE title's in another. Each
workitem has a subscription list (``ups_subscription``) of subscribers of its partition; a
Global Subscription (``ups_global_subscription``) adds its subscriber to the lists of the
partition's workitems existing when it is made and of every workitem created in the partition
later until it is suspended (a Filtered Global Subscription: those matching its filter). A
change writes its reports to the queue (``ups_event``) of each subscriber on the workitem's
list in the change's own transaction. A report takes its subscriber's next sequence number by
an UPDATE of the subscriber's row, so on PostgreSQL transactions reporting to one subscriber
take turns on that row (in subscriber order: no deadlock) and numbers follow commit order: a
reader that has seen number n never later finds a smaller one committed. Reports leave the
queue once delivered (``acknowledge``).
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
    "INSERT INTO ups_subscriber (partition_name, subscriber, last_sequence) VALUES (?, ?, 0) "
    "ON CONFLICT DO NOTHING"
)
NEXT = (
    "UPDATE ups_subscriber SET last_sequence = last_sequence + 1 "
    "WHERE partition_name = ? AND subscriber = ? RETURNING last_sequence"
)
ADD_EVENT = (
    "INSERT INTO ups_event (partition_name, subscriber, sequence, workitem_uid, created, report) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
SUBSCRIBE = (
    "INSERT INTO ups_subscription (workitem_key, partition_name, subscriber, deletion_lock, "
    "created) VALUES (?, ?, ?, ?, ?) ON CONFLICT (workitem_key, subscriber) "
    "DO UPDATE SET deletion_lock = excluded.deletion_lock"
)
SUBSCRIBERS = (
    "SELECT partition_name, subscriber FROM ups_subscription WHERE workitem_key = ? "
    "ORDER BY subscriber"
)
WORKITEM = (
    "SELECT workitem_key, dataset FROM workitem WHERE partition_name = ? AND workitem_uid = ?"
)
GLOBALS = (
    "SELECT subscriber, deletion_lock, filter FROM ups_global_subscription "
    "WHERE partition_name = ? AND suspended = ? ORDER BY subscriber"
)
SUBSCRIBE_GLOBAL = (
    "INSERT INTO ups_global_subscription (partition_name, subscriber, kind, deletion_lock, "
    "filter, suspended, created) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (partition_name, subscriber) DO UPDATE SET kind = excluded.kind, "
    "deletion_lock = excluded.deletion_lock, filter = excluded.filter, "
    "suspended = excluded.suspended"
)
PENDING = (
    "SELECT sequence, report FROM ups_event WHERE partition_name = ? AND subscriber = ? "
    "AND sequence > ? ORDER BY sequence LIMIT ?"
)
ACKNOWLEDGE = "DELETE FROM ups_event WHERE partition_name = ? AND subscriber = ? AND sequence <= ?"
PURGE = "DELETE FROM ups_event WHERE created < ?"
COUNT = (
    "SELECT count(*) FROM ups_subscription s JOIN workitem w ON w.workitem_key = s.workitem_key "
    "WHERE w.partition_name = ? AND w.workitem_uid = ?"
)


def queue(key: int, uid: str, reports: list[str], now: datetime) -> Op:
    """``reports`` to every subscriber of workitem ``key``; how many subscribers it has."""
    found = yield rows(SUBSCRIBERS, key)
    for partition, subscriber in found:
        yield from queue_to(partition, subscriber, uid, reports, now)
    return len(found)


def queue_to(partition: str, subscriber: str, uid: str, reports: list[str], now: datetime) -> Op:
    for text in reports:
        row = yield one(NEXT, partition, subscriber)
        yield run(ADD_EVENT, partition, subscriber, row[0], uid, to_micros(now), text)


def join_global(d: Dialect, key: int, now: datetime, partition: str = DEFAULT_PARTITION) -> Op:
    """Workitem ``key`` of data ``partition``, just created, on the list of every global
    subscriber of the partition not suspended whose filter (if any) it matches."""
    found = yield rows(GLOBALS, partition, False)
    for subscriber, lock, text in found:
        if text is not None and not (yield from _matches(d, key, text)):
            continue
        yield run(SUBSCRIBE, key, partition, subscriber, bool(lock), to_micros(now))


def _matches(d: Dialect, key: int, text: str) -> Op:
    from dicomhub.storage.workitem_ops import where  # it writes events: imports this module

    clauses, params = where(parse([tuple(p) for p in json.loads(text)]), d)
    sql = f"SELECT 1 FROM workitem w WHERE w.workitem_key = ? AND {' AND '.join(clauses)}"
    return (yield one(sql, key, *params)) is not None


EVERY_SUBSCRIBER = (
    "SELECT partition_name, subscriber FROM ups_global_subscription UNION "
    "SELECT partition_name, subscriber FROM ups_subscription ORDER BY 1, 2"
)


def status_change(report: str, now: datetime) -> Op:
    """``report`` (an SCP Status Change) to every subscriber (of every partition) with a
    subscription (global or to a workitem); how many."""
    found = yield rows(EVERY_SUBSCRIBER)
    for partition, subscriber in found:
        yield from queue_to(partition, subscriber, wev.GLOBAL, [report], now)
    return len(found)


def subscribe(
    subscriber: str,
    uid: str,
    deletion_lock: bool,
    now: datetime,
    partition: str = DEFAULT_PARTITION,
) -> Op:
    """``subscriber`` (of data ``partition``) on the list of the partition's workitem ``uid``,
    sent its initial State Report; False when there is no such workitem."""
    row = yield one(WORKITEM, partition, uid)
    if row is None:
        return False
    yield run(ADD_SUBSCRIBER, partition, subscriber)
    yield run(SUBSCRIBE, row[0], partition, subscriber, deletion_lock, to_micros(now))
    report = _compact(wev.state_report(json.loads(row[1])))
    yield from queue_to(partition, subscriber, uid, [report], now)
    return True


def subscribe_all(
    d: Dialect,
    subscriber: str,
    kind: str,
    deletion_lock: bool,
    filter_params: list[tuple[str, str]] | None,
    now: datetime,
    partition: str = DEFAULT_PARTITION,
) -> Op:
    """A Global (or Filtered Global) Subscription of data ``partition``, made or renewed (no
    longer suspended): ``subscriber`` on the list of every SCHEDULED or IN PROGRESS workitem of
    the partition (matching the filter) not on it yet, and sent its initial State Report; how
    many it joined."""
    text = json.dumps(filter_params) if filter_params is not None else None
    micros = to_micros(now)
    yield run(ADD_SUBSCRIBER, partition, subscriber)
    yield run(SUBSCRIBE_GLOBAL, partition, subscriber, kind, deletion_lock, text, False, micros)
    clauses = ["w.partition_name = ?", "w.state IN (?, ?)"]
    params = [partition, ups.SCHEDULED, ups.IN_PROGRESS]
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
        values = [(r[0], partition, subscriber, deletion_lock, micros) for r in found]
        yield many(SUBSCRIBE, values)
    for row in found:
        report = _compact(wev.state_report(json.loads(row[2])))
        yield from queue_to(partition, subscriber, row[1], [report], now)
    return len(found)


def _where(d: Dialect, filter_params: list[tuple[str, str]]) -> tuple[list[str], list]:
    from dicomhub.storage.workitem_ops import where

    return where(parse(filter_params), d)


def unsubscribe(subscriber: str, uid: str, partition: str = DEFAULT_PARTITION) -> Op:
    """``subscriber`` (of data ``partition``) off the list of the partition's workitem
    ``uid``, its reports of it not yet delivered dropped; None when there is no such
    workitem, else whether it was on the list."""
    row = yield one(WORKITEM, partition, uid)
    if row is None:
        return None
    gone = yield one(
        "DELETE FROM ups_subscription WHERE workitem_key = ? AND subscriber = ? "
        "RETURNING subscriber",
        row[0],
        subscriber,
    )
    yield run(
        "DELETE FROM ups_event WHERE partition_name = ? AND subscriber = ? AND workitem_uid = ?",
        partition,
        subscriber,
        uid,
    )
    return gone is not None


def unsubscribe_all(subscriber: str, partition: str = DEFAULT_PARTITION) -> Op:
    """The global subscription and every workitem subscription of ``subscriber`` in data
    ``partition`` removed, its queue there emptied; whether it had any."""
    had = yield one(
        "DELETE FROM ups_global_subscription WHERE partition_name = ? AND subscriber = ? "
        "RETURNING subscriber",
        partition,
        subscriber,
    )
    lists = yield rows(
        "DELETE FROM ups_subscription WHERE partition_name = ? AND subscriber = ? "
        "RETURNING workitem_key",
        partition,
        subscriber,
    )
    yield run(
        "DELETE FROM ups_event WHERE partition_name = ? AND subscriber = ?", partition, subscriber
    )
    return had is not None or bool(lists)


def suspend(subscriber: str, partition: str = DEFAULT_PARTITION) -> Op:
    """Stop adding ``subscriber`` to new workitems of data ``partition`` (its global
    subscription there suspended; the workitems it is subscribed to already keep it); whether
    it had a global subscription there."""
    row = yield one(
        "UPDATE ups_global_subscription SET suspended = ? WHERE partition_name = ? "
        "AND subscriber = ? RETURNING subscriber",
        True,
        partition,
        subscriber,
    )
    return row is not None


def pending(subscriber: str, after: int, limit: int, partition: str = DEFAULT_PARTITION) -> Op:
    found = yield rows(PENDING, partition, subscriber, after, limit)
    return [(r[0], r[1]) for r in found]


def acknowledge(subscriber: str, sequence: int, partition: str = DEFAULT_PARTITION) -> Op:
    yield run(ACKNOWLEDGE, partition, subscriber, sequence)


def purge(before: datetime) -> Op:
    yield run(PURGE, to_micros(before))


def count(uid: str, partition: str = DEFAULT_PARTITION) -> Op:
    row = yield one(COUNT, partition, uid)
    return row[0]


def _compact(report: dict) -> str:
    return compact(report)
