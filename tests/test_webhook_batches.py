"""Webhook delivery records its progress once per batch (docs/events.md): a batch
of delivered events costs a bounded number of index writes (counted on the real SQLite index),
not one per event; the lease is renewed within a long batch, so another node does not take the
subscription over mid-way; a node killed after sending part of a batch, before recording it,
has those events sent again by the next node, with the same ids, in order; a receiver's
connection carries event after event."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.conftest import ROOT, running_server
from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid
from tests.test_webhooks import (  # noqa: F401
    FAST,
    Receiver,
    kill_worker_mid_delivery,
    receiver,
    server_index,
    stow,
    subscribe,
)


@pytest.fixture
def node(tmp_path):
    """The real app in-process on SQLite (a file), without delivery loops of its own: the test
    runs delivery steps itself (``step``); ``writes()``: the index's write operations so far
    (the audit log kept elsewhere: its entries are written when requests end)."""

    def make(**overrides):
        settings = Settings(
            data_dir=str(tmp_path / "data"),
            webhook_allow_private=True,
            audit_log="off",
            webhook_poll_interval=0,
            **overrides,
        )
        archive = build_archive(settings)
        client = TestClient(create_app(settings, archive))
        client.archive = archive
        client.writes = lambda: archive.index.measured._writes
        return client

    return make


def store(client: TestClient, study: int, count: int) -> None:
    files = [instance(uid(study), uid(study, 1), uid(study, 1, n)) for n in range(count)]
    r = client.post("/v2/studies", content=multipart(*files), headers={"Content-Type": MULTIPART})
    assert r.status_code == 200, r.text


def make_subscription(client: TestClient, receiver: Receiver) -> dict:  # noqa: F811
    r = client.post("/v2/subscriptions", json={"url": receiver.url})
    assert r.status_code == 201, r.text
    return r.json()


def test_a_batch_costs_a_few_index_writes_not_one_per_event(node, receiver):  # noqa: F811
    with node(webhook_batch_size=100) as client:
        sub = make_subscription(client, receiver)
        store(client, 260, 40)
        before = client.writes()
        assert client.portal.call(client.archive.webhooks.step, "node-a")
        writes = client.writes() - before
        events = receiver.wait_for(40)
        # the lease taken, the batch recorded, the lease let go: 40 events, 3 writes
        assert writes <= 3, writes
        assert [e["data"]["imageSopInstanceUid"] for e in events] == [
            uid(260, 1, n) for n in range(40)
        ]
        state = client.get(f"/v2/subscriptions/{sub['id']}").json()
        assert state["delivered"] == 40
        assert state["sequence"] == events[-1]["data"]["sequenceNumber"]
        # a refusal mid-batch: the four events taken before it recorded, then the failure
        store(client, 261, 10)
        receiver.refuse_after = 44
        before = client.writes()
        assert client.portal.call(client.archive.webhooks.step, "node-a")
        assert client.writes() - before <= 4
        events = receiver.events()
        assert len(events) == 44
        state = client.get(f"/v2/subscriptions/{sub['id']}").json()
        assert state["state"] == "failing" and state["delivered"] == 44
        assert state["sequence"] == events[-1]["data"]["sequenceNumber"]


def test_a_long_batch_renews_its_lease_so_no_other_node_takes_over(node, receiver):  # noqa: F811
    """Each answer takes 40 ms, a batch of 25 a second, the lease is 0.3 s: node B, trying to
    claim all along, never gets the subscription while A delivers, and nothing is sent twice."""
    receiver.delay = 0.04
    with node(job_lease=0.3, webhook_batch_size=25) as client:
        make_subscription(client, receiver)
        store(client, 262, 25)
        service = client.archive.webhooks

        async def two_nodes() -> int:
            a = asyncio.create_task(service.step("node-a"))
            await asyncio.sleep(0.05)
            taken = 0
            while not a.done():
                taken += await service.step("node-b")
                await asyncio.sleep(0.02)
            await a
            return taken

        assert client.portal.call(two_nodes) == 0
        ids = [e["id"] for e in receiver.wait_for(25)]
        assert ids == sorted(set(ids), key=int) and len(ids) == 25


def test_connections_to_a_receiver_are_kept(node):
    """A receiver answering over HTTP/1.1 with a short body gets every event of a batch on one
    connection (the answer is read, so the connection can carry the next)."""
    keeping = Receiver()
    keeping.keep_alive, keeping.answer = True, b'{"ok": true}'
    keeping.start()
    try:
        with node() as client:
            make_subscription(client, keeping)
            store(client, 263, 10)
            client.portal.call(client.archive.webhooks.step, "node-a")
            keeping.wait_for(10)
            assert len(set(keeping.peers)) == 1, keeping.peers
    finally:
        keeping.stop()


def test_a_node_killed_mid_batch_has_its_unrecorded_events_sent_again(
    tmp_path,
    server_index,  # noqa: F811
    receiver,  # noqa: F811
):
    """Worker A takes three events of a batch of five and is killed while sending the fourth,
    before it recorded any: worker B, once A's lease has run out, sends the batch again from
    the first, the same events with the same ids and bodies, in order."""
    settings = dict(FAST, background_jobs="false", job_lease="4", **server_index)
    with running_server(tmp_path, **settings) as (url, _):
        sub = subscribe(url, receiver)
        stow(url, *(instance(uid(264), uid(264, 1), uid(264, 1, n)) for n in range(5)))
        command, env = kill_worker_mid_delivery(tmp_path, settings, receiver, hold_after=3)
        assert httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()["delivered"] == 0
        second = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            events = receiver.wait_for(8)
            deadline = time.monotonic() + 10
            while (state := httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json())[
                "delivered"
            ] < 5:
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
        finally:
            second.terminate()
            second.wait(10)
        by_a, by_b = receiver.received[:3], receiver.received[3:]
        assert [e["data"]["imageSopInstanceUid"] for e in events[3:]] == [
            uid(264, 1, n) for n in range(5)
        ]
        assert [h["webhook-id"] for h, _ in by_b[:3]] == [h["webhook-id"] for h, _ in by_a]
        assert [b for _, b in by_b[:3]] == [b for _, b in by_a]
        assert receiver.held[0][0]["webhook-id"] == by_b[3][0]["webhook-id"]
        ids = [int(h["webhook-id"]) for h, _ in by_b]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert state["sequence"] == ids[-1]
