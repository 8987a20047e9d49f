"""The clock, and times as stored in the index: integer microseconds since the Unix epoch, UTC.

Everything that compares times (leases, delays, token lifetimes) reads them here, so that tests
can move this process's clock forward (``advance``) instead of sleeping past them.
"""

import time
from datetime import UTC, datetime, timedelta

_offset = 0.0  # seconds this process's clock runs ahead (tests only; 0 in the server)


def utcnow() -> datetime:
    now = datetime.now(UTC)
    return now + timedelta(seconds=_offset) if _offset else now


def monotonic() -> float:
    return time.monotonic() + _offset


def advance(seconds: float) -> None:
    """Move this process's clock forward (tests: a lease, delay or lifetime passes at once)."""
    global _offset
    _offset += seconds


def reset() -> None:
    global _offset
    _offset = 0.0


def to_micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def isoformat(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as the JSON APIs write times."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
