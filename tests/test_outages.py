"""PostgreSQL or the object store going away: requests get 503 with Retry-After, the health
check names the dependency, nothing stored is lost, and service resumes without a restart when
the dependency is back. Each dependency is reached through a TCP relay the test cuts."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests import components
from tests.conftest import index_database
from tests.helpers import stow
from tests.synthetic import instance, uid


@pytest.fixture
def relayed(tmp_path, azurite):
    """The app on PostgreSQL and Azurite, each behind a relay: (client, index relay, blob
    relay)."""
    with index_database("postgresql") as index_url:
        pg = urlparse(index_url)
        index_relay = components.TcpProxy(pg.hostname, pg.port)
        blob_url = azurite.blob_url()
        port = int(blob_url.split("127.0.0.1:")[1].split("/")[0])
        blob_relay = components.TcpProxy("127.0.0.1", port)
        settings = Settings(
            data_dir=str(tmp_path / "data"),
            index_url=index_url.replace(f":{pg.port}/", f":{index_relay.port}/"),
            blob_url=blob_url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{blob_relay.port}"),
            index_blob_max=0,  # every instance an object (else small ones live in the index)
        )
        app = create_app(settings, build_archive(settings))
        try:
            with TestClient(app) as client:
                yield client, index_relay, blob_relay
        finally:
            index_relay.close()
            blob_relay.close()


def health(client) -> tuple[int, dict]:
    r = client.get("/health/check")
    return r.status_code, {d["name"]: d["status"] for d in r.json()["details"]}


def retrieve(client, n: int):
    path = f"/v2/studies/{uid(60)}/series/{uid(60, 1)}/instances/{uid(60, 1, n)}"
    return client.get(path, headers={"Accept": "application/dicom"})


def test_index_or_blob_store_away_then_back(relayed):
    client, index_relay, blob_relay = relayed
    data = [instance(uid(60), uid(60, 1), uid(60, 1, n)) for n in range(4)]
    assert stow(client, data[0]).status_code == 200

    index_relay.cut()
    for response in (
        stow(client, data[1]),
        client.get("/v2/studies"),
        retrieve(client, 0),
        client.get("/v2/changefeed"),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert response.json()["detail"].startswith("index")
    assert health(client) == (503, {"index": "Unhealthy", "blob store": "Healthy"})

    index_relay.restore()  # back: no restart needed
    assert health(client)[0] == 200
    assert stow(client, data[1]).status_code == 200
    assert retrieve(client, 0).content == data[0]

    blob_relay.cut()
    response = stow(client, data[2])
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["detail"].startswith("blob store")
    assert retrieve(client, 1).status_code == 503
    assert health(client) == (503, {"index": "Healthy", "blob store": "Unhealthy"})
    found = client.get("/v2/instances", params={"StudyInstanceUID": uid(60)}).json()
    assert len(found) == 2  # the failed store left nothing visible

    blob_relay.restore()
    assert health(client)[0] == 200
    assert stow(client, data[2]).status_code == 200
    for n in range(3):
        assert retrieve(client, n).content == data[n]
