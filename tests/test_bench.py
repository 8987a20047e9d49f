"""The benchmark runs end to end on a tiny data set: both servers answer every workload, and
every answer passed the benchmark's own verification (UIDs, counts, bytes). No timing is
asserted: the benchmark measures, this checks that it can."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from bench import dataset as ds
from bench.client import Client, Request
from bench.native import curl_available
from bench.report import NATIVE, TARGETS
from bench.servers import Dicomhub, fresh_database, orthanc_available
from bench.workloads import DICOM_JSON, send_instances

from tests.components import Unavailable
from tests.conftest import index_database, ran, unavailable

ROOT = Path(__file__).resolve().parents[1]


def bench(out: Path, *args: str, timeout: float = 300) -> dict:
    """Run ``python -m bench ARGS --out OUT``; the results it wrote."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_smoke_run_against_orthanc(tmp_path):
    if orthanc_available() is not None:
        unavailable(Unavailable("Orthanc", str(orthanc_available())))
    ran("Orthanc")
    out = tmp_path / "results.json"
    results = bench(out, "--profile", "smoke")
    servers = results["servers"]
    assert set(servers) == {"dicomhub", "Orthanc"}
    ids = {name: [r["id"] for r in s["workloads"]] for name, s in servers.items()}
    assert ids["dicomhub"] == ids["Orthanc"]
    assert {
        "ingest-small",
        "retrieve-study",
        "frame-single",
        "convert-jpegls",
        "render-frame",
    } <= set(ids["dicomhub"])
    native = curl_available() is None  # curl measures STOW and retrieval beside Python
    for id_ in ("retrieve-study-native", "stow-1x1-native", "stow-small-4x1-native"):
        assert (id_ in ids["dicomhub"]) == native
    for server in servers.values():
        for r in server["workloads"]:
            assert r[r["metric"]] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
            if r["id"].startswith("retrieve-study"):
                assert r["server_cpu_ms_per_mb"] is not None
    wanted = [t[0] for t in TARGETS if native or not t[0].endswith(NATIVE)]
    assert [t["id"] for t in results["targets"]] == wanted
    assert results["ceilings"]["loopback_http"]["mb_per_s"] > 0
    assert ("loopback_http_native" in results["ceilings"]) == native
    assert results["profile"]["workers"] is None  # dicomhub as `serve` starts by default
    assert "| workload |" in out.with_suffix(".md").read_text()


def test_rounds_with_a_baseline_and_postgresql(tmp_path):
    """``--rounds 2 --baseline TREE --index-url``: every dicomhub measured twice, each time
    fresh (a database of its own on PostgreSQL, dropped afterwards), medians with the rounds'
    values beside them."""
    out = tmp_path / "results.json"
    with index_database("postgresql") as url:
        before = set(asyncio.run(_bench_databases(url)))  # an interrupted run's may be there
        args = ["--profile", "smoke", "--only", "stow", "--no-orthanc", "--rounds", "2"]
        results = bench(out, *args, "--baseline", str(ROOT), "--index-url", url)
        left = set(asyncio.run(_bench_databases(url))) - before
    servers = results["servers"]
    assert set(servers) == {
        "dicomhub",
        "dicomhub (baseline)",
        "dicomhub (postgresql)",
        "dicomhub (postgresql) (baseline)",
    }
    for server in servers.values():
        assert server["rounds"] == 2
        for r in server["workloads"]:
            values = r[f"{r['metric']}_rounds"]
            assert len(values) == 2 and min(values) <= r[r["metric"]] <= max(values)
            assert len(r["server_cpu_ms_per_unit_rounds"]) == 2
    assert results["profile"]["rounds"] == 2 and results["profile"]["baseline"] == str(ROOT)
    assert "Medians of 2 rounds" in out.with_suffix(".md").read_text()
    assert left == set()  # the fresh databases this run made are gone


def test_subscriptions_measured_beside_none(tmp_path):
    """``--subscriptions 2``: dicomhub measured with two webhook subscriptions (one live
    receiver, one dead endpoint) beside the same dicomhub without; every event reaches the live
    receiver."""
    out = tmp_path / "results.json"
    args = ["--profile", "smoke", "--only", "stow", "--no-orthanc", "--subscriptions", "2"]
    servers = bench(out, *args)["servers"]
    assert set(servers) == {"dicomhub", "dicomhub (2 subscriptions)"}
    ids = {name: [r["id"] for r in s["workloads"]] for name, s in servers.items()}
    assert ids["dicomhub"] == ids["dicomhub (2 subscriptions)"]
    assert "webhooks" not in servers["dicomhub"]
    delivered = servers["dicomhub (2 subscriptions)"]["webhooks"]
    assert (delivered["live"], delivered["dead"]) == (1, 1) and delivered["live_caught_up"]
    assert delivered["changes"] > 0 and delivered["delivered_dead"] == 0
    assert delivered["delivered_live"] == delivered["received"] == delivered["changes"]
    assert "Webhooks (dicomhub (2 subscriptions))" in out.with_suffix(".md").read_text()


