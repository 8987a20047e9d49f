"""The audit log in the index (operations of ``instance_ops``'s kind, SQL kept as data)."""

from __future__ import annotations

import json
from datetime import datetime

from dicomhub.clock import from_micros, to_micros
from dicomhub.model import AuditEntry, AuditQuery
from dicomhub.storage.statements import Op, many, rows, run

COLUMNS = (
    "at, protocol, method, path, status, principal, client, address, route, action, study_uid, "
    "series_uid, sop_uid, bytes_in, bytes_out, duration_ms, detail, request_id"
)
ADD = f"INSERT INTO audit_log ({COLUMNS}) VALUES ({', '.join('?' * 18)})"
PURGE = "DELETE FROM audit_log WHERE at < ?"
FILTERS = (  # AuditQuery field, condition
    ("since", "at >= ?"),
    ("until", "at < ?"),
    ("principal", "principal = ?"),
    ("action", "action = ?"),
    ("study", "study_uid = ?"),
    ("status", "status = ?"),
    ("request_id", "request_id = ?"),
)


def add(entries: list[AuditEntry]) -> Op:
    yield many(ADD, [_row(e) for e in entries])


def _row(e: AuditEntry) -> tuple:
    return (
        to_micros(e.time),
        e.protocol,
        e.method,
        e.path,
        e.status,
        e.principal,
        e.client,
        e.address,
        e.route,
        e.action,
        e.study,
        e.series,
        e.instance,
        e.bytes_in,
        e.bytes_out,
        e.duration_ms,
        json.dumps(e.detail) if e.detail else None,
        e.request_id,
    )


def find(query: AuditQuery) -> Op:
    where, params = [], []
    for name, condition in FILTERS:
        value = getattr(query, name)
        if value is not None:
            where.append(condition)
            params.append(to_micros(value) if isinstance(value, datetime) else value)
    sql = f"SELECT entry_id, {COLUMNS} FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY entry_id LIMIT ? OFFSET ?"
    found = yield rows(sql, *params, query.limit, query.offset)
    return [
        AuditEntry(
            time=from_micros(r["at"]),
            protocol=r["protocol"],
            method=r["method"],
            path=r["path"],
            status=r["status"],
            principal=r["principal"],
            client=r["client"],
            address=r["address"],
            route=r["route"],
            action=r["action"],
            study=r["study_uid"],
            series=r["series_uid"],
            instance=r["sop_uid"],
            bytes_in=r["bytes_in"],
            bytes_out=r["bytes_out"],
            duration_ms=r["duration_ms"],
            detail=json.loads(r["detail"]) if r["detail"] else {},
            id=r["entry_id"],
            request_id=r["request_id"],
        )
        for r in found
    ]


def purge(before: datetime) -> Op:
    yield run(PURGE, to_micros(before))
