"""dicomhub against Orthanc, in one run, on the same data and the same client.

    ./run bench [--profile default|smoke] [--search-instances N] [--rounds N]
                [--baseline TREE] [--out FILE.json]

Generates the data set, then for each server in turn (dicomhub on the embedded default, the
dicomhub of a ``--baseline`` source tree, dicomhub on another index when ``--index-url`` names
one, Orthanc with DICOMweb) starts it on a free loopback port, runs every workload, verifies
every answer and stops it; ``--rounds N`` does it all N times (see bench/rounds.py). Prints a
Markdown table (also written next to the JSON) with dicomhub/Orthanc ratios, the machine's
ceilings and the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import native, report, rounds, webhooks, workloads
from bench.client import Client, check
from bench.servers import Dicomhub, Loopback, Orthanc, Server, fresh_database, orthanc_available


def page_cache(workdir: Path, files: dict[str, bytes], repeat: int = 3) -> dict:
    """Reading the reference study's files back from the page cache: the disk-side ceiling."""
    folder = workdir / "page-cache"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, body in files.items():
        path = folder / f"{uid}.dcm"
        path.write_bytes(body)
        paths.append(path)
    total = sum(len(b) for b in files.values())
    times = []
    for _ in range(repeat + 1):  # the first pass warms the cache
        start = time.perf_counter()
        for path in paths:
            check(len(path.read_bytes()) > 0, "empty file")
        times.append(time.perf_counter() - start)
    shutil.rmtree(folder)
    return {"mb_per_s": round(total / statistics.median(times[1:]) / 1e6, 1)}


def loopback(workdir: Path, data: workloads.Data, profile: workloads.Profile) -> dict:
    """A raw HTTP transfer of the study's size over loopback (the same request: path and Accept
    header), read by each of the benchmark's clients: the ceilings for retrieval."""
    size = sum(len(b) for b in data.reference_files.values())
    request = workloads.study_request(data)
    with Loopback(workdir / "loopback", size) as server:
        client = Client(server.base_url)
        timing, responses = client.run([request] * (profile.retrieve_repeat + 2))
        check(all(len(r.body) == size for r in responses), "loopback: short body")
        out = {"loopback_http": timing.summary("transfers")}
        if native.curl_available() is None:
            timing, first = native.fetch(client, request, profile.native_repeat)
            check(len(first.body) == size, "loopback (curl): short body")
            out["loopback_http_native"] = timing.summary("transfers")
    return out