async def _bench_databases(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dicomhub_bench_%'"
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()


def test_scale_mode_smoke(tmp_path):
    out = tmp_path / "scale.json"
    results = bench(out, "scale", "--instances", "300")
    assert [r["stored"] for r in results["ingest"]][-1] == 300
    assert {r["id"] for r in results["searches"]} >= {"qido-patient-id", "qido-instances"}


def test_instructions_per_request_smoke(tmp_path):
    """``bench instructions``: each tree counted twice under callgrind (its answers verified
    in the run); the count per request is their difference, a positive number."""
    if shutil.which("valgrind") is None:
        unavailable(Unavailable("valgrind", "valgrind is not installed (Debian package valgrind)"))
    out = tmp_path / "instructions.json"
    results = bench(out, "instructions", "--requests", "3")
    counts = results["instructions_per_request"]
    assert list(counts) == ["dicomhub"] and counts["dicomhub"] > 0
    assert "| dicomhub (" in out.with_suffix(".md").read_text()


def test_instructions_of_serve_smoke(tmp_path):
    """``bench instructions --serve``: ``dicomhub serve`` at its defaults under callgrind, every
    process of it counted (its answers verified over loopback), twice; a positive difference."""
    if shutil.which("valgrind") is None:
        unavailable(Unavailable("valgrind", "valgrind is not installed (Debian package valgrind)"))
    out = tmp_path / "instructions.json"
    # valgrind starts each server in about a minute and a half, two at a time
    results = bench(out, "instructions", "--serve", "--requests", "3", timeout=1200)
    assert results["counted"] == "`dicomhub serve`, every process"
    assert results["instructions_per_request"]["dicomhub"] > 0


def test_search_plans_smoke(tmp_path):
    """bench/search.py writes an index straight into the schema: it must follow migrations."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.search",
            "--instances",
            "400",
            "--repeat",
            "1",
            "--db",
            str(tmp_path / "search.sqlite"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # exit status 1 means a keyed search scanned a table: on 400 instances the planner may
    # rightly prefer that, so only a crash fails here
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "| study list, no filter (OHIF first page) | 20 |" in run.stdout


def test_curl_stow_answers_are_verified(tmp_path):
    """STOW sent by curl is checked as the Python client's is: every answer must list exactly
    the sent instances, so an answer for other instances fails the run."""
    if curl_available() is not None:
        unavailable(Unavailable("curl", str(curl_available())))
    with Dicomhub(tmp_path / "data") as server:
        client = Client(server.base_url, server.cpu_seconds)
        study = ds.study(ds.GROUPS["stow"], 0, (12,))
        files = list(ds.instances(study, 16))
        timing = send_instances(client, files, 3, 2, curl=True)
        assert timing.units == 12 and len(timing.latencies) == 6 and timing.server_cpu > 0
        stored = client.run([Request("GET", f"/studies/{study.uid}/metadata", DICOM_JSON)])[1]
        assert len(json.loads(stored[0].body)) == 12
        other = list(ds.instances(ds.study(ds.GROUPS["stow"], 1, (1,)), 16))
        mislabelled = [(files[0][0], other[0][1])]  # stored fine, but not the instance sent
        with pytest.raises(AssertionError, match="does not list the sent instances"):
            send_instances(client, mislabelled, 1, 1, curl=True)


def test_server_cpu_includes_a_local_postgresql(tmp_path):
    """On a PostgreSQL of this machine, dicomhub's server CPU counts PostgreSQL's processes
    too (its backends answer the index's queries, as Orthanc's SQLite runs in Orthanc): what
    the stores cost PostgreSQL shows in the column; the embedded index adds nothing."""
    with index_database("postgresql") as url, fresh_database(url) as fresh:
        with Dicomhub(tmp_path / "pg", fresh) as server:
            before = server.database_cpu_seconds()
            client = Client(server.base_url, server.cpu_seconds)
            studies = [ds.study(ds.GROUPS["stow"], i, (10,)) for i in range(20)]
            send_instances(client, [f for st in studies for f in ds.instances(st, 16)], 2, 5)
            database = server.database_cpu_seconds() - before
    assert database > 0
    with Dicomhub(tmp_path / "sqlite") as server:
        assert server.database_cpu_seconds() == 0
