"""The live event stream's StudyStable, SeriesStable and OperationFinished events (issue 23
point 4; docs/events.md): `dicomhub serve` (SQLite and PostgreSQL) read over real sockets. A
study (series) is told stable once, after the quiet period, not while instances keep arriving;
a partition filter keeps another partition's out; a stream resumed after a change of a study not
yet told stable tells it; finished operations arrive, on a resume too. None of these messages
carries an SSE id (the id a client resumes from stays a change-feed sequence)."""

from __future__ import annotations

import threading
import time

import httpx

from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid
from tests.test_webhook_operations import FINISHED, add_tag, bulk_update
from tests.test_webhooks import (  # noqa: F401
    CREATED,
    SERIES_STABLE,
    STABLE,
    read_stream,
    server,
    server_index,
    stow,
)

DEFAULT = "Microsoft.Default"


def latest(url: str) -> int:
    return httpx.get(f"{url}/v2/changefeed/latest").json()["sequence"]


def readers(url: str, **streams: dict) -> tuple[dict, list[threading.Thread]]:
    """Each named stream read to its end (--event-stream-seconds) in a thread of its own."""
    got: dict[str, list] = {}

    def read(name: str, params: dict) -> None:
        got[name] = read_stream(url, 10_000, params=params)

    threads = [threading.Thread(target=read, args=item) for item in streams.items()]
    for t in threads:
        t.start()
    return got, threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def stable(got: list) -> list[tuple[str | None, str, str, str, str | None]]:
    """(SSE id, type, CloudEvent id, partition, series) of each message, sorted."""
    return sorted(
        (i, e, d["id"], d["data"]["partitionName"], d["data"].get("imageSeriesInstanceUid"))
        for i, e, d in got
    )


def test_the_live_stream_tells_stable_studies_and_series(tmp_path, server_index):  # noqa: F811
    study, series = uid(260), uid(260, 1)
    clinic_study, clinic_series = uid(261), uid(261, 1)
    settings = dict(
        webhook_study_stable_after="2", event_stream_seconds="10", data_partitions="true"
    )
    with server(tmp_path, server_index, **settings) as (url, _):
        types = f"{STABLE},{SERIES_STABLE}"
        got, threads = readers(
            url,
            all={"eventTypes": types},
            default={"eventTypes": types, "partition": DEFAULT},
            clinic={"eventTypes": STABLE, "partition": "clinic"},
        )
        time.sleep(1)  # the streams are open
        for n in range(3):  # each within the quiet period after the one before
            stow(url, instance(study, series, uid(260, 1, n)))
            time.sleep(1)
        last = latest(url)
        r = httpx.post(
            f"{url}/v2/partitions/clinic/studies",
            content=multipart(instance(clinic_study, clinic_series, uid(261, 1, 0))),
            headers={"Content-Type": MULTIPART},
        )
        assert r.status_code == 200, r.text
        clinic_last = latest(url)
        join(threads)
        ours = [
            (None, SERIES_STABLE, f"{last}.series-stable", DEFAULT, series),
            (None, STABLE, f"{last}.stable", DEFAULT, None),
        ]
        clinic = [(None, STABLE, f"{clinic_last}.stable", "clinic", None)]
        theirs = [(None, SERIES_STABLE, f"{clinic_last}.series-stable", "clinic", clinic_series)]
        # once each, named after the last change: none while the instances kept coming
        assert stable(got["all"]) == sorted(ours + clinic + theirs)
        assert stable(got["default"]) == ours
        assert stable(got["clinic"]) == clinic
        event = next(d for _, e, d in got["default"] if e == STABLE)
        assert event["specversion"] == "1.0" and event["type"] == STABLE
        assert event["subject"].endswith(f"/v2/studies/{study}")
        assert event["data"] == {
            "partitionName": DEFAULT,
            "imageStudyInstanceUid": study,
            "serviceHostName": event["data"]["serviceHostName"],
            "sequenceNumber": last,
        }


def test_a_resumed_live_stream_tells_a_study_stable_it_had_not(tmp_path, server_index):  # noqa: F811
    """The first stream ends before the study's quiet period does; the one resumed from its
    last id tells it (and a stream resumed there again tells it again, the same CloudEvent id:
    at least once), a stream from now on does not (it became stable before)."""
    study, series = uid(262), uid(262, 1)
    settings = dict(webhook_study_stable_after="4", event_stream_seconds="3")
    with server(tmp_path, server_index, **settings) as (url, _):
        types = f"{CREATED},{STABLE}"
        got, threads = readers(url, first={"eventTypes": types})
        time.sleep(0.5)
        stow(url, instance(study, series, uid(262, 1, 0)))
        join(threads)
        [(sequence, kind, _)] = got["first"]
        assert kind == CREATED and sequence == str(latest(url))
        again = read_stream(url, 10_000, params={"eventTypes": types, "after": sequence})
        told = [(i, e, d["id"], d["data"]["imageStudyInstanceUid"]) for i, e, d in again]
        assert told == [(None, STABLE, f"{sequence}.stable", study)]
        got, threads = readers(
            url,
            resumed={"eventTypes": types, "after": sequence},
            fresh={"eventTypes": types},
        )
        join(threads)
        assert [(i, e, d["id"]) for i, e, d in got["resumed"]] == [
            (None, STABLE, f"{sequence}.stable")
        ]
        assert got["fresh"] == []


def test_the_live_stream_tells_finished_operations(tmp_path, server_index):  # noqa: F811
    study, series = uid(263), uid(263, 1)
    settings = dict(job_poll_interval="0.1", event_stream_seconds="6")
    with server(tmp_path, server_index, **settings) as (url, _):
        stow(url, *(instance(study, series, uid(263, 1, n)) for n in range(2)))
        start = latest(url)
        got, threads = readers(
            url,
            all={"eventTypes": FINISHED},
            default={"eventTypes": f"{FINISHED},{CREATED}", "partition": DEFAULT},
        )
        time.sleep(1)  # the streams are open
        update, reindex = bulk_update(url, study), add_tag(url)
        join(threads)
        by_type = {d["data"]["operationType"]: (i, e, d) for i, e, d in got["all"]}
        assert len(got["all"]) == 2 and set(by_type) == {"update", "reindex"}
        for state in (update, reindex):
            i, e, event = by_type[state["type"]]
            assert i is None and e == FINISHED == event["type"]
            assert event["id"] == f"{state['operationId']}.finished"
            assert event["subject"].endswith(f"/v2/operations/{state['operationId']}")
            data = event["data"]
            assert data["operationId"] == state["operationId"]
            assert data["status"] == state["status"] == "completed"
            assert data["results"] == state["results"] and data["errors"] == state["errors"]
            assert data["percentComplete"] == 100
            assert data["href"] == f"{url}/v2/operations/{state['operationId']}"
        assert by_type["update"][2]["data"]["partitionName"] == DEFAULT
        assert by_type["reindex"][2]["data"]["partitionName"] is None
        # a partition's stream: not the server-wide reindex; the image events have their ids
        [told] = [d for i, e, d in got["default"] if e == FINISHED]
        assert told["id"] == f"{update['operationId']}.finished"
        assert all(i is not None for i, e, _ in got["default"] if e != FINISHED)
        # resumed from a change before they finished: told again
        again = read_stream(url, 10_000, params={"eventTypes": FINISHED, "after": str(start)})
        assert sorted(d["id"] for _, _, d in again) == sorted(
            f"{s['operationId']}.finished" for s in (update, reindex)
        )
