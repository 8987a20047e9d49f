"""Webhooks (issue 23): `dicomhub serve` (SQLite and PostgreSQL) delivers the change feed's
events to a real HTTP receiver started here, signed per Standard Webhooks (checked with an
implementation of this file's own), in order, at least once; a receiver down for a while gets
everything once back; one down past the retry window gets dead letters, replayed on request; a
delivery node killed mid-request is taken over by another. Bad subscriptions: 400, nothing made.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, index_database, running_server
from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid
from tests.test_metrics import samples, value

CREATED = "Microsoft.HealthcareApis.DicomImageCreated"
UPDATED = "Microsoft.HealthcareApis.DicomImageUpdated"
DELETED = "Microsoft.HealthcareApis.DicomImageDeleted"
STABLE = "dicomhub.StudyStable"
SERIES_STABLE = "dicomhub.SeriesStable"
FAST = dict(
    webhook_allow_private="true",
    webhook_poll_interval="0.1",
    webhook_max_backoff="0.4",
    webhook_timeout="5",
)


class Receiver:
    """A webhook receiver on a loopback port: records what it is sent; answers ``status``
    (503 once it has taken ``refuse_after``; after ``delay`` seconds, with body ``answer``),
    or holds each request while ``hold`` is
    set (once it has taken ``hold_after``), or is down (its port closed) after ``stop``. HTTP/1.0
    (a connection per request) unless ``keep_alive``; ``peers``: the client port of each
    request."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[tuple[dict, bytes]] = []
        self.status = 200
        self.delay = 0.0
        self.refuse_after: int | None = None
        self.hold: threading.Event | None = None
        self.hold_after = 0
        self.answer = b""
        self.keep_alive = False
        self.peers: list[int] = []
        self.held: list[tuple[dict, bytes]] = []  # requests received while holding
        self.arrived = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.peers.append(self.client_address[1])
                receiver.arrived.set()
                if receiver.hold is not None and len(receiver.received) >= receiver.hold_after:
                    receiver.held.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.hold.wait(60)
                    self.close_connection = True
                    return  # no answer: the connection just closes
                status = receiver.status
                if receiver.refuse_after is not None:
                    status = 503 if len(receiver.received) >= receiver.refuse_after else status
                time.sleep(receiver.delay)
                if status == 200:
                    receiver.received.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(status)
                self.send_header("content-length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]

    def wait_for(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, self.events()
            time.sleep(0.05)
        return self.events()


@pytest.fixture
def receiver():
    r = Receiver()
    r.start()
    yield r
    if r.hold is not None:
        r.hold.set()
    r.stop()


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """Standard Webhooks verification, written from the specification alone."""
    key = base64.b64decode(secret.split("_", 1)[1])
    headers = {k.lower(): v for k, v in headers.items()}
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(
        hmac.compare_digest(expected, signature.split(",", 1)[1])
        for signature in headers["webhook-signature"].split()
        if signature.startswith("v1,")
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def server_index(request, tmp_path):
    """Settings of a server's index: the SQLite file in its data folder, or a PostgreSQL
    database of its own."""
    if request.param == "sqlite":
        yield {}
        return
    with index_database("postgresql") as url:
        yield {"index_url": url}


@contextlib.contextmanager
def server(tmp_path: Path, index: dict, **settings: str):
    with running_server(tmp_path, **{**FAST, **index, **settings}) as (url, proc):
        yield url, proc


def subscribe(url: str, receiver: Receiver, **fields) -> dict:
    r = httpx.post(f"{url}/v2/subscriptions", json={"url": receiver.url, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def stow(url: str, *files: bytes) -> None:
    r = httpx.post(
        f"{url}/v2/studies", content=multipart(*files), headers={"Content-Type": MULTIPART}
    )
    assert r.status_code == 200, r.text


def upsert(url: str, *files: bytes) -> None:
    r = httpx.put(
        f"{url}/v2/studies", content=multipart(*files), headers={"Content-Type": MULTIPART}
    )
    assert r.status_code == 200, r.text


def sops(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["imageSopInstanceUid"]) for e in events]


def test_stow_upsert_delete_deliver_exactly_their_events(tmp_path, server_index, receiver):
    """serve with two server processes: its background process delivers, its writes on SQLite
    going through the one writer process with the stores'."""
    study, series = uid(230), uid(230, 1)
    first, second = uid(230, 1, 1), uid(230, 1, 2)
    with server(tmp_path, server_index, workers="2") as (url, _):
        stow(url, instance(uid(229), uid(229, 1), uid(229, 1, 1)))  # before: not delivered
        sub = subscribe(url, receiver)
        assert sub["state"] == "active" and sub["secret"].startswith("whsec_")
        assert len(base64.b64decode(sub["secret"][6:])) >= 24
        assert "secret" not in httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()
        grid = Receiver()
        grid.start()
        try:
            deletes = subscribe(url, grid, eventTypes=[DELETED], schema="eventgrid")
            mr = subscribe(url, receiver, filter={"modality": "MR"})
            stow(url, instance(study, series, first), instance(study, series, second))
            upsert(url, instance(study, series, first, PatientName="New^Name"))
            r = httpx.delete(f"{url}/v2/studies/{study}/series/{series}/instances/{second}")
            assert r.status_code == 204
            events = receiver.wait_for(4)
            grid.wait_for(1)
            [(headers, body)] = grid.received
        finally:
            grid.stop()
        time.sleep(0.5)  # nothing more comes (the MR subscription gets none)
        assert len(receiver.received) == 4
        assert sops(events) == [
            (CREATED, first),
            (CREATED, second),
            (UPDATED, first),
            (DELETED, second),
        ]
        sequences = [e["data"]["sequenceNumber"] for e in events]
        assert sequences == sorted(sequences) and len(set(sequences)) == 4
        for (headers_, body_), event in zip(receiver.received, events, strict=True):
            assert verify(sub["secret"], headers_, body_)
            assert not verify(mr["secret"], headers_, body_)
            assert headers_["webhook-id"] == event["id"] == str(event["data"]["sequenceNumber"])
            assert headers_["content-type"].startswith("application/cloudevents+json")
        event = events[0]
        assert event["specversion"] == "1.0" and event["datacontenttype"] == "application/json"
        assert event["subject"].endswith(f"/v2/studies/{study}/series/{series}/instances/{first}")
        assert event["source"] and event["time"].endswith("Z")
        assert event["data"] == {
            "partitionName": "Microsoft.Default",
            "imageStudyInstanceUid": study,
            "imageSeriesInstanceUid": series,
            "imageSopInstanceUid": first,
            "serviceHostName": event["data"]["serviceHostName"],
            "sequenceNumber": sequences[0],
        }
        # the Event Grid schema: an array of one event, only the deletion asked for
        assert verify(deletes["secret"], headers, body)
        [grid_event] = json.loads(body)
        assert grid_event["eventType"] == DELETED and grid_event["dataVersion"] == "1"
        assert grid_event["data"]["imageSopInstanceUid"] == second
        assert grid_event["id"] == str(sequences[3]) and grid_event["eventTime"].endswith("Z")
        state = httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()
        assert state["delivered"] == 4 and state["sequence"] == sequences[3]
        assert state["deadLetters"] == 0 and state["state"] == "active"
        listed = httpx.get(f"{url}/v2/subscriptions").json()
        assert [s["id"] for s in listed] == [sub["id"], deletes["id"], mr["id"]]
        assert httpx.get(f"{url}/v2/subscriptions/{mr['id']}").json()["delivered"] == 0


def test_a_receiver_down_then_back_gets_everything_in_order(tmp_path, server_index, receiver):
    with server(tmp_path, server_index) as (url, _):
        sub = subscribe(url, receiver)
        receiver.status = 503
        files = [instance(uid(231), uid(231, 1), uid(231, 1, n)) for n in range(3)]
        for data in files:
            stow(url, data)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()["state"] != "failing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        receiver.stop()  # now down altogether: connections refused
        stow(url, instance(uid(231), uid(231, 1), uid(231, 1, 3)))
        time.sleep(1)
        failing = httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()
        assert failing["state"] == "failing" and failing["lastError"]
        receiver.status = 200
        receiver.start()
        events = receiver.wait_for(4)
        assert [e["data"]["imageSopInstanceUid"] for e in events] == [
            uid(231, 1, n) for n in range(4)
        ]
        assert all(verify(sub["secret"], h, b) for h, b in receiver.received)
        deadline = time.monotonic() + 30
        while (state := httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json())["state"] != (
            "active"
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state["lastError"] is None and state["delivered"] == 4


def test_past_the_retry_window_events_are_dead_lettered_and_replayed(
    tmp_path, server_index, receiver
):
    with server(tmp_path, server_index, webhook_retry_window="1.5") as (url, _):
        sub = subscribe(url, receiver)
        receiver.status = 500
        stow(url, instance(uid(232), uid(232, 1), uid(232, 1, 1)))
        stow(url, instance(uid(232), uid(232, 1), uid(232, 1, 2)))
        deadline = time.monotonic() + 60
        while len(dead := httpx.get(f"{url}/v2/subscriptions/{sub['id']}/deadletters").json()) < 2:
            assert time.monotonic() < deadline, dead
            time.sleep(0.1)
        assert [d["eventType"] for d in dead] == [CREATED, CREATED]
        assert dead[0]["attempts"] >= 2 and "500" in dead[0]["error"]
        assert dead[0]["sequence"] < dead[1]["sequence"]
        assert not receiver.received
        receiver.status = 200
        stow(url, instance(uid(232), uid(232, 1), uid(232, 1, 3)))  # delivery goes on
        [event] = receiver.wait_for(1)
        assert event["data"]["imageSopInstanceUid"] == uid(232, 1, 3)
        state = httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()
        assert state["deadLetters"] == 2
        base = f"{url}/v2/subscriptions/{sub['id']}/deadletters"
        assert httpx.post(f"{base}/{dead[0]['sequence']}/replay").status_code == 202
        assert httpx.post(f"{base}/999999/replay").status_code == 404
        assert httpx.post(f"{base}/12.stable/replay").status_code == 404
        assert httpx.post(f"{base}/12.x/replay").status_code == 400
        assert dead[0]["id"] == str(dead[0]["sequence"])
        events = receiver.wait_for(2)
        assert events[1]["data"]["imageSopInstanceUid"] == uid(232, 1, 1)
        assert receiver.received[1][0]["webhook-id"] == str(dead[0]["sequence"])
        assert verify(sub["secret"], *receiver.received[1])
        deadline = time.monotonic() + 30
        while len(httpx.get(base).json()) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the metrics: this process's attempts, and the subscription as the index holds it
        found = samples(httpx.get(f"{url}/metrics").text)
        attempts = "dicomhub_webhook_deliveries_total"
        assert value(found, attempts, outcome="failed") >= 2
        assert value(found, attempts, outcome="dead_lettered") == 2
        assert value(found, attempts, outcome="replayed") == 1
        assert value(found, attempts, outcome="delivered") == 2
        assert value(found, "dicomhub_webhook_delivery_duration_seconds_count", outcome="failed")
        mine = {"subscription": sub["id"]}
        assert value(found, "dicomhub_webhook_dead_letters", **mine) == 1
        assert value(found, "dicomhub_webhook_delivered_total", **mine) == 1
        assert value(found, "dicomhub_webhook_lag", **mine) == 0
        assert value(found, "dicomhub_webhook_state", state="active", **mine) == 1


def test_bad_subscriptions_are_refused_and_nothing_is_made(tmp_path, server_index):
    with server(tmp_path, server_index, webhook_allow_private="false") as (url, _):
        public = "http://93.184.216.34/hook"  # a literal public address: no DNS needed
        for body, words in (
            ({"url": "ftp://93.184.216.34/x"}, "http"),
            ({"url": "file:///etc/passwd"}, "http"),
            ({"url": "http://127.0.0.1:9/hook"}, "non-public"),
            ({"url": "http://10.1.2.3/hook"}, "non-public"),
            ({"url": "http://169.254.169.254/latest"}, "non-public"),
            ({"url": "http://[::1]/hook"}, "non-public"),
            ({"url": "http://localhost/hook"}, "non-public"),
            ({"url": public, "eventTypes": ["Microsoft.HealthcareApis.Nope"]}, "unknown event"),
            ({"url": public, "eventTypes": []}, "eventTypes"),
            ({"url": public, "filter": {"color": "red"}}, "unknown filter"),
            ({"url": public, "filter": {"modality": 3}}, "filter modality"),
            ({"url": public, "schema": "xml"}, "schema"),
            ({"url": public, "secret": "not-a-secret"}, "secret"),
            ({"url": public, "extra": 1}, "unknown subscription fields"),
            ({"eventTypes": [CREATED]}, "needs a url"),
            ([public], "JSON object"),
        ):
            r = httpx.post(f"{url}/v2/subscriptions", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert words in r.json()["detail"], (body, r.text)
        r = httpx.post(
            f"{url}/v2/subscriptions",
            content=b'{"url": ',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        assert httpx.get(f"{url}/v2/subscriptions").json() == []
        made = httpx.post(f"{url}/v2/subscriptions", json={"url": public, "state": "paused"})
        assert made.status_code == 201 and made.json()["state"] == "paused"
        sub = made.json()["id"]
        r = httpx.patch(f"{url}/v2/subscriptions/{sub}", json={"url": "http://127.0.0.1/x"})
        assert r.status_code == 400
        r = httpx.patch(f"{url}/v2/subscriptions/{sub}", json={"state": "failing"})
        assert r.status_code == 400
        assert httpx.get(f"{url}/v2/subscriptions/{sub}").json()["url"] == public
        assert httpx.delete(f"{url}/v2/subscriptions/{sub}").status_code == 204
        assert httpx.get(f"{url}/v2/subscriptions/{sub}").status_code == 404
        assert httpx.delete(f"{url}/v2/subscriptions/{sub}").status_code == 404


def test_paused_subscriptions_get_the_events_of_their_pause_on_resume(
    tmp_path, server_index, receiver
):
    with server(tmp_path, server_index) as (url, _):
        sub = subscribe(url, receiver, state="paused")
        stow(url, instance(uid(233), uid(233, 1), uid(233, 1, 1)))
        time.sleep(0.5)
        assert not receiver.received
        r = httpx.patch(f"{url}/v2/subscriptions/{sub['id']}", json={"state": "active"})
        assert r.status_code == 200 and r.json()["state"] == "active"
        [event] = receiver.wait_for(1)
        assert event["data"]["imageSopInstanceUid"] == uid(233, 1, 1)


def kill_worker_mid_delivery(
    data: Path, settings: dict, receiver: Receiver, hold_after: int = 0
) -> tuple[list[str], dict]:
    """Run `dicomhub worker` on the server's ``settings`` (the receiver holding each request
    once it has taken ``hold_after``), kill it while a request is held (its lease is left to
    run out), then let the receiver answer again; the command and environment to start the
    next worker with."""
    env = dict(
        os.environ,
        **{f"DICOMHUB_{k.upper()}": v for k, v in settings.items()},
        DICOMHUB_DATA_DIR=str(data),
    )
    command = [sys.executable, "-m", "dicomhub", "worker"]
    receiver.hold, receiver.hold_after = threading.Event(), hold_after
    first = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not receiver.held:
            assert time.monotonic() < deadline, "the worker never sent a request to hold"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    held, receiver.hold = receiver.hold, None
    held.set()
    return command, env


def test_a_node_killed_mid_delivery_is_taken_over(tmp_path, server_index, receiver):
    """serve stores (no deliveries of its own); `dicomhub worker` A holds a delivery when it is
    killed; worker B delivers everything once A's lease has run out; a duplicate, if any, has
    the same id."""
    settings = dict(FAST, background_jobs="false", job_lease="1", **server_index)
    with running_server(tmp_path, **settings) as (url, _):
        sub = subscribe(url, receiver)
        for n in range(3):
            stow(url, instance(uid(234), uid(234, 1), uid(234, 1, n)))
        command, env = kill_worker_mid_delivery(tmp_path, settings, receiver)
        assert not receiver.received
        second = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            events = receiver.wait_for(3)
            # the receiver has the last event before B records it: wait for the record
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                state = httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()
                if state["delivered"] >= 3:
                    break
                time.sleep(0.1)
        finally:
            second.terminate()
            second.wait(10)
        ids = [e["id"] for e in events]
        # the request A was killed in is delivered again by B: the same event, the same id
        [(headers, body)] = receiver.held
        assert headers["webhook-id"] == ids[0] and body == receiver.received[0][1]
        assert [e["data"]["imageSopInstanceUid"] for e in events] == [
            uid(234, 1, n) for n in range(3)
        ]
        assert ids == sorted(ids, key=int)
        assert state["delivered"] == 3


def test_study_stable_fires_once_after_the_quiet_period(tmp_path, server_index, receiver):
    study, series = uid(235), uid(235, 1)
    with server(tmp_path, server_index, webhook_study_stable_after="2") as (url, _):
        sub = subscribe(url, receiver, eventTypes=[CREATED, STABLE])
        others = Receiver()  # the default event types: no StudyStable
        others.start()
        try:
            plain = subscribe(url, others)
            stow(url, *(instance(study, series, uid(235, 1, n)) for n in range(2)))
            events = receiver.wait_for(3)
            assert [e["type"] for e in events] == [CREATED, CREATED, STABLE]
            last = events[1]["data"]["sequenceNumber"]
            stable = events[2]
            assert stable["id"] == f"{last}.stable"
            assert receiver.received[2][0]["webhook-id"] == stable["id"]
            assert verify(sub["secret"], *receiver.received[2])
            assert stable["subject"].endswith(f"/v2/studies/{study}")
            assert stable["data"] == {
                "partitionName": "Microsoft.Default",
                "imageStudyInstanceUid": study,
                "serviceHostName": stable["data"]["serviceHostName"],
                "sequenceNumber": last,
            }
            time.sleep(3.5)  # quiet on: no second one without new instances
            assert len(receiver.received) == 3
            upsert(url, instance(study, series, uid(235, 1, 0), PatientName="Re^Done"))
            stow(url, instance(study, series, uid(235, 1, 2)))
            events = receiver.wait_for(5)
            assert [e["type"] for e in events[3:]] == [CREATED, STABLE]
            assert events[4]["id"] == f"{events[3]['data']['sequenceNumber']}.stable"
            time.sleep(3.5)
            assert len(receiver.received) == 5
            assert STABLE not in {e["type"] for e in others.events()}
            assert len(others.events()) == 4  # created, created, updated, created
            assert httpx.get(f"{url}/v2/subscriptions/{plain['id']}").json()["delivered"] == 4
        finally:
            others.stop()


def test_series_stable_fires_once_per_series_after_the_quiet_period(
    tmp_path, server_index, receiver
):
    """One wait per series (and one per study, keyed by level): a series stable fires once;
    new instances in one series fire its SeriesStable again, not the other's."""
    study, a, b = uid(238), uid(238, 1), uid(238, 2)
    with server(tmp_path, server_index, webhook_study_stable_after="2") as (url, _):
        sub = subscribe(url, receiver, eventTypes=[SERIES_STABLE, STABLE])
        stow(url, instance(study, a, uid(238, 1, 0)), instance(study, a, uid(238, 1, 1)))
        stow(url, instance(study, b, uid(238, 2, 0)))
        latest = httpx.get(f"{url}/v2/changefeed/latest").json()["sequence"]
        events = receiver.wait_for(3)
        time.sleep(3.5)  # quiet on: nothing more
        assert len(receiver.received) == 3
        by_type = sorted((e["type"], e["data"].get("imageSeriesInstanceUid")) for e in events)
        assert by_type == [(SERIES_STABLE, a), (SERIES_STABLE, b), (STABLE, None)]
        series_a = next(e for e in events if e["data"].get("imageSeriesInstanceUid") == a)
        assert series_a["id"] == f"{latest - 1}.series-stable"
        assert series_a["subject"].endswith(f"/v2/studies/{study}/series/{a}")
        assert series_a["data"] == {
            "partitionName": "Microsoft.Default",
            "imageStudyInstanceUid": study,
            "imageSeriesInstanceUid": a,
            "serviceHostName": series_a["data"]["serviceHostName"],
            "sequenceNumber": latest - 1,
        }
        study_event = next(e for e in events if e["type"] == STABLE)
        assert study_event["id"] == f"{latest}.stable"
        assert all(verify(sub["secret"], *r) for r in receiver.received)
        stow(url, instance(study, b, uid(238, 2, 1)))  # series b only
        events = receiver.wait_for(5)
        time.sleep(3.5)
        assert len(receiver.received) == 5
        assert sorted((e["type"], e["data"].get("imageSeriesInstanceUid")) for e in events[3:]) == [
            (SERIES_STABLE, b),
            (STABLE, None),
        ]
        # a dead letter of a series' event is named and replayed by its id
        r = httpx.post(f"{url}/v2/subscriptions/{sub['id']}/deadletters/7.series-stable/replay")
        assert r.status_code == 404, r.text
        r = httpx.post(f"{url}/v2/subscriptions/{sub['id']}/deadletters/7.serie-stable/replay")
        assert r.status_code == 400, r.text


def test_pure_parts():
    """The target check, the filters and the backoff, without a server."""
    import asyncio

    from dicomhub.model import Action, EventSource, InstanceId
    from dicomhub.webhooks import events, signing
    from dicomhub.webhooks.targets import TargetRefused, check_target

    for refused in (
        "http://127.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://user:pw@93.184.216.34/",
        "gopher://93.184.216.34/",
        "http:///path",
        "http://93.184.216.34:99999/",
    ):
        with pytest.raises(TargetRefused):
            asyncio.run(check_target(refused, False))
    asyncio.run(check_target("https://93.184.216.34:8443/hook?x=1", False))
    asyncio.run(check_target("http://127.0.0.1:9/", True))
    change = EventSource(7, datetime.now(UTC), Action.DELETE, InstanceId("1", "2", "3"), "CT", None)
    assert events.matches(change, events.IMAGE_TYPES, {"modality": ("ct",)})
    assert not events.matches(change, events.IMAGE_TYPES, {"modality": ("MR",)})
    assert events.matches(change, events.IMAGE_TYPES, {"sopClassUid": ("1.2",)})  # unknown
    assert not events.matches(change, (events.CREATED,), {})
    assert not events.matches(change, events.IMAGE_TYPES, {"partition": ("other",)})
    root = "http://dicom.example:8080/v2"
    assert (
        events.event_of(change, root).subject
        == "dicom.example:8080/v2/studies/1/series/2/instances/3"
    )
    elsewhere = EventSource(
        8, datetime.now(UTC), Action.CREATE, InstanceId("1", "2", "3", "p-1"), "CT", None
    )
    assert events.event_of(elsewhere, root).subject.startswith(
        "dicom.example:8080/v2/partitions/p-1/studies/1/"
    )
    assert not events.marks_stable(change, events.EVENT_TYPES, {})
    secret = signing.new_secret()
    assert len(signing.key_of(secret)) == 32
    for bad in ("whsec_", "whsec_!!!!", "wh_" + secret[6:], "whsec_" + "QUFB" * 4):
        with pytest.raises(ValueError):
            signing.key_of(bad)
    headers = signing.headers(secret, "7", 1700000000, b"{}")
    assert verify_at(secret, headers, b"{}")


def verify_at(secret: str, headers: dict, body: bytes) -> bool:
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


def read_stream(url: str, count: int, **request) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of the first ``count`` messages of a live event stream (all of them
    when it ends first); id None for a message without one."""
    out: list[tuple[str | None, str, dict]] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", f"{url}/v2/events", timeout=60, **request) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "data" in fields:
                    out.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
                    if len(out) == count:
                        return out
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return out


def test_a_bulk_update_delivers_the_updated_events(tmp_path, server_index, receiver):
    study, series = uid(237), uid(237, 1)
    with server(tmp_path, server_index, job_poll_interval="0.1") as (url, _):
        stow(url, *(instance(study, series, uid(237, 1, n)) for n in range(2)))
        subscribe(url, receiver)
        change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}
        r = httpx.post(
            f"{url}/v2/studies/$bulkUpdate",
            json={"studyInstanceUids": [study], "changeDataset": change},
        )
        assert r.status_code == 202, r.text
        events = receiver.wait_for(2)
        assert sorted(sops(events)) == [(UPDATED, uid(237, 1, n)) for n in range(2)]
        time.sleep(0.5)
        assert len(receiver.received) == 2


def test_the_live_stream_resumes_from_a_sequence(tmp_path, server_index):
    with server(tmp_path, server_index, event_stream_seconds="3") as (url, _):
        stow(url, instance(uid(236), uid(236, 1), uid(236, 1, 0)))
        start = httpx.get(f"{url}/v2/changefeed/latest").json()["sequence"]
        for n in range(1, 4):
            stow(url, instance(uid(236), uid(236, 1), uid(236, 1, n)))
        r = httpx.delete(
            f"{url}/v2/studies/{uid(236)}/series/{uid(236, 1)}/instances/{uid(236, 1, 1)}"
        )
        assert r.status_code == 204
        got = read_stream(url, 4, params={"after": str(start)})
        assert [(e, d["data"]["imageSopInstanceUid"]) for _, e, d in got] == [
            (CREATED, uid(236, 1, 1)),
            (CREATED, uid(236, 1, 2)),
            (CREATED, uid(236, 1, 3)),
            (DELETED, uid(236, 1, 1)),
        ]
        assert [int(i) for i, _, _ in got] == [d["data"]["sequenceNumber"] for _, _, d in got]
        assert got[0][2]["specversion"] == "1.0"
        # as a reconnecting EventSource: from the last id it got, filtered
        again = read_stream(
            url,
            1,
            headers={"Last-Event-ID": got[1][0]},
            params={"eventTypes": DELETED},
        )
        assert [(e, d["data"]["imageSopInstanceUid"]) for _, e, d in again] == [
            (DELETED, uid(236, 1, 1))
        ]
        # live: a stream opened before the change gets it; one that ends resumes
        live: list = []
        reader = threading.Thread(target=lambda: live.extend(read_stream(url, 1)))
        reader.start()
        time.sleep(1)
        stow(url, instance(uid(236), uid(236, 1), uid(236, 1, 9)))
        reader.join(60)
        assert [d["data"]["imageSopInstanceUid"] for _, _, d in live] == [uid(236, 1, 9)]
        for bad in (
            {"after": "x"},
            {"eventTypes": "dicomhub.Nope"},
            {"modality": ","},
            {"colour": "1"},
        ):
            r = httpx.get(f"{url}/v2/events", params=bad)
            assert r.status_code in (400, 200), bad
            if "colour" not in bad:
                assert r.status_code == 400, (bad, r.text)


def test_the_cli_manages_subscriptions(tmp_path, receiver):
    """`dicomhub subscriptions` against a running server: create (the secret shown once),
    list, pause, resume, get, delete; refusals exit 2 with the server's reason."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dicomhub", "subscriptions", "--url", url, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    with server(tmp_path, {}) as (url, _):
        made = cli(
            "create",
            receiver.url,
            "--filter",
            "modality=CT,MR",
            "--study",
            "StudyDescription=*CHEST*",
            "--study",
            "StudyDate=20240101-",
            "--schema",
            "eventgrid",
        )
        assert made.returncode == 0, made.stderr
        sub = json.loads(made.stdout)
        assert sub["secret"].startswith("whsec_") and sub["filter"] == {
            "modality": ["CT", "MR"],
            "study": {"StudyDescription": "*CHEST*", "StudyDate": "20240101-"},
        }
        listed = cli("list")
        assert listed.returncode == 0 and listed.stdout.split() == [
            sub["id"],
            "active",
            receiver.url,
        ]
        assert cli("pause", sub["id"]).returncode == 0
        assert json.loads(cli("get", sub["id"]).stdout)["state"] == "paused"
        assert cli("resume", sub["id"]).returncode == 0
        assert json.loads(cli("deadletters", sub["id"]).stdout) == []
        refused = cli("create", "ftp://example.org/x")
        assert refused.returncode == 2 and "http" in refused.stderr
        assert cli("replay", sub["id"], "7").returncode == 2  # no such dead letter
        assert cli("create", receiver.url, "--filter", "modality").returncode == 2
        bad = cli("create", receiver.url, "--study", "StudyDate=2024-99")
        assert bad.returncode == 2 and "StudyDate" in bad.stderr
        assert cli("delete", sub["id"]).returncode == 0
        assert cli("list").stdout == ""
        assert cli("get", sub["id"]).returncode == 2


def test_a_hanging_receiver_holds_up_no_other_subscription(tmp_path, receiver):
    """One receiver takes requests and never answers; another subscription's events arrive
    while that request is still open (each delivery loop serves one subscription at a time)."""
    hanging = Receiver()
    hanging.hold = threading.Event()
    hanging.start()
    try:
        settings = dict(webhook_timeout="40", job_lease="90")
        with server(tmp_path, {}, **settings) as (url, _):
            subscribe(url, hanging)
            subscribe(url, receiver)
            stow(url, instance(uid(238), uid(238, 1), uid(238, 1, 1)))
            assert hanging.arrived.wait(60)
            [event] = receiver.wait_for(1)
            assert event["data"]["imageSopInstanceUid"] == uid(238, 1, 1)
            assert len(hanging.held) == 1 and not hanging.hold.is_set()  # still open
            stow(url, instance(uid(238), uid(238, 1), uid(238, 1, 2)))
            assert len(receiver.wait_for(2)) == 2
            hanging.hold.set()
    finally:
        hanging.hold.set()
        hanging.stop()
