"""Concurrent upserts of one instance, and upserts against deletes, over real sockets on a
`dicomhub serve` process (SQLite, and PostgreSQL): one request wins wholly each time, a reader
of the study never sees a mix of versions, an error or a missing instance, and once the study
is deleted the cleanup job leaves no blob behind."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dicomhub.dicom.mediatype import parse_media_type
from dicomhub.dicom.multipart import MultipartParser, PartData, PartEnd
from tests.conftest import index_database, running_server
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart, stored_blobs
from tests.synthetic import instance, uid

STUDY, SERIES = uid(80), uid(80, 1)
X, Y = uid(80, 1, 1), uid(80, 1, 2)  # X is replaced again and again, Y stays
ROUNDS = 12
ORIGINAL = {"msdicom-request-original": "true"}


def named(sop: str, name: str) -> bytes:
    return instance(STUDY, SERIES, sop, PatientName=name, PatientID="RACE")


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # a replaced version's file outlives the readers that chose it a moment before (with no
    # delay at all, one could be removed between a reader's listing and its read)
    settings = {"delete_delay": "3", "cleanup_interval": "0.2", "workers": "2"}
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            settings["index_url"] = stack.enter_context(index_database("postgresql"))
        # SQLite with two server processes: their writes go through one writer process
        # (storage/sqlite_writer), the upsert operation pickled to it
        url, _ = stack.enter_context(running_server(data, **settings))
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, data, settings.get("index_url")


def put(client: httpx.Client, *parts: bytes) -> httpx.Response:
    return client.put("/v2/studies", content=multipart(*parts), headers={"Content-Type": MULTIPART})


def parts_of(response: httpx.Response) -> list[bytes]:
    media = parse_media_type(response.headers["content-type"])
    parser = MultipartParser(media.params["boundary"])
    out, current = [], b""
    for event in parser.feed(response.content):
        if isinstance(event, PartData):
            current += event.data
        elif isinstance(event, PartEnd):
            out.append(current)
            current = b""
    return out


def read_study(client: httpx.Client) -> dict[str, str]:
    """SOP Instance UID -> PatientName, from the study's metadata and from its files (two
    requests, each of which must be whole)."""
    meta = client.get(f"/v2/studies/{STUDY}/metadata")
    assert meta.status_code == 200, meta.text
    from_metadata = {
        item["00080018"]["Value"][0]: item["00100010"]["Value"][0]["Alphabetic"]
        for item in meta.json()
    }
    assert len(meta.json()) == 2, meta.text
    files = client.get(
        f"/v2/studies/{STUDY}", headers={"Accept": "multipart/related; type=application/dicom"}
    )
    assert files.status_code == 200, files.text
    datasets = [read(p) for p in parts_of(files)]
    from_files = {ds.SOPInstanceUID: str(ds.PatientName) for ds in datasets}
    assert len(datasets) == 2 and set(from_files) == set(from_metadata) == {X, Y}
    return from_metadata | {f"file:{k}": v for k, v in from_files.items()}


def eventually(check, what: str, limit: float = 60) -> None:
    """Wait for the background cleanup job (not a timed assertion: a generous limit)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_concurrent_upserts_never_show_a_mix(server):
    client, data, index = server
    assert put(client, named(X, "Orig^X"), named(Y, "Still^Y")).status_code == 200
    names = {f"W{w}^{n}" for w in range(2) for n in range(ROUNDS)}
    done = threading.Event()

    def writer(w: int) -> list[int]:
        return [put(client, named(X, f"W{w}^{n}")).status_code for n in range(ROUNDS)]

    def reader() -> int:
        reads = 0
        while not done.is_set() or reads == 0:
            seen = read_study(client)
            assert seen[Y] == seen[f"file:{Y}"] == "Still^Y"
            assert seen[X] in names | {"Orig^X"} and seen[f"file:{X}"] in names | {"Orig^X"}
            original = client.get(
                f"/v2/studies/{STUDY}/series/{SERIES}/instances/{X}/metadata", headers=ORIGINAL
            )
            assert original.status_code == 200
            assert original.json()[0]["00100010"]["Value"][0]["Alphabetic"] == "Orig^X"
            reads += 1
        return reads

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader) for _ in range(2)]
        writers = [pool.submit(writer, w) for w in range(2)]
        statuses = [s for f in writers for s in f.result()]
        done.set()
        assert all(f.result() > 0 for f in readers)
    assert statuses == [200] * (2 * ROUNDS)
    final = read_study(client)
    assert final[X] == final[f"file:{X}"] in {f"W0^{ROUNDS - 1}", f"W1^{ROUNDS - 1}"}
    feed = client.get("/v1/changefeed", params={"limit": 100}).json()
    actions = [(e["action"], e["sopInstanceUid"], e["state"]) for e in feed]
    assert actions[:2] == [("create", X, "replaced"), ("create", Y, "current")]
    assert actions[2:-1] == [("update", X, "replaced")] * (2 * ROUNDS - 1)
    assert actions[-1] == ("update", X, "current")
    assert feed[-1]["metadata"]["00100010"]["Value"][0]["Alphabetic"] == final[X]
    # the versions in between go with the cleanup job: X's original and latest, and Y
    eventually(lambda: len(stored_blobs(data, index)) == 3, "versions in between removed")
    assert client.delete(f"/v2/studies/{STUDY}").status_code == 204
    eventually(lambda: stored_blobs(data, index) == [], "every version removed after the delete")


