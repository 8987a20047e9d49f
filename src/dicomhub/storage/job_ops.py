"""Background jobs in the index (operations of ``instance_ops``'s kind, SQL kept as data).

A job is ready when it has not started and its time has come, or when it is running under a
lease that ran out (its worker died). Claiming takes the lease; renewing it proves the worker
alive; only the lease holder can report progress or finish the job.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dicomhub.clock import from_micros, to_micros
from dicomhub.model import (
    EVENTFUL_JOBS,
    OPERATION_FINISHED,
    JobType,
    Operation,
    OperationStatus,
)
from dicomhub.storage.dialect import Dialect
from dicomhub.storage.statements import Op, one, rows, run

_COLUMNS = (
    "operation_id, type, status, percent_complete, created, last_updated, payload, checkpoint, "
    "results, errors, attempts, max_attempts"
)
INSERT = (
    "INSERT INTO operation (operation_id, type, status, created, last_updated, payload, "
    "max_attempts, not_before, singleton) VALUES (?, ?, 'notStarted', ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING RETURNING operation_id"
)
SINGLETON = "SELECT operation_id FROM operation WHERE singleton = ?"
READY = (
    "SELECT operation_id FROM operation "
    "WHERE (status = 'notStarted' AND not_before <= ?) "
    "OR (status = 'running' AND lease_expires < ?) "
    "ORDER BY created LIMIT 1{skip_locked}"
)
CLAIM = (
    "UPDATE operation SET status = 'running', lease_owner = ?, lease_expires = ?, "
    f"attempts = attempts + 1, last_updated = ? WHERE operation_id = ? RETURNING {_COLUMNS}"
)
RENEW = (
    "UPDATE operation SET lease_expires = ?, percent_complete = ?, checkpoint = ?, "
    "last_updated = ? WHERE operation_id = ? AND lease_owner = ? AND status = 'running' "
    "RETURNING operation_id"
)
HELD = (
    "SELECT errors, type, payload FROM operation "
    "WHERE operation_id = ? AND lease_owner = ? AND status = 'running'"
)
# dicomhub.OperationFinished, one row per subscription asking for it (webhook_ops delivers)
FAN_OUT = (
    "INSERT INTO webhook_outbox (subscription_id, event_id, event_type, partition_name, time, "
    "data) SELECT subscription_id, ?, ?, ?, CAST(? AS BIGINT), ? FROM webhook_subscription "
    "WHERE event_types LIKE ?"
)
FINISH = (
    "UPDATE operation SET status = ?, percent_complete = coalesce(?, percent_complete), "
    "results = ?, errors = ?, "
    "not_before = ?, last_updated = ?, lease_owner = NULL, lease_expires = NULL, "
    "singleton = CASE WHEN ? THEN NULL ELSE singleton END WHERE operation_id = ?"
)
GET = f"SELECT {_COLUMNS} FROM operation WHERE operation_id = ?"
QUEUE = (  # ready: what READY would claim; held: running under a lease not run out
    "SELECT type, "
    "sum(CASE WHEN status = 'notStarted' AND not_before <= ? OR lease_expires < ? THEN 1 "
    "ELSE 0 END) AS ready, "
    "min(CASE WHEN status = 'notStarted' AND not_before <= ? THEN not_before "
    "WHEN lease_expires < ? THEN lease_expires END) AS due, "
    "sum(CASE WHEN status = 'running' AND lease_expires >= ? THEN 1 ELSE 0 END) AS held "
    "FROM operation WHERE status IN ('notStarted', 'running') GROUP BY type ORDER BY type"
)
# The eventful jobs finished since a time, for the live event stream (web/event_stream.py): a
# finished job's not_before is its finish time (FINISH), so the ready index serves this.
FINISHED = (
    "SELECT operation_id, type, status, payload, results, errors, last_updated FROM operation "
    "WHERE status IN ('completed', 'failed') AND not_before >= ? AND type IN ({types}) "
    "ORDER BY not_before, operation_id LIMIT ?"
).format(types=", ".join(f"'{t}'" for t in EVENTFUL_JOBS))
PURGE = (
    "DELETE FROM operation "
    "WHERE type = ? AND status IN ('completed', 'failed') AND last_updated < ?"
)


def enqueue(
    id: str, kind: str, payload: dict, max_attempts: int, now: datetime, singleton: bool
) -> Op:
    """Add a job; for a singleton kind, the pending or running one's id when there is one;
    None when a job with this ``id`` exists (ids chosen by meaning, e.g. a Transaction UID's)."""
    micros = to_micros(now)
    row = yield one(
        INSERT,
        id,
        kind,
        micros,
        micros,
        json.dumps(payload),
        max_attempts,
        micros,
        kind if singleton else None,
    )
    if row is not None:
        return row[0]
    if not singleton:
        return None
    return (yield one(SINGLETON, kind))[0]


def claim(d: Dialect, owner: str, now: datetime, lease_until: datetime) -> Op:
    micros = to_micros(now)
    ready = yield one(READY.format(skip_locked=d.skip_locked), micros, micros)
    if ready is None:
        return None
    row = yield one(CLAIM, owner, to_micros(lease_until), micros, ready[0])
    return operation(row)


def renew(
    id: str, owner: str, now: datetime, lease_until: datetime, percent: int, checkpoint: Any
) -> Op:
    """Keep the lease (and record progress); False when the lease was lost to another worker."""
    row = yield one(
        RENEW, to_micros(lease_until), percent, _json(checkpoint), to_micros(now), id, owner
    )
    return row is not None


def finish(
    id: str,
    owner: str,
    now: datetime,
    results: dict | None,
    error: str | None,
    retry_at: datetime | None,
) -> Op:
    """Complete the job (no error), schedule it again (error and ``retry_at``) or fail it; a
    finished export, bulk update or reindex writes its OperationFinished event for the
    subscriptions asking for it, in the same transaction (no event without the state)."""
    held = yield one(HELD, id, owner)
    if held is None:
        return False
    errors = json.loads(held[0]) + ([error] if error else [])
    if error is None:
        status, percent = OperationStatus.COMPLETED, 100
    elif retry_at is not None:
        status, percent = OperationStatus.NOT_STARTED, None
    else:
        status, percent = OperationStatus.FAILED, None
    yield run(
        FINISH,
        str(status),
        percent,
        _json(results),
        json.dumps(errors),
        to_micros(retry_at or now),
        to_micros(now),
        status != OperationStatus.NOT_STARTED,
        id,
    )
    if status != OperationStatus.NOT_STARTED and held["type"] in EVENTFUL_JOBS:
        partition, data = _finished(
            id, held["type"], status, json.loads(held["payload"]), results, errors
        )
        yield run(
            FAN_OUT,
            f"{id}.finished",
            OPERATION_FINISHED,
            partition,
            to_micros(now),
            json.dumps(data),
            f'%"{OPERATION_FINISHED}"%',
        )
    return True


def _finished(
    id: str, kind: str, status: OperationStatus, payload: dict, results: Any, errors: list
) -> tuple[str | None, dict]:
    """The partition (None: a server-wide reindex) and the data of a finished operation's
    OperationFinished event."""
    partition = payload.get("partition") if kind != JobType.REINDEX else None
    return partition, {
        "operationId": id,
        "operationType": kind,
        "status": str(status),
        "partitionName": partition,
        "percentComplete": 100 if status == OperationStatus.COMPLETED else None,
        "results": results,
        "errors": errors,
    }


def finished_since(since: datetime, limit: int) -> Op:
    """(event id, partition, finish time, data) of the exports, bulk updates and reindexes
    that finished (completed or failed) at ``since`` or later, oldest first, at most
    ``limit``: their OperationFinished events, as ``finish`` writes them for subscriptions."""
    found = yield rows(FINISHED, to_micros(since), limit)
    out = []
    for r in found:
        partition, data = _finished(
            r["operation_id"],
            r["type"],
            OperationStatus(r["status"]),
            json.loads(r["payload"]),
            json.loads(r["results"]) if r["results"] else None,
            json.loads(r["errors"]),
        )
        out.append(
            (f"{r['operation_id']}.finished", partition, from_micros(r["last_updated"]), data)
        )
    return out


def get(id: str) -> Op:
    row = yield one(GET, id)
    return operation(row) if row is not None else None


def queue(now: datetime) -> Op:
    """Per type of pending job: (type, ready, when the oldest ready one became due (None:
    none is), running)."""
    micros = to_micros(now)
    found = yield rows(QUEUE, *(micros,) * 5)
    return [
        (r["type"], r["ready"], from_micros(r["due"]) if r["due"] is not None else None, r["held"])
        for r in found
    ]


def purge(kind: str, before: datetime) -> Op:
    yield run(PURGE, kind, to_micros(before))


def operation(row) -> Operation:
    return Operation(
        id=row["operation_id"],
        type=row["type"],
        status=OperationStatus(row["status"]),
        percent_complete=row["percent_complete"],
        created=from_micros(row["created"]),
        last_updated=from_micros(row["last_updated"]),
        payload=json.loads(row["payload"]),
        checkpoint=json.loads(row["checkpoint"]) if row["checkpoint"] else None,
        results=json.loads(row["results"]) if row["results"] else None,
        errors=json.loads(row["errors"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
    )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
