"""The clock, and times as stored in the index: integer microseconds since the Unix epoch, UTC."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def isoformat(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as the JSON APIs write times."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
