"""Instructions per request: a measure of dicomhub's own work that this machine's swings do not
move. Throughput and CPU time here swing by 20-50% between runs of one commit, more than most
changes to a request's path; valgrind's callgrind counts the instructions executed instead, the
same for the same code and input whatever else the machine is doing.

    ./run bench instructions [--serve] [--requests 200] [--size 64] [--baseline TREE]
                             [--out FILE.json]

What runs is the real app in-process on the embedded default (SQLite file + blob folder, its
writer thread), driven by direct ASGI calls: no HTTP server, no sockets, so the count is the
app's work on a request (middlewares, parsing, describing, indexing, the answer), not uvicorn's
or the kernel's; the comparison run measures those. The requests are STOW-RS of one small
instance each (``--size`` x ``--size``, as the stow-small-4x1 row sends them), four at a time;
every answer must list the instance sent.

With ``--serve`` what is counted is ``dicomhub serve`` itself, at its default settings, every
process of it (the supervisor with its SQLite writer, the server processes with uvicorn),
sent the same requests over loopback by the bench's Python client (not counted), four at a
time: what the in-process count leaves out (HTTP parsing, the hand-off of each write to the
supervisor's writer) is in. Not counted: the kernel's work (callgrind sees user space only),
the process of background jobs, multiprocessing's resource tracker. Under valgrind the
timing differs from a real run's (how many stores share a commit), and serve's liveness
checks (every half second) add a little per second of the run, so two runs of one tree differ
more than in-process: a few percent. Its runs take two to three minutes each.

The requests are made first, outside the count, and read from one file. Each source tree (this
one, and ``--baseline TREE`` beside it) is run twice under callgrind, once storing
``--requests`` instances after a warm-up and once three times as many; the difference of the two
counts over the difference in requests is the count per request, every thread of the process
included, start-up and imports cancelled out. Runs take about a minute each (valgrind
runs Python about 50 times slower), two at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from bench import dataset as ds
from bench.client import Client, Request, check, multipart
from bench.servers import Dicomhub

ROOT = Path(__file__).resolve().parents[1]
WARM = 40  # requests before the measured ones, in both runs: caches, the first pages of SQLite
AT_ONCE = 4
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
_REFS_FILE = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)  # a callgrind.out file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="rows = columns of the images")
    parser.add_argument("--baseline", help="another source tree, measured beside this one")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="count `dicomhub serve` at its defaults (every process of it) over loopback, "
        "not the app in-process",
    )
    parser.add_argument("--out", default="bench-results/instructions.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one run, under valgrind
    parser.add_argument("--instances", help=argparse.SUPPRESS)  # the child's instances
    args = parser.parse_args(argv)
    if args.child is not None:
        with open(args.instances, "rb") as f:
            requests = pickle.load(f)  # all of them in both runs: the same work, cancelled out
        uvloop.run(_send(requests[: WARM + args.child]))  # the loop serve runs its processes on
        return 0
    trees = {"dicomhub": ROOT} | (
        {"dicomhub (baseline)": Path(args.baseline)} if args.baseline else {}
    )
    runs = [(name, n) for name in trees for n in (args.requests, 3 * args.requests)]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        files = Path(tmp) / "requests"  # made here, so that the count is the server's work only
        files.write_bytes(pickle.dumps(_requests(WARM + 3 * args.requests, args.size)))
        count = _count_served if args.serve else _count
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            counts = list(pool.map(lambda run: count(trees[run[0]], run[1], files), runs))
    # tree -> process -> instructions per request
    parts = {
        name: {
            process: (counts[2 * i + 1][process] - counts[2 * i][process]) / (2 * args.requests)
            for process in counts[2 * i]
        }
        for i, name in enumerate(trees)
    }
    per = {name: sum(by_process.values()) for name, by_process in parts.items()}
    workload = f"STOW-RS, one {args.size}x{args.size} instance per request, {AT_ONCE} at a time"
    where = "`dicomhub serve`, every process" if args.serve else "the app in-process"
    results = {
        "workload": workload,
        "counted": where,
        "requests": args.requests,
        "trees": {name: str(tree) for name, tree in trees.items()},
        "instructions_per_request": {name: round(v) for name, v in per.items()},
        "by_process": {
            name: {process: round(v) for process, v in by_process.items()}
            for name, by_process in parts.items()
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    lines = [f"Instructions per request: {workload} (callgrind, {where})", ""]
    processes = list(parts["dicomhub"])
    lines += ["| tree | instructions per request | " + " | ".join(processes) + " |"]
    lines += ["|---" * (2 + len(processes)) + "|"]
    lines += [
        f"| {name} ({trees[name]}) | {v:,.0f} | "
        + " | ".join(f"{parts[name][p]:,.0f}" for p in processes)
        + " |"
        for name, v in per.items()
    ]
    if args.baseline:
        ratio = per["dicomhub"] / per["dicomhub (baseline)"]
        lines += ["", f"dicomhub / baseline: {ratio:.3f}"]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def _count(tree: Path, requests: int, instances: Path) -> dict[str, int]:
    """Instructions callgrind counted in one run of ``requests`` requests on ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(ROOT)])}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    command += ["-m", "bench.instructions", "--child", str(requests), "--instances", str(instances)]
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    check(run.returncode == 0, lambda: f"{tree}: the run failed: {run.stderr[-2000:]}")
    found = _REFS.search(run.stderr)
    check(found is not None, lambda: f"{tree}: no instruction count: {run.stderr[-500:]}")
    return {"app": int(found.group(1).replace(",", ""))}


