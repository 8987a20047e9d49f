"""How a setting is declared (a dataclass field with its help text; secrets apart) and how its
value is read from text (an environment variable or a flag). The fields themselves are the
settings object's (settings.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _secret(help: str) -> Any:
    """A secret: from its ``DICOMHUB_*`` variable or the file its ``<name>_file`` setting
    names, never from a flag (``ps`` shows flags to every user of the machine)."""
    return field(default="", metadata={"help": help, "secret": True})


def _secret_file(name: str) -> Any:
    return _setting(
        "",
        f"File holding {name} (trailing white space ignored), the alternative to "
        f"DICOMHUB_{name.upper()}.",
    )


def convert(f: dataclasses.Field, raw: str) -> Any:
    """A setting's value from text (environment variable or flag)."""
    kind = type(f.default)
    try:
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return kind(raw)
    except ValueError as exc:
        raise SystemExit(
            f"DICOMHUB_{f.name.upper()}: {raw!r} is not a valid {kind.__name__}"
        ) from exc
