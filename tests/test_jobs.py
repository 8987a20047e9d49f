"""Background jobs on SQLite and PostgreSQL: status at /operations/{id}, retries with backoff,
a killed runner's job taken over after its lease from its last checkpoint, concurrent runners
never running one job twice, and `dicomhub worker` doing the deferred blob deletion alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest

from dicomhub.clock import utcnow
from dicomhub.model import OperationStatus
from dicomhub.storage.urls import open_index
from dicomhub.workers.jobs import JobRunner
from tests.conftest import ROOT, index_database, running_server
from tests.synthetic import instance, uid


def test_operation_status_while_queued_and_when_done(client):
    archive = client.app.state.archive
    op = client.portal.call(archive.operations.start, "test-job", {"n": 2})

    r = client.get(f"/v2/operations/{op}")
    assert r.status_code == 202 and r.headers["Location"].endswith(f"/v2/operations/{op}")
    body = r.json()
    assert (body["operationId"], body["type"], body["status"]) == (op, "test-job", "notStarted")
    assert body["percentComplete"] == 0 and body["createdTime"].endswith("Z")

    async def handler(context):
        return {"twice": context.operation.payload["n"] * 2}

    runner = JobRunner(archive.index, {"test-job": handler})
    assert client.portal.call(runner.run_once) is True
    assert client.portal.call(runner.run_once) is False  # nothing else is ready
    for version in (1, 2):
        r = client.get(f"/v{version}/operations/{op}")
        assert r.status_code == 200
        assert r.json()["status"] == "completed" and r.json()["percentComplete"] == 100
        assert r.json()["results"] == {"twice": 4}
    assert client.get("/v2/operations/0123456789abcdef").status_code == 404


def test_failures_are_retried_with_backoff_then_fail(client):
    archive = client.app.state.archive
    op = client.portal.call(archive.operations.start, "flaky")
    calls = []

    async def flaky(context):
        calls.append(time.monotonic())
        raise RuntimeError(f"attempt {len(calls)} failed")

    runner = JobRunner(archive.index, {"flaky": flaky}, retry_base=0.2)
    assert client.portal.call(runner.run_once) is True
    state = client.get(f"/v2/operations/{op}").json()
    assert state["status"] == "notStarted" and state["errors"] == ["RuntimeError: attempt 1 failed"]
    assert client.portal.call(runner.run_once) is False  # its retry is not due yet
    deadline = time.monotonic() + 30
    while len(calls) < 5 and time.monotonic() < deadline:
        client.portal.call(runner.run_once)
        time.sleep(0.05)
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(gap >= 0.2 * 2**n * 0.9 for n, gap in enumerate(gaps))  # 0.2, 0.4, 0.8, 1.6 s
    r = client.get(f"/v2/operations/{op}")
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert len(r.json()["errors"]) == 5
    assert client.portal.call(runner.run_once) is False  # failed for good


def test_a_killed_runners_job_is_resumed_by_another(client, clock):
    archive = client.app.state.archive
    op = client.portal.call(archive.operations.start, "long", {"items": 10})
    done: list[int] = []

    async def long(context):
        start = (context.checkpoint or {}).get("next", 0)
        for item in range(start, context.operation.payload["items"]):
            if item == 4 and context.operation.attempts == 1:
                await asyncio.Event().wait()  # the first runner hangs here until it is killed
            done.append(item)
            context.progress(item * 10, {"next": item + 1})
            await asyncio.sleep(0.05)
        return {"items": len(done)}

    first = JobRunner(archive.index, {"long": long}, lease=0.6)
    second = JobRunner(archive.index, {"long": long}, lease=0.6)

    async def kill_first() -> None:
        task = asyncio.create_task(first.run_once())
        for _ in range(300):  # until the lease renewal has saved the checkpoint
            saved = await archive.index.operation(op)
            if saved.percent_complete == 30:
                break
            await asyncio.sleep(0.05)
        task.cancel()  # the runner dies: its lease is not released
        await asyncio.gather(task, return_exceptions=True)

    client.portal.call(kill_first)
    state = client.get(f"/v2/operations/{op}").json()
    assert state["status"] == "running" and state["percentComplete"] == 30
    assert client.portal.call(second.run_once) is False  # the lease has not run out yet
    clock.advance(1)  # now it has
    assert client.portal.call(second.run_once) is True
    state = client.get(f"/v2/operations/{op}").json()
    assert state["status"] == "completed"
    assert done == list(range(10))  # resumed at item 4, nothing done twice
    assert client.portal.call(archive.index.operation, op).attempts == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_runners_never_share_a_job(kind, tmp_path):
    with index_database(kind) as url:
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'index.sqlite'}"

        async def run():
            nodes = [open_index(url), open_index(url)]
            for node in nodes:
                await node.start()
            ran: list[str] = []

            async def job(context):
                ran.append(context.operation.id)
                await asyncio.sleep(0.01)

            try:
                ids = [
                    await nodes[0].enqueue_job(f"job{n:02}", "job", {}, 5, utcnow(), False)
                    for n in range(20)
                ]
                runners = [JobRunner(node, {"job": job}) for node in nodes for _ in range(3)]

                async def drain(runner):
                    while await runner.run_once():
                        pass

                await asyncio.gather(*(drain(r) for r in runners))
                states = [await nodes[1].operation(i) for i in ids]
                return ids, ran, states
            finally:
                for node in nodes:
                    await node.close()

        ids, ran, states = asyncio.run(run())
    assert sorted(ran) == ids  # every job once
    assert {s.status for s in states} == {OperationStatus.COMPLETED}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_finished_operations_by_finish_time(kind, tmp_path):
    """What the live event stream reads for OperationFinished: the exports, bulk updates and
    reindexes finished (completed or failed) since a time, oldest first, with the data a
    subscriber's event has; other jobs and unfinished ones are not."""
    with index_database(kind) as url:
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'index.sqlite'}"

        async def run():
            index = open_index(url)
            await index.start()
            try:
                t0 = utcnow()
                jobs = [
                    ("e", "export", {"partition": "p"}),
                    ("u", "update", {"partition": "q"}),
                    ("r", "reindex", {"partition": "ignored"}),
                    ("x", "blob-cleanup", {}),
                    ("w", "export", {}),  # never finished
                ]
                for n, (id, job, payload) in enumerate(jobs):
                    await index.enqueue_job(id, job, payload, 1, t0 + timedelta(seconds=n), False)
                end = t0 + timedelta(minutes=1)
                for n in range(4):  # in created order: e, u, r, x
                    op = await index.claim_job("node", t0 + timedelta(seconds=5), end)
                    error = "broken" if op.id == "u" else None
                    done = t0 + timedelta(seconds=10 + n)
                    assert await index.finish_job(op.id, "node", done, {"n": n}, error, None)
                return (
                    t0,
                    await index.finished_operations(t0 + timedelta(seconds=11), 10),
                    await index.finished_operations(t0, 1),
                )
            finally:
                await index.close()

        t0, found, first = asyncio.run(run())
    assert [(i, p, t - t0) for i, p, t, _ in found] == [
        ("u.finished", "q", timedelta(seconds=11)),
        ("r.finished", None, timedelta(seconds=12)),
    ]
    assert found[0][3] == {
        "operationId": "u",
        "operationType": "update",
        "status": "failed",
        "partitionName": "q",
        "percentComplete": None,
        "results": {"n": 1},
        "errors": ["broken"],
    }
    assert found[1][3]["status"] == "completed" and found[1][3]["percentComplete"] == 100
    assert [(i, d["partitionName"]) for i, _, _, d in first] == [("e.finished", "p")]