def measure(server: Server, data: workloads.Data, chosen: list) -> dict:
    client = Client(server.base_url, server.cpu_seconds)
    data.stored = []
    out: list[dict] = []
    delivered = None
    subscriptions = getattr(server, "subscriptions", 0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(server)
        if subscriptions:
            subscribers = stack.enter_context(webhooks.Subscribers(server, subscriptions))
        for workload in chosen:
            start = time.perf_counter()
            out += workload(client, data)
            print(
                f"  {server.name}: {workload.__name__} in {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
        rss = server.peak_rss_mb()
        if subscriptions:
            delivered = subscribers.summary()
            print("  " + webhooks.line(server.name, delivered), file=sys.stderr)
    result = {"workloads": out, "peak_rss_mb": rss}
    if delivered is not None:
        result["webhooks"] = delivered
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(workloads.PROFILES), default="default")
    parser.add_argument("--search-instances", type=int, help="small instances for search volume")
    parser.add_argument(
        "--index-url",
        action="append",
        default=[],
        help="also run dicomhub on this index (repeatable), e.g. postgresql://...",
    )
    parser.add_argument("--no-orthanc", action="store_true", help="measure dicomhub alone")
    parser.add_argument(
        "--workers",
        type=int,
        help="dicomhub server processes (default: what `dicomhub serve` chooses by itself)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[w.__name__ for w in workloads.WORKLOADS],
        help="run only these workloads (repeatable; searches and reads load their data first)",
    )
    parser.add_argument(
        "--subscriptions",
        type=int,
        default=0,
        metavar="N",
        help="also measure each dicomhub with N webhook subscriptions made before the workloads, "
        "beside it without: N-1 to a live receiver, one to a dead endpoint (the report says what "
        "was delivered)",
    )
    parser.add_argument(
        "--data-partitions",
        action="store_true",
        help="run dicomhub with --data-partitions true, the workloads in partition 'bench' "
        "(/v2/partitions/bench/...; Orthanc unchanged)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="measure every server N times, in turn, each time fresh; each result is the median "
        "(with the rounds' range)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also measure the dicomhub of this source tree (e.g. a git worktree of the commit "
        "before a change), beside each dicomhub (on the same kind of index), in the same rounds",
    )
    parser.add_argument("--workdir", help="where servers keep their data (default: a temp dir)")
    parser.add_argument("--out", default="bench-results/latest.json")
    args = parser.parse_args(argv)

    profile = workloads.PROFILES[args.profile]
    if args.search_instances is not None:
        profile = dataclasses.replace(profile, search_instances=args.search_instances)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dicomhub-bench-"))
    data = workloads.Data(profile)
    start = time.perf_counter()
    reference = data.reference_files
    print(f"data set ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    if args.subscriptions < 0:
        parser.error("--subscriptions: a number of subscriptions, 0 or more")
    if args.rounds < 1:
        parser.error("--rounds: 1 or more")
    if args.baseline is not None and not (args.baseline / "src" / "dicomhub").is_dir():
        parser.error(f"--baseline: {args.baseline} is not a dicomhub source tree")
    extra = [] if args.workers is None else ["--workers", str(args.workers)]
    partition = "bench" if args.data_partitions else None
    skipped = {}
    why = "--no-orthanc" if args.no_orthanc else orthanc_available()
    if why:
        skipped["Orthanc"] = why

    def servers(round: int, stack: contextlib.ExitStack) -> list[Server]:
        """The servers of one round, each with data (a database) of its own: dicomhub on each
        index, beside it the baseline's on the same kind of index, each also with
        subscriptions when asked, then Orthanc."""
        at = workdir / f"round-{round}"
        out: list[Server] = []
        for i, url in enumerate([None, *args.index_url]):
            for source in [None] if args.baseline is None else [None, args.baseline]:
                for n in sorted({0, args.subscriptions}):
                    fresh = url and stack.enter_context(fresh_database(url))
                    name = f"{i}-{'baseline' if source else 'dicomhub'}-{n}"
                    out.append(Dicomhub(at / name, fresh, extra, partition, source, n))
        out += [] if why else [Orthanc(at / "orthanc")]
        # every other round in the opposite order: a server measured after another finds the
        # memory the other used (and freed) already backed by the host, cheaper to write into
        return out if round % 2 == 0 else out[::-1]

    if native.curl_available():
        skipped["curl"] = f"{native.curl_available()}: no native-client measurements"

    results = {
        "machine": report.machine(),
        "profile": {
            "name": args.profile,
            "workers": args.workers,
            "subscriptions": args.subscriptions,
            "data_partitions": args.data_partitions,
            "rounds": args.rounds,
            "baseline": None if args.baseline is None else str(args.baseline),
            **dataclasses.asdict(profile),
        },
        "ceilings": {
            "page_cache": page_cache(workdir, reference),
            **loopback(workdir, data, profile),
        },
        "servers": {},
        "skipped": skipped,
    }
    chosen = workloads.WORKLOADS
    if args.only:
        wanted = set(args.only) | ({"load"} if set(args.only) - {"stow"} else set())
        chosen = [w for w in workloads.WORKLOADS if w.__name__ in wanted]
    measured: dict[str, list[dict]] = {}
    try:
        for round in range(args.rounds):
            with contextlib.ExitStack() as stack:
                for server in servers(round, stack):
                    result = measure(server, data, chosen)
                    measured.setdefault(server.name, []).append(result)
                    if not args.workdir:  # the disk, for the next
                        shutil.rmtree(server.workdir, ignore_errors=True)
        results["servers"] = {name: rounds.median_result(m) for name, m in measured.items()}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = report.evaluate(results)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    table = report.markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
