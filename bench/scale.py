"""Scale mode: ingest small instances until the index holds ``--instances`` (1 million by
default; hours are fine), reporting the ingest rate of the first 10,000 and of every further 10%,
then the search latencies at that size. The curve must stay flat.

    ./run bench scale [--instances 1000000] [--out bench-results/scale.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import dataset as ds
from bench import report, workloads
from bench.client import Client
from bench.servers import Dicomhub

PER_STUDY = 10  # two series of five, as in the search volume of the comparison run


def windows(total: int) -> list[int]:
    """Instance counts at which a measurement window ends: 10,000, then every 10%."""
    marks = {min(10_000, total)} | {total * k // 10 for k in range(1, 11)}
    return sorted(m - m % PER_STUDY for m in marks if m >= PER_STUDY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--index-url", help="the index to fill (default: embedded SQLite)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="dicomhub server processes (default: one per core)",
    )
    parser.add_argument("--workdir", help="where the server keeps its data (default: temp)")
    parser.add_argument("--out", default="bench-results/scale.json")
    args = parser.parse_args(argv)

    profile = dataclasses.replace(workloads.PROFILES["default"], search_instances=args.instances)
    data = workloads.Data(profile)
    studies = data.search_studies
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dicomhub-scale-"))
    rows = []
    try:
        extra = ["--workers", str(args.workers)]
        with Dicomhub(workdir / "dicomhub", args.index_url, extra) as server:
            client = Client(server.base_url, server.cpu_seconds)
            done = 0
            for end in windows(len(studies) * PER_STUDY):
                chunk = studies[done // PER_STUDY : end // PER_STUDY]
                files = [f for st in chunk for f in ds.instances(st, profile.small_size)]
                timing = workloads.send_instances(client, files, 4, 50)
                data.stored += chunk
                done = end
                rows.append({"stored": done, **timing.summary("instances")})
                print(
                    f"  {done:>10,} instances: {rows[-1]['instances_per_s']:8.1f} inst/s, "
                    f"p95 {rows[-1]['p95_ms']:.0f} ms per 50",
                    file=sys.stderr,
                )
            searches = workloads.qido(client, data)
            rss = server.peak_rss_mb()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    flatness = rows[-1]["instances_per_s"] / rows[0]["instances_per_s"]
    results = {
        "machine": report.machine(),
        "instances": done,
        "workers": args.workers,
        "ingest": rows,
        "searches": searches,
        "peak_rss_mb": rss,
        "target": {
            "id": "ingest-flat",
            "minimum": 0.9,
            "value": round(flatness, 3),
            "met": flatness >= 0.9,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    lines = [
        "| instances stored | ingest inst/s | MB/s | p50 ms | p95 ms | p99 ms (per 50) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stored']:,} | {r['instances_per_s']} | {r['mb_per_s']} | {r['p50_ms']} "
        f"| {r['p95_ms']} | {r['p99_ms']} |"
        for r in rows
    ]
    lines += ["", "| search at the end | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |" for r in searches]
    lines += [
        "",
        f"Rate at {done:,} / rate at {rows[0]['stored']:,}: {flatness:.2f} "
        f"(target 0.9: {'met' if flatness >= 0.9 else 'NOT met'})",
    ]
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0
