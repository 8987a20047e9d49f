"""UPS-RS Watch and Event over real sockets (PS3.18 11.10-11.14, PS3.4 CC.2.3-CC.2.4): on
SQLite, `dicomhub serve --workers 2` (two server processes, one writer); on PostgreSQL, two
`serve` nodes on one database, changes made through node A and the WebSocket subscriber (the
`websockets` client) on node B. Subscriptions to one workitem, global and filtered global ones,
the deletion lock, suspension, unsubscription, reports queued while the subscriber is away and
delivered in order when it comes back, and bad input refused with nothing changed."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from dicomhub.clock import utcnow
from tests.conftest import index_database, running_server
from tests.test_workitems import (
    JSON,
    PERFORMED,
    A,
    change,
    code,
    create,
    dataset,
    new_uid,
    refused,
    update,
    workitem,
)

GLOBAL, FILTERED = "1.2.840.10008.5.1.4.34.5", "1.2.840.10008.5.1.4.34.5.1"
STATE, CANCEL_REQUESTED, PROGRESS, ASSIGNED = 1, 2, 3, 5
WAIT = 60  # seconds a report may take to come (generous: the machine may be busy)
_titles = iter(range(1, 10**6))


def title() -> str:
    return f"WATCH{next(_titles)}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def nodes(tmp_path_factory, request):
    """(node A, node B) base URLs: on SQLite one `serve --workers 2` (its two processes share
    the listening socket, so A and B are the same address); on PostgreSQL two `serve` nodes
    on one database."""
    if request.param == "sqlite":
        data = tmp_path_factory.mktemp("events")
        with running_server(data, workers="2") as (url, _):
            yield url + "/v2", url + "/v2"
        return
    with index_database("postgresql") as index:
        first, second = tmp_path_factory.mktemp("node-a"), tmp_path_factory.mktemp("node-b")
        with (
            running_server(first, index_url=index) as (a, _),
            running_server(second, index_url=index) as (b, _),
        ):
            yield a + "/v2", b + "/v2"


@pytest.fixture
def a(nodes):
    with httpx.Client(base_url=nodes[0], timeout=30) as client:
        yield client


@pytest.fixture
def b(nodes):
    with httpx.Client(base_url=nodes[1], timeout=30) as client:
        yield client


def channel(nodes, subscriber: str, node: int = 1):
    """The event channel of ``subscriber`` on node B (or A)."""
    url = re.sub(r"^http", "ws", nodes[node]) + f"/subscribers/{subscriber}"
    return connect(url, open_timeout=30, close_timeout=5)


def receive(ws) -> dict:
    """The next report: one DICOM JSON dataset (an object, PS3.18 8.10.5.1.1), with its
    sequence number."""
    report = json.loads(ws.recv(timeout=WAIT))
    assert isinstance(report, dict)
    return report


def summary(report: dict) -> tuple:
    """(sequence, event type, workitem, state if any) of a report."""
    state = report.get("00741000", {}).get("Value", [None])[0]
    return (
        report["00091001"]["Value"][0],
        report["00001002"]["Value"][0],
        report["00001000"]["Value"][0],
        state,
    )


def until(ws, item: str) -> dict:
    """The next report about ``item`` (a global subscriber also hears of other tests')."""
    while True:
        report = receive(ws)
        if report["00001000"]["Value"][0] == item:
            return report


def subscribe(http, item: str, subscriber: str, query: str = "") -> httpx.Response:
    return http.post(f"/workitems/{item}/subscribers/{subscriber}{query}")


def scheduled(http, **overrides) -> str:
    item = new_uid()
    assert create(http, [workitem(**overrides)], "?" + item).status_code == 201
    return item


def progress(percent: int) -> dict:
    return {
        "00741002": {
            "vr": "SQ",
            "Value": [{"00741004": {"vr": "DS", "Value": [percent]}}],
        }
    }


# -- one workitem ------------------------------------------------------------------------------


def test_a_subscriber_on_node_b_gets_the_changes_made_on_node_a_in_order(nodes, a, b):
    item, watcher = scheduled(a), title()
    r = subscribe(a, item, watcher)
    assert r.status_code == 201, r.text
    assert r.headers["content-location"].endswith(f"/workitems/{item}/subscribers/{watcher}")
    with channel(nodes, watcher) as ws:
        initial = receive(ws)
        assert summary(initial) == (1, STATE, item, "SCHEDULED")
        assert initial["00000002"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
        assert initial["00404041"]["Value"] == ["READY"]  # InputReadinessState
        assert change(a, item, "IN PROGRESS", A).status_code == 200
        assert update(a, item, progress(50), A).status_code == 200
        station = dataset(ScheduledStationNameCodeSequence=[code("STATION-B")])
        assert update(a, item, station, A).status_code == 200
        assert update(a, item, PERFORMED, A).status_code == 200  # no report: nothing watched
        assert change(a, item, "COMPLETED", A).status_code == 200
        got = [receive(ws) for _ in range(4)]
    assert [summary(r) for r in got] == [
        (2, STATE, item, "IN PROGRESS"),
        (3, PROGRESS, item, None),
        (4, ASSIGNED, item, None),
        (5, STATE, item, "COMPLETED"),
    ]
    assert got[1]["00741002"]["Value"][0]["00741004"]["Value"] == [50]
    assert got[2]["00404025"]["Value"][0]["00080100"]["Value"] == ["STATION-B"]


def test_reports_missed_while_away_come_in_order_on_reconnection(nodes, a, b):
    item, watcher = scheduled(a), title()
    assert subscribe(b, item, watcher).status_code == 201
    with channel(nodes, watcher) as ws:
        assert summary(receive(ws))[:2] == (1, STATE)
    # away: three changes
    assert change(a, item, "IN PROGRESS", A).status_code == 200
    for percent in (10, 90):
        assert update(a, item, progress(percent), A).status_code == 200
    with channel(nodes, watcher, node=0) as ws:
        got = [receive(ws) for _ in range(3)]
        assert [summary(r)[:2] for r in got] == [(2, STATE), (3, PROGRESS), (4, PROGRESS)]
        # and once back, what follows, on the other node
        assert update(b, item, progress(100), A).status_code == 200
        assert summary(receive(ws))[:2] == (5, PROGRESS)
    # delivered reports are not sent again
    assert update(a, item, progress(99), A).status_code == 200
    with channel(nodes, watcher) as ws:
        assert summary(receive(ws))[:2] == (6, PROGRESS)


def test_a_cancellation_request_reaches_the_performer(nodes, a):
    item, performer = scheduled(a), title()
    assert change(a, item, "IN PROGRESS", A).status_code == 200
    assert subscribe(a, item, performer).status_code == 201
    reason = dataset(ReasonForCancellation="Patient left")
    r = a.post(f"/workitems/{item}/cancelrequest", content=json.dumps([reason]), headers=JSON)
    assert r.status_code == 202, r.text
    with channel(nodes, performer) as ws:
        assert summary(receive(ws)) == (1, STATE, item, "IN PROGRESS")
        told = receive(ws)
    assert summary(told)[:2] == (2, CANCEL_REQUESTED)
    assert told["00741238"]["Value"] == ["Patient left"]
    assert a.get(f"/workitems/{item}").json()[0]["00741000"]["Value"] == ["IN PROGRESS"]


def test_unsubscribing_stops_delivery(nodes, a):
    item, marker, watcher = scheduled(a), scheduled(a), title()
    assert subscribe(a, item, watcher).status_code == 201
    assert change(a, item, "IN PROGRESS", A).status_code == 200  # queued, never delivered
    assert a.delete(f"/workitems/{item}/subscribers/{watcher}").status_code == 200
    assert update(a, item, progress(5), A).status_code == 200
    assert subscribe(a, marker, watcher).status_code == 201
    with channel(nodes, watcher) as ws:
        assert summary(receive(ws))[1:3] == (STATE, marker)  # nothing of the other one
    # not subscribed any more: 409 (C308)
    refused(a.delete(f"/workitems/{item}/subscribers/{watcher}"), 409, "C308")


def test_concurrent_changes_on_both_nodes_are_numbered_without_gaps(nodes, a, b):
    """Changes committed side by side (two nodes, or two processes) are reported to one
    subscriber with contiguous sequence numbers, in an order consistent with each workitem's
    own changes: no number is skipped, repeated or delivered after a greater one."""
    watcher, patient = title(), f"PC{next(_titles)}"
    assert subscribe(a, FILTERED, watcher, f"?filter=PatientID={patient}").status_code == 201
    items = [new_uid() for _ in range(12)]

    def work(http, mine):
        for item in mine:
            assert create(http, [workitem(PatientID=patient)], "?" + item).status_code == 201
            assert change(http, item, "IN PROGRESS", A).status_code == 200

    with channel(nodes, watcher) as ws:
        threads = [
            threading.Thread(target=work, args=(http, items[n::2])) for n, http in enumerate((a, b))
        ]
        for t in threads:
            t.start()
        got = [summary(receive(ws)) for _ in range(2 * len(items))]
        for t in threads:
            t.join()
    assert [g[0] for g in got] == list(range(1, 2 * len(items) + 1))
    for item in items:
        assert [g[3] for g in got if g[2] == item] == ["SCHEDULED", "IN PROGRESS"]
    assert a.delete(f"/workitems/{FILTERED}/subscribers/{watcher}").status_code == 200


# -- global subscriptions ------------------------------------------------------------------------


def test_the_global_subscription_reports_creations_and_existing_workitems(nodes, a, b):
    existing, watcher = scheduled(a), title()
    r = subscribe(b, GLOBAL, watcher, "?deletionlock=true")
    assert r.status_code == 201, r.text
    with channel(nodes, watcher) as ws:
        assert summary(until(ws, existing))[1:] == (STATE, existing, "SCHEDULED")
        created = scheduled(a)
        assert summary(until(ws, created))[1:] == (STATE, created, "SCHEDULED")
        assert change(a, created, "IN PROGRESS", A).status_code == 200
        assert summary(until(ws, created))[1:] == (STATE, created, "IN PROGRESS")
        # the deletion lock: a finished workitem stays (dicomhub never deletes workitems)
        assert update(a, created, PERFORMED, A).status_code == 200
        assert change(a, created, "COMPLETED", A).status_code == 200
        assert summary(until(ws, created))[3] == "COMPLETED"
    assert a.get(f"/workitems/{created}").status_code == 200
    assert a.delete(f"/workitems/{GLOBAL}/subscribers/{watcher}").status_code == 200


def test_the_filtered_global_subscription_reports_only_matching_workitems(nodes, a):
    watcher, patient = title(), f"PF{next(_titles)}"
    query = f"?filter=PatientID={patient},ScheduledStationNameCodeSequence.CodeValue=STATION-A"
    assert subscribe(a, FILTERED, watcher, query).status_code == 201
    with channel(nodes, watcher) as ws:
        other = scheduled(a, PatientID="someone-else")
        elsewhere = scheduled(a, PatientID=patient, ScheduledStationNameCodeSequence=[])
        matching = scheduled(a, PatientID=patient)
        got = receive(ws)  # the first report it gets is the matching one's
        assert summary(got)[1:] == (STATE, matching, "SCHEDULED")
    for item in (other, elsewhere):
        assert change(a, item, "IN PROGRESS", A).status_code == 200
    assert change(a, matching, "IN PROGRESS", A).status_code == 200
    with channel(nodes, watcher) as ws:
        assert summary(receive(ws))[1:] == (STATE, matching, "IN PROGRESS")
    assert a.delete(f"/workitems/{FILTERED}/subscribers/{watcher}").status_code == 200


def test_a_suspended_global_subscription_keeps_its_workitems_but_gets_no_new_ones(nodes, a):
    watcher = title()
    assert subscribe(a, GLOBAL, watcher).status_code == 201
    kept = scheduled(a)
    with channel(nodes, watcher) as ws:
        assert summary(until(ws, kept))[1] == STATE
    assert a.post(f"/workitems/{GLOBAL}/subscribers/{watcher}/suspend").status_code == 200
    later = scheduled(a)
    assert change(a, later, "IN PROGRESS", A).status_code == 200
    assert change(a, kept, "IN PROGRESS", A).status_code == 200
    with channel(nodes, watcher) as ws:
        report = receive(ws)
        while summary(report)[2] not in (kept, later):  # other tests' workitems, created before
            report = receive(ws)
        assert summary(report)[2:] == (kept, "IN PROGRESS")
    # subscribing again resumes it
    assert subscribe(a, GLOBAL, watcher).status_code == 201
    assert a.delete(f"/workitems/{GLOBAL}/subscribers/{watcher}").status_code == 200
    refused(a.post(f"/workitems/{GLOBAL}/subscribers/{watcher}/suspend"), 409, "C308")


# -- bad input -----------------------------------------------------------------------------------


def test_bad_subscriptions_are_refused_and_change_nothing(nodes, a):
    item, watcher = scheduled(a), title()
    refused(subscribe(a, new_uid(), watcher), 404, "C307")
    assert subscribe(a, "1.2.x", watcher).status_code == 400
    for bad in ("A" * 17, "BAD%5CAE", "%20%20"):
        r = subscribe(a, item, bad)
        assert r.status_code == 400, (bad, r.text)
    assert subscribe(a, item, watcher, "?deletionlock=maybe").status_code == 400
    assert subscribe(a, item, watcher, "?deletionlock=true&colour=red").status_code == 400
    refused(subscribe(a, item, watcher, "?filter=PatientID=P0"), 400, "0106")
    refused(subscribe(a, GLOBAL, watcher, "?filter=PatientID=P0"), 400, "0106")
    for query in ("", "?filter=Colour=red", "?filter=limit=5", "?filter=PatientID", "?filter=x"):
        refused(subscribe(a, FILTERED, watcher, query), 400, "0106")
    refused(a.post(f"/workitems/{item}/subscribers/{watcher}/suspend"), 400, "0106")
    refused(a.delete(f"/workitems/{new_uid()}/subscribers/{watcher}"), 404, "C307")
    refused(a.delete(f"/workitems/{item}/subscribers/{watcher}"), 409, "C308")
    # nothing was subscribed: the first report the subscriber ever gets is the marker's
    marker = scheduled(a)
    assert change(a, item, "IN PROGRESS", A).status_code == 200
    assert subscribe(a, marker, watcher).status_code == 201
    with channel(nodes, watcher) as ws:
        assert summary(receive(ws))[:3] == (1, STATE, marker)


def test_the_channel_without_an_upgrade_is_426(a):
    r = a.get("/subscribers/WATCHER")
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
    assert r.headers["content-type"] == "application/problem+json"
    # a malformed AE title is refused as such first (found by the fuzzer: it was 426)
    assert a.get("/subscribers/" + "A" * 17).status_code == 400


def test_a_malformed_ae_title_cannot_open_a_channel(nodes):
    with pytest.raises(InvalidStatus) as refused_:
        with channel(nodes, "A" * 17):
            pass
    assert refused_.value.response.status_code == 400  # the denial response, PS3.18 8.3
    assert refused_.value.response.headers["content-type"] == "application/problem+json"
    assert json.loads(refused_.value.response.body)["dicomStatus"] == "0106"


def test_each_channel_is_audited(nodes, a):
    since = utcnow().isoformat()
    item, watcher = scheduled(a), title()
    assert subscribe(a, item, watcher).status_code == 201
    with channel(nodes, watcher, node=0) as ws:
        receive(ws)
    with pytest.raises(InvalidStatus):
        with channel(nodes, "BAD\\AE", node=0):
            pass
    entries = []
    for _ in range(300):  # the audit log is written in batches, when the channel has ended
        found = a.get("/audit", params={"action": "read", "since": since}).json()
        entries = [
            e
            for e in found
            if e["route"] == "v2-events" and e["detail"].get("subscriber") in (watcher, "BAD\\AE")
        ]
        if len(entries) >= 2:
            break
        threading.Event().wait(0.1)
    seen = {(e["detail"]["subscriber"], e["status"], e["action"]) for e in entries}
    assert seen == {(watcher, 101, "read"), ("BAD\\AE", 400, "read")}
    assert len(entries) == 2 and all(e["requestId"] for e in entries)  # one entry per channel
    (opened,) = [e for e in entries if e["status"] == 101]
    assert opened["detail"]["reports"] == 1 and opened["detail"]["last_sequence"] == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_restarted_node_reports_its_status_change(tmp_path, workers):
    """PS3.4 CC.2.4.2: when the node starts again, each subscriber is sent one SCP Status
    Change (RESTARTED, WARM START: its subscriptions and the workitems were kept), after the
    reports it already had, and keeps its subscriptions."""
    watcher, other = title(), title()
    with running_server(tmp_path, workers=workers) as (url, _):
        with httpx.Client(base_url=url + "/v2", timeout=30) as http:
            item = scheduled(http)
            assert subscribe(http, item, watcher).status_code == 201
            assert subscribe(http, GLOBAL, other).status_code == 201
    with running_server(tmp_path, workers=workers) as (url, _):
        nodes_ = (url + "/v2", url + "/v2")
        with channel(nodes_, watcher) as ws:
            initial, restarted = receive(ws), receive(ws)
        assert summary(initial) == (1, STATE, item, "SCHEDULED")
        assert summary(restarted) == (2, 4, GLOBAL, None)
        assert restarted["00741242"]["Value"] == ["RESTARTED"]
        assert restarted["00741244"]["Value"] == ["WARM START"]
        assert restarted["00741246"]["Value"] == ["WARM START"]
        with channel(nodes_, other) as ws:
            reports = [receive(ws) for _ in range(2)]
            with pytest.raises(TimeoutError):  # one report per start, not one per process
                ws.recv(timeout=1.5)
        assert [r["00001002"]["Value"][0] for r in reports] == [STATE, 4]
        with httpx.Client(base_url=url + "/v2", timeout=30) as http:  # still subscribed
            assert change(http, item, "IN PROGRESS", A).status_code == 200
        with channel(nodes_, watcher) as ws:
            assert summary(receive(ws)) == (3, STATE, item, "IN PROGRESS")
