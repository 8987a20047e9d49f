"""Results: machine details, the comparison table (dicomhub / Orthanc ratios, dicomhub / ceiling
fractions) and the targets of issues 4 and 19, as Markdown and JSON."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys

from bench import rounds, webhooks
from dicomhub import __version__

# (result id, what is compared, minimum) -- "advantage" is how many times better dicomhub is than
# Orthanc on the result's metric; "ceiling" the fraction of a machine ceiling dicomhub reaches
# (the loopback transfer read by the same client); "cpu" how many times less server CPU per MB
# (retrieval) or per instance (STOW) dicomhub spends than Orthanc; "same" the ratio of a frame
# of the multi-frame instance to that of a single-frame one.
TARGETS = [
    # issue 19: ingest and whole-study retrieval (dicomhub at its default settings)
    ("ingest-small", "advantage", 1.5),
    ("ingest-small", "cpu", 1.0),
    ("stow-small-4x1", "advantage", 1.5),
    ("stow-small-4x1", "cpu", 1.0),
    ("stow-1x1", "advantage", 1.2),
    ("stow-4x1", "advantage", 1.5),
    ("stow-4x1", "cpu", 1.0),
    ("stow-4x20", "advantage", 1.5),
    ("stow-4x20", "cpu", 1.0),
    # the same STOW targets measured with curl, a second client beside the Python one
    ("stow-small-4x1-native", "advantage", 1.5),
    ("stow-small-4x1-native", "cpu", 1.0),
    ("stow-1x1-native", "advantage", 1.2),
    ("stow-4x1-native", "advantage", 1.5),
    ("stow-4x1-native", "cpu", 1.0),
    ("stow-4x20-native", "advantage", 1.5),
    ("stow-4x20-native", "cpu", 1.0),
    ("retrieve-study-native", "advantage", 1.2),
    ("retrieve-study-native", "ceiling", 0.6),
    ("retrieve-study-native", "cpu", 1.0),
    # issue 4, kept: no regression
    ("qido-patient-id", "advantage", 5.0),
    ("qido-patient-name", "advantage", 5.0),
    ("qido-study-date", "advantage", 5.0),
    ("qido-modality", "advantage", 5.0),
    ("qido-series", "advantage", 5.0),
    ("qido-instances", "advantage", 5.0),
    ("metadata-series", "advantage", 10.0),
    ("metadata-study", "advantage", 10.0),
    ("retrieve-study", "ceiling", 0.8),
    ("frame-multi", "same", 1 / 1.2),
]
NATIVE = "-native"  # results measured with the native client (curl), against its own ceiling


def machine() -> dict:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as f:
                return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(key)), "?")
        except OSError:
            return "?"

    try:
        orthanc = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True)
        orthanc_version = orthanc.stdout.splitlines()[0]
    except (OSError, IndexError):
        orthanc_version = "not installed"
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "dicomhub": __version__,
        "orthanc": orthanc_version,
    }


def _value(result: dict) -> float:
    return result[result["metric"]]


def advantage(ours: dict, theirs: dict) -> float:
    a, b = _value(ours), _value(theirs)
    if ours["better"] == "higher":
        return a / b if b else float("inf")
    return b / a if a else float("inf")


def _cpu(result: dict) -> float | None:
    """Server CPU per MB (retrieval) or per unit of work (instances stored)."""
    mb = result.get("server_cpu_ms_per_mb")
    return mb if mb is not None else result.get("server_cpu_ms_per_unit")


def evaluate(results: dict) -> list[dict]:
    """Each target with dicomhub's measured value and whether it is met."""
    servers = results["servers"]
    ours = {r["id"]: r for r in servers.get("dicomhub", {}).get("workloads", [])}
    theirs = {r["id"]: r for r in servers.get("Orthanc", {}).get("workloads", [])}
    out = []
    for id_, kind, minimum in TARGETS:
        if id_ not in ours:
            continue
        if kind in ("advantage", "cpu"):
            if id_ not in theirs:
                continue
            if kind == "advantage":
                value = advantage(ours[id_], theirs[id_])
            else:
                mine, other = (_cpu(r) for r in (ours[id_], theirs[id_]))
                if mine is None or other is None:
                    continue
                value = other / mine if mine else float("inf")
        elif kind == "ceiling":
            ceiling = "loopback_http_native" if id_.endswith(NATIVE) else "loopback_http"
            if ceiling not in results["ceilings"]:
                continue
            value = _value(ours[id_]) / results["ceilings"][ceiling]["mb_per_s"]
        else:
            value = advantage(ours[id_], ours["frame-single"])
        out.append(
            {
                "id": id_,
                "kind": kind,
                "minimum": round(minimum, 3),
                "value": round(value, 3),
                "met": value >= minimum,
            }
        )
    return out


