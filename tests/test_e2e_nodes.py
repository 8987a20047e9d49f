"""Two `dicomhub serve` nodes on one PostgreSQL database and one object store (Azurite) behave
as one server: what one stores the other serves at once, one ordered change feed, concurrent
stores of one instance give one success and one 45070, and killing a node mid-ingest loses no
acknowledged instance."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import index_database, running_server
from tests.helpers import MULTIPART, failures, multipart
from tests.synthetic import instance, uid

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


@pytest.fixture
def two_nodes(tmp_path, azurite):
    blob_url = azurite.blob_url()
    with index_database("postgresql") as index_url:
        # job_lease: the cleanup job a killed node held is taken over soon
        settings = dict(
            index_url=index_url,
            blob_url=blob_url,
            upload_timeout="2",
            cleanup_interval="0.5",
            delete_delay="0",
            job_lease="3",
        )
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            running_server(tmp_path / "a", **settings) as (a, proc_a),
            running_server(tmp_path / "b", **settings) as (b, _),
        ):
            yield a, b, proc_a, index_url


def stow(base: str, data: bytes) -> httpx.Response:
    return httpx.post(base + "/v2/studies", content=data, headers=DICOM, timeout=30)


def test_one_server_on_two_nodes(two_nodes):
    a, b, _, _ = two_nodes
    study = uid(50)
    for n in range(6):  # stores alternate between the nodes
        data = instance(study, uid(50, 1), uid(50, 1, n), PatientID="NODES", InstanceNumber=n)
        assert stow(a if n % 2 else b, data).status_code == 200
        # at once: searchable and retrievable on the other node
        other = b if n % 2 else a
        found = httpx.get(other + "/v2/instances", params={"SOPInstanceUID": uid(50, 1, n)})
        assert len(found.json()) == 1
        got = httpx.get(
            f"{other}/v2/studies/{study}/series/{uid(50, 1)}/instances/{uid(50, 1, n)}",
            headers={"Accept": "application/dicom"},
        )
        assert got.status_code == 200 and got.content == data
    feeds = [httpx.get(node + "/v2/changefeed", params={"limit": 100}).json() for node in (a, b)]
    assert feeds[0] == feeds[1]  # one feed
    assert [e["sequence"] for e in feeds[0]] == sorted(e["sequence"] for e in feeds[0])
    assert [e["sopInstanceUid"] for e in feeds[0]] == [uid(50, 1, n) for n in range(6)]
    # deleted on one node: gone on the other
    assert httpx.delete(f"{a}/v2/studies/{study}").status_code == 204
    assert httpx.get(f"{b}/v2/studies/{study}/metadata").status_code == 404


def test_concurrent_stores_of_one_instance_on_two_nodes(two_nodes):
    a, b, _, _ = two_nodes
    for n in range(8):
        data = instance(uid(51), uid(51, 1), uid(51, 1, n))
        start = threading.Barrier(2)

        def send(base: str, data=data, start=start) -> httpx.Response:
            start.wait()
            return httpx.post(
                base + "/v2/studies",
                content=multipart(data),
                headers={"Content-Type": MULTIPART},
                timeout=30,
            )

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(send, (a, b)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 409], [r.text for r in responses]
        loser = next(r for r in responses if r.status_code == 409)
        assert failures(loser) == [45070]


def test_killing_a_node_mid_ingest_loses_no_acknowledged_instance(two_nodes):
    a, b, proc_a, index_url = two_nodes
    acknowledged: list[int] = []

    def ingest() -> None:
        for n in range(10_000):
            data = instance(uid(52), uid(52, n % 4), uid(52, n % 4, n), PatientID="KILL")
            try:
                response = stow(a, data)
            except httpx.HTTPError:
                return  # the node is gone
            if response.status_code == 200:
                acknowledged.append(n)

    sender = threading.Thread(target=ingest)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc_a.kill()  # SIGKILL: no clean-up, stores in flight are cut off
    sender.join(30)
    assert len(acknowledged) >= 40
    found = httpx.get(b + "/v2/instances", params={"PatientID": "KILL", "limit": 10_000}).json()
    stored = {i["00080018"]["Value"][0] for i in found}
    assert {uid(52, n % 4, n) for n in acknowledged} <= stored
    for n in acknowledged[-5:]:  # and their bytes are there
        path = f"/v2/studies/{uid(52)}/series/{uid(52, n % 4)}/instances/{uid(52, n % 4, n)}"
        assert httpx.get(b + path, headers={"Accept": "application/dicom"}).status_code == 200
    # a store the kill cut off is abandoned by the other node's cleanup job
    assert _uploads_left(index_url, wait=15) == 0


def _uploads_left(index_url: str, wait: float) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(index_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM blob_upload")
        finally:
            await conn.close()

    deadline = time.monotonic() + wait
    while (left := asyncio.run(count())) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left
