"""Versioned schema migrations, one folder of numbered SQL scripts per engine
(``sql/<engine>/NNNN_name.sql``), and each engine's declared schema (``sql/<engine>/schema.sql``:
what the migrations must build; a test checks they do).

The index records its version in ``schema_version``. ``dicomhub db upgrade`` applies what is
pending; ``serve`` does it at start unless told not to. All pending scripts run in one
transaction, so an upgrade is all or nothing.
"""

from __future__ import annotations

from importlib import resources

# Per engine (their numbers mean different things), the migrations after which search
# columns, level documents and counters are derived anew from the stored metadata (by the
# current code, once every script has run): SQLite's 0002_search added them; PostgreSQL's
# schema had them from its first migration.
REBUILDS_SEARCH = {"sqlite": {2}, "postgresql": set()}


def _folder(engine: str):
    return resources.files("dicomhub.storage") / "sql" / engine


def scripts(engine: str) -> list[tuple[int, str]]:
    """(number, SQL) of every migration of ``engine``, in order."""
    found = [
        (int(p.name.split("_", 1)[0]), p.read_text())
        for p in _folder(engine).iterdir()
        if p.name[:4].isdigit() and p.name.endswith(".sql")
    ]
    return sorted(found)


def latest(engine: str) -> int:
    return scripts(engine)[-1][0]


def declared_schema(engine: str) -> str:
    return (_folder(engine) / "schema.sql").read_text()


def needs_rebuild(current: int, engine: str) -> bool:
    return current > 0 and any(current < n <= latest(engine) for n in REBUILDS_SEARCH[engine])
