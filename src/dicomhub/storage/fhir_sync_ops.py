"""FHIR sync state in the index (operations of ``instance_ops``'s kind, SQL kept as data).

One row per FHIR server: the change-feed sequence synced up to, and a lease so that one node at a
time syncs into it (another takes over when the holder stops renewing). Entries the FHIR server
refused for good are kept with its answer.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dicomhub.clock import from_micros, to_micros
from dicomhub.model import SyncFailure, SyncState
from dicomhub.storage.statements import Op, one, rows, run

INIT = (
    "INSERT INTO fhir_sync (target, sequence, synced, updated) VALUES (?, ?, 0, ?) "
    "ON CONFLICT DO NOTHING"
)
CLAIM = (
    "UPDATE fhir_sync SET lease_owner = ?, lease_expires = ? WHERE target = ? "
    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires < ?) RETURNING sequence"
)
ADVANCE = (
    "UPDATE fhir_sync SET sequence = ?, synced = synced + ?, updated = ?, lease_expires = ? "
    "WHERE target = ? AND lease_owner = ? RETURNING sequence"
)
RELEASE = (
    "UPDATE fhir_sync SET lease_owner = NULL, lease_expires = NULL "
    "WHERE target = ? AND lease_owner = ?"
)
STATE = (
    "SELECT sequence, synced, updated, lease_owner, lease_expires FROM fhir_sync WHERE target = ?"
)
FAIL = (
    "INSERT INTO fhir_failure (target, sequence, study_uid, error, outcome, at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
FAILURES = (
    "SELECT failure_id, sequence, study_uid, error, outcome, at FROM fhir_failure "
    "WHERE target = ? ORDER BY failure_id DESC LIMIT ? OFFSET ?"
)
COUNT_FAILURES = "SELECT count(*) FROM fhir_failure WHERE target = ?"


def claim(target: str, owner: str, now: datetime, lease_until: datetime, start: int) -> Op:
    """Take (or keep) the sync into ``target``; its sequence, or None when another node holds
    it. A target seen for the first time starts after ``start``."""
    yield run(INIT, target, start, to_micros(now))
    row = yield one(CLAIM, owner, to_micros(lease_until), target, owner, to_micros(now))
    return None if row is None else row[0]


def advance(
    target: str, owner: str, sequence: int, count: int, now: datetime, lease_until: datetime
) -> Op:
    """Record progress (and keep the lease); False when the lease was lost to another node."""
    row = yield one(ADVANCE, sequence, count, to_micros(now), to_micros(lease_until), target, owner)
    return row is not None


def release(target: str, owner: str) -> Op:
    yield run(RELEASE, target, owner)


def fail(
    target: str,
    sequence: int,
    study: str,
    error: str,
    outcome: dict[str, Any] | None,
    now: datetime,
) -> Op:
    yield run(FAIL, target, sequence, study, error, _json(outcome), to_micros(now))


def state(target: str) -> Op:
    row = yield one(STATE, target)
    count = (yield one(COUNT_FAILURES, target))[0]
    if row is None:
        return SyncState(0, 0, None, None, count)
    return SyncState(
        row["sequence"], row["synced"], from_micros(row["updated"]), row["lease_owner"], count
    )


def failures(target: str, offset: int, limit: int) -> Op:
    found = yield rows(FAILURES, target, limit, offset)
    return [
        SyncFailure(
            r["failure_id"],
            r["sequence"],
            r["study_uid"],
            r["error"],
            json.loads(r["outcome"]) if r["outcome"] else None,
            from_micros(r["at"]),
        )
        for r in found
    ]


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)