def test_singleton_jobs(client):
    archive = client.app.state.archive
    first = client.portal.call(archive.operations.start, "only-one", None, True)
    assert client.portal.call(archive.operations.start, "only-one", None, True) == first

    async def job(context):
        return None

    client.portal.call(JobRunner(archive.index, {"only-one": job}).run_once)
    assert client.portal.call(archive.operations.start, "only-one", None, True) != first


def test_worker_process_runs_the_blob_cleanup(tmp_path):
    """serve without background jobs leaves a deleted instance's blob; `dicomhub worker` on the
    same index and blob store removes it."""
    blobs = tmp_path / "blobs"
    with index_database("postgresql") as url:
        settings = dict(
            index_url=url,
            blob_url=f"file://{blobs}",
            delete_delay="0",
            cleanup_interval="0.2",
            job_poll_interval="0.1",
            index_blob_max="0",  # a file of its own, to remove
        )
        (tmp_path / "node").mkdir()
        with running_server(tmp_path / "node", background_jobs="false", **settings) as (base, _):
            data = instance(uid(70), uid(70, 1), uid(70, 1, 1))
            r = httpx.post(
                base + "/v2/studies", content=data, headers={"Content-Type": "application/dicom"}
            )
            assert r.status_code == 200
            assert httpx.delete(f"{base}/v2/studies/{uid(70)}").status_code == 204
            time.sleep(1)
            assert len(list(blobs.rglob("*.dcm"))) == 1  # nobody runs the cleanup
            env = {f"DICOMHUB_{k.upper()}": v for k, v in settings.items()}
            worker = subprocess.Popen(
                [sys.executable, "-m", "dicomhub", "worker", "--data-dir", str(tmp_path / "w")],
                cwd=ROOT,
                env={**os.environ, **env},
            )
            try:
                deadline = time.monotonic() + 30
                while list(blobs.rglob("*.dcm")) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert list(blobs.rglob("*.dcm")) == []
            finally:
                worker.terminate()
                assert worker.wait(10) == 0  # a clean stop on SIGTERM


def test_the_queue_by_type_as_metrics_read_it(client, clock):
    """Per type: the jobs ready to run (a running job whose lease ran out among them), how long
    the oldest has been due, and those running."""
    archive = client.app.state.archive
    call = client.portal.call
    for kind in ("queue-a", "queue-a", "queue-b"):
        call(archive.operations.start, kind, {})
    clock.advance(10)
    queue = {kind: rest for kind, *rest in call(archive.operations.queue)}
    assert set(queue) == {"queue-a", "queue-b"}
    assert queue["queue-a"][0] == 2 and queue["queue-a"][1] >= 10 and queue["queue-a"][2] == 0
    now = utcnow()
    claimed = call(archive.index.claim_job, "runner-1", now, now + timedelta(seconds=30))
    queue = {kind: rest for kind, *rest in call(archive.operations.queue)}
    assert queue[claimed.type][0] == (1 if claimed.type == "queue-a" else 0)
    assert queue[claimed.type][2] == 1
    clock.advance(60)  # its lease runs out: ready again, due since the lease ended
    queue = {kind: rest for kind, *rest in call(archive.operations.queue)}
    assert queue[claimed.type][2] == 0
    assert queue[claimed.type][0] == (2 if claimed.type == "queue-a" else 1)
    assert queue[claimed.type][1] >= 30
