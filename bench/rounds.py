"""``--rounds N``: every server measured N times, in turn (round 1: each server once, fresh;
round 2: each again, in the opposite order; ...), so that a machine's swings between runs, and
what a server leaves to the next (memory the host has already backed), fall on every server
alike.
Each result is the median of its rounds, with the rounds' own values of its metric and its
server CPU kept beside it (``<field>_rounds``)."""

from __future__ import annotations

import statistics

SPREAD = ("server_cpu_ms_per_unit", "server_cpu_ms_per_mb")  # kept per round, with the metric


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_result(measured: list[dict]) -> dict:
    """One server's measurements (``run.measure``'s, one per round) as one: each number the
    median of its rounds."""
    if len(measured) == 1:
        return measured[0]
    first = measured[0]
    workloads = []
    for at, result in enumerate(first["workloads"]):
        rounds = [m["workloads"][at] for m in measured]
        merged = dict(result)
        for field, value in result.items():
            values = [r.get(field) for r in rounds]
            if not _number(value) or not all(_number(v) for v in values):
                continue
            merged[field] = round(statistics.median(values), 3)
            if field == result["metric"] or field in SPREAD:
                merged[f"{field}_rounds"] = values
        workloads.append(merged)
    out = {**first, "workloads": workloads, "rounds": len(measured)}
    out["peak_rss_mb"] = max(m["peak_rss_mb"] for m in measured)
    return out


def spread(result: dict) -> str:
    """' [low-high]' of the metric over the rounds ('' for one round)."""
    values = result.get(f"{result['metric']}_rounds")
    return f" [{min(values):g}-{max(values):g}]" if values else ""