def _count_served(tree: Path, requests: int, instances: Path) -> dict[str, int]:
    """Instructions callgrind counted in every process of one ``dicomhub serve`` (``tree``'s
    code, its default settings, a fresh data folder) from start to stop, sent ``requests``
    requests over loopback by the bench's client after the warm-up. Not counted: the process
    of background jobs (no request reaches it) and multiprocessing's resource tracker. The
    liveness check's timeout is raised (valgrind is slow); its checks, every half second, are
    counted, so a run's length adds a little to it."""
    with open(instances, "rb") as f:
        sent = pickle.load(f)[: WARM + requests]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        with _Valgrind(Path(tmp), tree) as server:
            _, answers = Client(server.base_url).run([r for _, r in sent], AT_ONCE)
        for (uid, _), answer in zip(sent, answers, strict=True):
            check(answer.status == 200, lambda a=answer: f"STOW: HTTP {a.status}")
            check(uid.encode() in answer.body, "STOW answer does not list the sent instance")
        counts = {"supervisor": 0, "server processes": 0}
        for output in Path(tmp).glob("callgrind.*"):
            text = output.read_text()
            found = _REFS_FILE.search(text)
            check(found is not None, f"{tree}: a process left no count ({output.name})")
            supervisor = re.search(r"^cmd:.* serve ", text, re.MULTILINE) is not None
            counts["supervisor" if supervisor else "server processes"] += int(found.group(1))
        check(all(counts.values()), f"{tree}: no count of some processes: {counts}")
        return counts


class _Valgrind(Dicomhub):
    """``dicomhub serve`` of ``tree`` under callgrind, every process of it traced but the
    background jobs' and multiprocessing's resource tracker; each writes its count into the
    work folder when it ends."""

    start_timeout = stop_timeout = 600  # valgrind runs Python about 50 times slower

    def __init__(self, workdir: Path, tree: Path):
        super().__init__(workdir, source=tree)

    def environment(self) -> dict[str, str]:
        # uvicorn's liveness check (5 s) would kill the slowed server processes; the check is
        # not on a request's path
        return {**super().environment(), "DICOMHUB_WORKER_HEALTHCHECK_TIMEOUT": "600"}

    def command(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.workdir}/callgrind.%p",
            "--trace-children=yes",
            "--trace-children-skip-by-arg=worker,*resource_tracker*",
            *super().command(),
        ]


def _requests(count: int, size: int) -> list[tuple[str, Request]]:
    """``count`` STOW requests of one instance each, with the SOP Instance UID each holds."""
    studies = [ds.study(ds.GROUPS["stow"], i, (20, 20)) for i in range(count // 40 + 1)]
    files = [f for st in studies for f in ds.instances(st, size)][:count]
    return [(uid, multipart([body])) for uid, body in files]


async def _send(requests: list[tuple[str, Request]]) -> None:
    """The requests to the app, ``AT_ONCE`` at a time."""
    from dicomhub.cli import build_archive  # the tree's own code, from PYTHONPATH
    from dicomhub.settings import Settings
    from dicomhub.web.app import create_app

    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        settings = Settings(data_dir=str(Path(tmp) / "data"))
        app = create_app(settings, build_archive(settings))
        async with app.router.lifespan_context(app):  # start-up and shutdown, as a server runs
            for i in range(0, len(requests), AT_ONCE):
                batch = requests[i : i + AT_ONCE]
                await asyncio.gather(*(_store(app, uid, request) for uid, request in batch))


async def _store(app, uid: str, request: Request) -> None:
    messages = [{"type": "http.request", "body": request.body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    headers += [(b"host", b"127.0.0.1:8080"), (b"content-length", b"%d" % len(request.body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/studies",
        "raw_path": b"/v2/studies",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    await app(scope, receive, send)
    check(sent[0]["status"] == 200, lambda: f"STOW: HTTP {sent[0]['status']}")
    answer = b"".join(m.get("body", b"") for m in sent[1:])
    check(uid.encode() in answer, "STOW answer does not list the sent instance")


if __name__ == "__main__":
    sys.exit(main())
