"""Statements as data: an index operation is a generator that yields ``Stmt``s and receives
each one's result, so one operation runs on any engine's driver (see instance_ops)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Stmt:
    sql: str
    params: Sequence[Any] = ()
    fetch: str = "none"  # none | one | all | many (params is a list of parameter tuples)


Op = Generator[Stmt, Any, Any]


def one(sql: str, *params: Any) -> Stmt:
    return Stmt(sql, params, "one")


def rows(sql: str, *params: Any) -> Stmt:
    return Stmt(sql, params, "all")


def run(sql: str, *params: Any) -> Stmt:
    return Stmt(sql, params)


def many(sql: str, params: list[Sequence[Any]]) -> Stmt:
    return Stmt(sql, params, "many")


def unsynced(factory):
    """Marks an operation factory whose write a power cut may undo at no cost but repeated work
    (webhook delivery's progress: events are delivered at least once anyway). Its transaction
    commits without waiting for the disk, so that delivery adds no flush to the writes ingest
    waits on: on SQLite when it holds such writes alone (synchronous NORMAL; beside other writes
    in a group commit it is synced with them), on PostgreSQL with synchronous_commit off."""
    factory.unsynced = True
    return factory


def single(stmt: Stmt) -> Op:
    """An operation of one statement."""
    return (yield stmt)


async def drive_async(execute, op: Op) -> Any:
    """Run ``op`` with an asynchronous ``execute(stmt) -> result``."""
    result = None
    try:
        while True:
            result = await execute(op.send(result))
    except StopIteration as stop:
        return stop.value


def drive(execute, op: Op) -> Any:
    """Run ``op`` with a synchronous ``execute(stmt) -> result``."""
    result = None
    try:
        while True:
            result = execute(op.send(result))
    except StopIteration as stop:
        return stop.value