def test_upserts_against_deletes(server):
    """PUT and DELETE of one instance at once: each wins wholly; whatever is left is whole
    (latest and original retrievable), and nothing is orphaned."""
    client, data, index = server
    assert put(client, named(Y, "Still^Y")).status_code == 200
    path = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{X}"

    def writer() -> list[int]:
        return [put(client, named(X, f"P^{n}")).status_code for n in range(ROUNDS)]

    def deleter() -> list[int]:
        return [client.delete(path).status_code for _ in range(ROUNDS)]

    with ThreadPoolExecutor(2) as pool:
        puts, deletes = pool.submit(writer), pool.submit(deleter)
        assert set(puts.result()) == {200}
        assert set(deletes.result()) <= {204, 404}
    latest = client.get(path + "/metadata")
    if latest.status_code == 200:  # the last word was a PUT
        original = client.get(path + "/metadata", headers=ORIGINAL)
        assert original.status_code == 200
        latest_name = latest.json()[0]["00100010"]["Value"][0]["Alphabetic"]
        original_name = original.json()[0]["00100010"]["Value"][0]["Alphabetic"]
        got = client.get(path, headers={"Accept": "application/dicom", **ORIGINAL})
        assert str(read(got.content).PatientName) == original_name
        expected = 1 + (1 if original_name == latest_name else 2)
    else:
        assert latest.status_code == 404
        expected = 1
    eventually(lambda: len(stored_blobs(data, index)) == expected, f"{expected} blobs kept")
    assert client.delete(f"/v2/studies/{STUDY}").status_code == 204
    eventually(lambda: stored_blobs(data, index) == [], "every version removed after the delete")
    feed = client.get("/v1/changefeed", params={"limit": 100}).json()
    assert {e["state"] for e in feed} <= {"replaced", "deleted"}


def test_a_whole_study_replaced_at_once(server):
    """PUTs that each replace every instance of a 500-instance study, two at a time, while
    clients read it: each request commits wholly (one transaction), so every metadata and
    search answer holds one request's name for all 500 instances, never a mix."""
    client, *_ = server
    study, series, count = uid(83), uid(83, 1), 500

    def whole(name: str) -> list[bytes]:
        return [instance(study, series, uid(83, 1, n), PatientName=name) for n in range(count)]

    assert put(client, *whole("First^Name")).status_code == 200
    done = threading.Event()

    def writer(w: int) -> list[int]:
        return [put(client, *whole(f"W{w}^{n}")).status_code for n in range(2)]

    def reader() -> list[set[str]]:
        seen: list[set[str]] = []
        while not done.is_set() or not seen:
            meta = client.get(f"/v2/studies/{study}/metadata")
            assert meta.status_code == 200, meta.text
            found = client.get(
                f"/v2/studies/{study}/instances",
                params={"includefield": "00100010", "limit": count},
            )
            assert found.status_code == 200, found.text
            for answer in (meta.json(), found.json()):
                assert len(answer) == count
                seen.append({item["00100010"]["Value"][0]["Alphabetic"] for item in answer})
        return seen

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader) for _ in range(2)]
        writers = [pool.submit(writer, w) for w in range(2)]
        statuses = [s for f in writers for s in f.result()]
        done.set()
        seen = [names for f in readers for names in f.result()]
    assert statuses == [200] * 4
    assert all(len(names) == 1 for names in seen), [sorted(n) for n in seen if len(n) > 1]
    final = client.get(f"/v2/studies/{study}/metadata").json()
    assert {item["00100010"]["Value"][0]["Alphabetic"] for item in final} in ({"W0^1"}, {"W1^1"})
