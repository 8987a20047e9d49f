"""What differs between the SQL engines the index runs on. Everything else is one SQL text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    wildcard: str  # a clause matching column {column} against one pattern parameter
    distinct_list: str  # comma-separated distinct values of {column} (an aggregate)
    partition_hint: str  # prefix that keeps the planner off a scan of the partition column
    nulls_first: str  # added to ORDER BY ... ASC so that NULLs sort first, as on SQLite
    nulls_last: str  # and to ... DESC, so that they sort last
    # Run before reading the change feed: numbers the entries committed since (PostgreSQL, where
    # writes run side by side and write their entries unnumbered). None where writes are serial
    # and an entry is numbered as it is written, in commit order (SQLite).
    number_changes: str | None
    skip_locked: str  # added to the SELECT that picks a job, so that workers never wait on one
    for_update: str  # added to a SELECT that locks the rows it reads until the end

    def pattern(self, glob: str) -> str:
        """A query's GLOB pattern (``*``, ``?``, ``[[]`` for a literal ``[``) in this engine's
        wildcard syntax."""
        return glob if self.name == "sqlite" else glob_to_like(glob)


def glob_to_like(glob: str) -> str:
    out = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("[[]", i):
            out.append("[")
            i += 3
            continue
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
        i += 1
    return "".join(out)


SQLITE = Dialect(
    name="sqlite",
    wildcard="{column} GLOB ?",
    distinct_list="group_concat(DISTINCT {column})",
    partition_hint="+",
    nulls_first="",
    nulls_last="",
    number_changes=None,
    skip_locked="",  # one writer at a time: claims are serial anyway
    for_update="",
)
POSTGRES = Dialect(
    name="postgresql",
    wildcard="{column} LIKE ?",
    distinct_list="string_agg(DISTINCT {column}, ',')",
    partition_hint="",
    nulls_first=" NULLS FIRST",
    nulls_last=" NULLS LAST",
    number_changes="SELECT dicomhub_number_changes()",  # migration 0006
    skip_locked=" FOR UPDATE SKIP LOCKED",
    for_update=" FOR UPDATE",
)
