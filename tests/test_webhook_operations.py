"""dicomhub.OperationFinished (conformance 7.9): an export, a bulk update and an extended-query-
tag reindex that finish are told to a real receiver by `dicomhub serve` (SQLite and
PostgreSQL), with the operation's id, type, status, results and href, as the operation resource
gives them; the event is written with the operation's final state (the receiver never sees an
operation still running); a partition filter keeps a server-wide reindex out; a refused event is
dead-lettered and replayed by its id."""

from __future__ import annotations

import time

import httpx

from tests.synthetic import instance, uid
from tests.test_webhooks import (  # noqa: F401
    CREATED,
    Receiver,
    receiver,
    server,
    server_index,
    stow,
    subscribe,
    verify,
)

FINISHED = "dicomhub.OperationFinished"


def finished(url: str, r: httpx.Response) -> dict:
    assert r.status_code == 202, r.text
    href = r.json()["href"]
    deadline = time.monotonic() + 60
    while True:
        state = httpx.get(href).json()
        if state["status"] in ("completed", "failed"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def bulk_update(url: str, study: str) -> dict:
    """A bulk update of the study's PatientName, finished: its operation's state."""
    change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}
    body = {"studyInstanceUids": [study], "changeDataset": change}
    return finished(url, httpx.post(f"{url}/v2/studies/$bulkUpdate", json=body))


def add_tag(url: str) -> dict:
    """An extended query tag added (PatientWeight), its reindex finished: its state."""
    body = [{"path": "PatientWeight", "level": "Study"}]
    return finished(url, httpx.post(f"{url}/v2/extendedquerytags", json=body))


def test_finished_operations_are_told(tmp_path, server_index, receiver):  # noqa: F811
    study, series = uid(250), uid(250, 1)
    settings = dict(job_poll_interval="0.1", export_allow=(tmp_path / "out").as_uri())
    with server(tmp_path, server_index, **settings) as (url, _):
        stow(url, *(instance(study, series, uid(250, 1, n)) for n in range(2)))
        sub = subscribe(url, receiver, eventTypes=[FINISHED, CREATED])
        scoped = Receiver()  # a partition's subscriber: no server-wide reindex
        scoped.start()
        try:
            subscribe(url, scoped, eventTypes=[FINISHED], filter={"partition": "Microsoft.Default"})
            update = bulk_update(url, study)
            export = finished(
                url,
                httpx.post(
                    f"{url}/v2/export",
                    json={
                        "source": {"type": "identifiers", "settings": {"values": [study]}},
                        "destination": {
                            "type": "blob",
                            "settings": {"url": (tmp_path / "out" / "run").as_uri()},
                        },
                    },
                ),
            )
            reindex = add_tag(url)
            events = receiver.wait_for(3)
            time.sleep(1)
            got = {e["data"]["operationType"]: e for e in receiver.events()}
            assert len(receiver.received) == 3 and set(got) == {"update", "export", "reindex"}
            for state in (update, export, reindex):
                event = got[state["type"]]
                assert event["type"] == FINISHED
                assert event["id"] == f"{state['operationId']}.finished"
                assert event["subject"].endswith(f"/v2/operations/{state['operationId']}")
                data = event["data"]
                assert data["operationId"] == state["operationId"]
                assert data["status"] == state["status"] == "completed"
                assert data["results"] == state["results"]
                assert data["errors"] == state["errors"]
                assert data["percentComplete"] == 100
                assert data["href"] == f"{url}/v2/operations/{state['operationId']}"
            assert got["export"]["data"]["results"]["exported"] == 2
            assert got["update"]["data"]["partitionName"] == "Microsoft.Default"
            assert got["reindex"]["data"]["partitionName"] is None
            assert all(verify(sub["secret"], *r) for r in receiver.received)
            assert sorted(e["data"]["operationType"] for e in scoped.wait_for(2)) == [
                "export",
                "update",
            ]
            time.sleep(0.5)
            assert len(scoped.received) == 2
            assert {e["type"] for e in events} == {FINISHED}  # no image event: none was made
        finally:
            scoped.stop()


def test_a_refused_operation_event_is_dead_lettered_and_replayed(
    tmp_path,
    server_index,  # noqa: F811
    receiver,  # noqa: F811
):
    with server(tmp_path, server_index, job_poll_interval="0.1", webhook_retry_window="1") as (
        url,
        _,
    ):
        stow(url, instance(uid(251), uid(251, 1), uid(251, 1, 0)))
        sub = subscribe(url, receiver, eventTypes=[FINISHED])
        receiver.status = 503
        state = finished(
            url,
            httpx.post(
                f"{url}/v2/extendedquerytags", json=[{"path": "PatientWeight", "level": "Study"}]
            ),
        )
        event_id = f"{state['operationId']}.finished"
        deadline = time.monotonic() + 30
        while not (dead := httpx.get(f"{url}/v2/subscriptions/{sub['id']}/deadletters").json()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert [(d["id"], d["eventType"]) for d in dead] == [(event_id, FINISHED)]
        receiver.status = 200
        r = httpx.post(f"{url}/v2/subscriptions/{sub['id']}/deadletters/{event_id}/replay")
        assert r.status_code == 202, r.text
        [event] = receiver.wait_for(1)
        assert event["id"] == event_id and event["data"]["operationType"] == "reindex"
        assert httpx.get(f"{url}/v2/subscriptions/{sub['id']}/deadletters").json() == []
        for bad in ("x.finished", "a b.finished", "1.finishd"):
            r = httpx.post(f"{url}/v2/subscriptions/{sub['id']}/deadletters/{bad}/replay")
            assert r.status_code in (400, 404), (bad, r.text)
        r = httpx.post(f"{url}/v2/subscriptions/{sub['id']}/deadletters/1.finishd/replay")
        assert r.status_code == 400, r.text
