"""UPS Watch and Event per data partition over real sockets (`dicomhub serve --data-partitions
true`, SQLite and PostgreSQL, the `websockets` client): the same workitem UID in the default
partition and in clinic-a, the same AE title subscribed in both; each partition's
subscriptions, global subscriptions, suspension and event channel stay apart: a partition's
reports reach its own subscribers only, numbered apart; unknown partitions are 400."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import index_database, running_server
from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid
from tests.test_workitem_events import GLOBAL, STATE, receive, summary
from tests.test_workitems import JSON, A, change, new_uid, refused, workitem

PARTITION = "clinic-a"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(tmp_path_factory, request):
    """The server's base URL, clinic-a created (by a store)."""
    data = tmp_path_factory.mktemp("partition-events")
    with index_database(request.param) as index:
        with running_server(data, index_url=index, data_partitions="true") as (url, _):
            r = httpx.post(
                f"{url}/v2/partitions/{PARTITION}/studies",
                content=multipart(instance(uid(570), uid(570, 1), uid(570, 1, 1))),
                headers={"Content-Type": MULTIPART},
            )
            assert r.status_code == 200, r.text
            yield url


@pytest.fixture
def default(served):
    with httpx.Client(base_url=served + "/v2", timeout=30) as client:
        yield client


@pytest.fixture
def clinic(served):
    with httpx.Client(base_url=f"{served}/v2/partitions/{PARTITION}", timeout=30) as client:
        yield client


def channel(http: httpx.Client, subscriber: str):
    url = re.sub(r"^http", "ws", str(http.base_url).rstrip("/")) + f"/subscribers/{subscriber}"
    return connect(url, open_timeout=30, close_timeout=5)


def schedule(http: httpx.Client, item: str, name: str) -> None:
    r = http.post(
        f"/workitems?{item}", content=json.dumps([workitem(PatientName=name)]), headers=JSON
    )
    assert r.status_code == 201, r.text


def test_one_workitem_uid_two_partitions_two_subscriptions(default, clinic):
    item, watcher = new_uid(), "PWATCH1"
    schedule(default, item, "Default^Item")
    schedule(clinic, item, "Clinic^Item")
    r = clinic.post(f"/workitems/{item}/subscribers/{watcher}")
    assert r.status_code == 201, r.text
    location = r.headers["content-location"]
    assert location.endswith(f"/v2/partitions/{PARTITION}/workitems/{item}/subscribers/{watcher}")
    # the default partition's copy is claimed, the clinic's canceled: the clinic's subscriber
    # hears of its own only
    assert change(default, item, "IN PROGRESS", A).status_code == 200
    assert clinic.post(f"/workitems/{item}/cancelrequest").status_code == 202
    with channel(clinic, watcher) as ws:
        first, second = receive(ws), receive(ws)
    assert summary(first) == (1, STATE, item, "SCHEDULED")
    assert summary(second) == (2, STATE, item, "CANCELED")
    # the same AE title in the default partition: a subscriber of its own, numbered apart
    refused(default.delete(f"/workitems/{item}/subscribers/{watcher}"), 409, "C308")
    assert default.post(f"/workitems/{item}/subscribers/{watcher}").status_code == 201
    with channel(default, watcher) as ws:
        mine = receive(ws)
    assert summary(mine) == (1, STATE, item, "IN PROGRESS")
    # unsubscribing in the clinic leaves the default partition's subscription
    assert clinic.delete(f"/workitems/{item}/subscribers/{watcher}").status_code == 200
    assert default.post(f"/workitems/{item}/cancelrequest").status_code == 202
    with channel(default, watcher) as ws:
        assert summary(receive(ws))[:3] == (2, 2, item)  # UPS Cancel Requested, its own
    refused(clinic.delete(f"/workitems/{item}/subscribers/{watcher}"), 409, "C308")


def test_global_subscriptions_are_the_partitions(default, clinic):
    watcher = "PGLOBAL1"
    before_default, before_clinic = new_uid(), new_uid()
    schedule(default, before_default, "Default^Before")
    schedule(clinic, before_clinic, "Clinic^Before")
    assert clinic.post(f"/workitems/{GLOBAL}/subscribers/{watcher}").status_code == 201
    refused(default.post(f"/workitems/{GLOBAL}/subscribers/{watcher}/suspend"), 409, "C308")
    later_default, later_clinic = new_uid(), new_uid()
    schedule(default, later_default, "Default^Later")
    schedule(clinic, later_clinic, "Clinic^Later")
    assert clinic.post(f"/workitems/{GLOBAL}/subscribers/{watcher}/suspend").status_code == 200
    suspended = new_uid()
    schedule(clinic, suspended, "Clinic^Suspended")  # no longer joined
    marker = new_uid()
    schedule(clinic, marker, "Clinic^Marker")
    assert clinic.post(f"/workitems/{marker}/subscribers/{watcher}").status_code == 201
    with channel(clinic, watcher) as ws:
        got = []
        while not got or got[-1]["00001000"]["Value"][0] != marker:
            got.append(receive(ws))
    items = [r["00001000"]["Value"][0] for r in got]
    assert before_clinic in items and later_clinic in items
    assert before_default not in items and later_default not in items
    assert suspended not in items
    clinic_items = {w["00080018"]["Value"][0] for w in clinic.get("/workitems").json()}
    assert set(items) <= clinic_items
    assert [summary(r)[0] for r in got] == list(range(1, len(got) + 1))
    # the default partition has no channel content for this AE title
    assert default.post(f"/workitems/{marker}/subscribers/{watcher}").status_code == 404


def test_unknown_partitions_are_refused(served, clinic):
    item = new_uid()
    schedule(clinic, item, "Clinic^Only")
    with httpx.Client(base_url=f"{served}/v2/partitions/nowhere", timeout=30) as nowhere:
        r = nowhere.post(f"/workitems/{item}/subscribers/PWATCH9")
        assert r.status_code == 400 and "does not exist" in r.text
        assert nowhere.get("/subscribers/PWATCH9").status_code == 400
        with pytest.raises(InvalidStatus) as caught:
            channel(nowhere, "PWATCH9")
        assert caught.value.response.status_code == 400
    bad = f"{served}/v2/partitions/bad name/subscribers/PWATCH9"
    assert httpx.get(bad).status_code == 400
    assert clinic.get("/subscribers/PWATCH9").status_code == 426
    # the workitem is the clinic's: the default partition has no such workitem
    assert httpx.post(f"{served}/v2/workitems/{item}/subscribers/PWATCH9").status_code == 404