def _fmt(result: dict | None) -> str:
    if result is None:
        return "-"
    unit = {"instances_per_s": "inst/s", "mb_per_s": "MB/s"}.get(result["metric"], "ms")
    notes = [f"{result['mb_per_s']} MB/s"] if result["metric"] == "instances_per_s" else []
    cpu = result.get("server_cpu_ms_per_unit")
    if result.get("server_cpu_ms_per_mb") is not None:
        notes.append(f"{result['server_cpu_ms_per_mb']:g} ms CPU per MB")
    elif cpu is not None:
        notes.append(f"{cpu:g} ms CPU each")
    tail = f" ({'; '.join(notes)})" if notes else ""
    return f"{result[result['metric']]:g}{rounds.spread(result)} {unit}{tail}"


def markdown(results: dict) -> str:
    names = list(results["servers"])
    theirs = results["servers"].get("Orthanc", {}).get("workloads", [])
    theirs = {r["id"]: r for r in theirs}
    lines = [
        "| workload | metric | " + " | ".join(names) + " | dicomhub vs Orthanc |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    rows = {}
    for name in names:
        for r in results["servers"][name]["workloads"]:
            rows.setdefault(r["id"], {})[name] = r
    for id_, by_server in rows.items():
        any_result = next(iter(by_server.values()))
        ours = by_server.get("dicomhub")
        ratio = f"{advantage(ours, theirs[id_]):.2f}x" if ours and id_ in theirs else "-"
        lines.append(
            f"| {any_result['label']} | {any_result['metric'].replace('_', ' ')} | "
            + " | ".join(_fmt(by_server.get(n)) for n in names)
            + f" | {ratio} |"
        )
    c = results["ceilings"]
    native = c.get("loopback_http_native")
    native = f", {native['mb_per_s']:g} MB/s read by curl" if native else ""
    workers = results["profile"].get("workers")
    workers = "its default number of" if workers is None else workers
    n = results["profile"].get("rounds", 1)
    if n > 1:
        lines += [
            "",
            f"Medians of {n} rounds (each server measured fresh in every round), "
            "[the rounds' range].",
        ]
    lines += [
        "",
        f"Ceilings: page-cache read {c['page_cache']['mb_per_s']:g} MB/s, "
        f"loopback HTTP {c['loopback_http']['mb_per_s']:g} MB/s read by the Python client"
        f"{native}.",
        "Peak memory: "
        + ", ".join(f"{n} {s['peak_rss_mb']:g} MB" for n, s in results["servers"].items())
        + f" (dicomhub with {workers} worker process(es)).",
        "",
        "| target | kind | minimum | measured | met |",
        "|---|---|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['id']} | {t['kind']} | {t['minimum']} | {t['value']} | "
            f"{'yes' if t['met'] else 'NO'} |"
        )
    for name, server in results["servers"].items():
        if "webhooks" in server:
            lines += ["", webhooks.line(name, server["webhooks"])]
    if results["profile"].get("data_partitions"):
        lines += ["", "dicomhub ran with data partitions, the workloads in partition 'bench'."]
    skipped = results.get("skipped", {})
    lines += [""] + [f"Not run: {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines).rstrip() + "\n"
