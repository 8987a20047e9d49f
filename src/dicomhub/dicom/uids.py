"""UID rules (PS3.5 section 9.1): digits and dots, at most 64 characters."""

import re

from dicomhub.errors import InvalidRequest

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # whole value (fullmatch: no trailing newline)
MAX_UID_LENGTH = 64


def clean_uid(value: object) -> str:
    """A UID value as stored in a file, without its trailing NUL/space padding."""
    return str(value or "").rstrip("\x00 ").strip()


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def require_uid(value: str, name: str) -> str:
    """Validate a UID taken from a URL or query; raises InvalidRequest naming it."""
    if not is_valid_uid(value):
        raise InvalidRequest(
            f"{name} {value[:80]!r} is not a valid UID "
            f"(digits and dots, at most {MAX_UID_LENGTH} characters)"
        )
    return value
