"""Webhooks and partition-scoped roles (roles.json "scopes", conformance 7.3 and 7.9), against
`dicomhub serve` (SQLite and PostgreSQL) with real tokens: a partition's reader streams its own
partitions' events only; a partition's administrator sees and manages only the subscriptions
whose filter.partition lies within its partitions (403 for the others, nothing changed)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import MULTIPART, multipart
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance, uid
from tests.test_webhooks import CREATED, read_stream, receiver, server, server_index  # noqa: F401

ROLES = [
    {"name": "globalAdmin", "dataActions": ["*"], "scopes": ["/"]},
    {"name": "clinicAdmin", "dataActions": ["admin", "read"], "scopes": ["/partitions/clinic-a"]},
    {"name": "clinicReader", "dataActions": ["read"], "scopes": ["/partitions/clinic-a"]},
    {"name": "writer", "dataActions": ["write"], "scopes": ["/"]},
]


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


def as_role(issuer: Issuer, role: str) -> dict:
    return {"Authorization": "Bearer " + issuer.token(roles=[role])}


def stow(url: str, headers: dict, partition: str, n: int) -> None:
    r = httpx.post(
        f"{url}/v2/partitions/{partition}/studies",
        content=multipart(instance(uid(240), uid(240, 1), uid(240, 1, n))),
        headers={"Content-Type": MULTIPART, **headers},
    )
    assert r.status_code == 200, r.text


def test_partition_scoped_roles_see_their_partitions_only(
    tmp_path,
    server_index,  # noqa: F811
    receiver,  # noqa: F811
    issuer,
):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"roles": ROLES}))
    settings = dict(
        data_partitions="true",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
        auth_roles_file=str(roles),
    )
    with server(tmp_path, server_index, **settings) as (url, _):
        root, clinic, reader = (
            as_role(issuer, "globalAdmin"),
            as_role(issuer, "clinicAdmin"),
            as_role(issuer, "clinicReader"),
        )
        subs = f"{url}/v2/subscriptions"

        def create(headers: dict, **fields):
            return httpx.post(subs, json={"url": receiver.url, **fields}, headers=headers)

        everything = create(root).json()
        other = create(root, filter={"partition": "clinic-b"}).json()
        # a partition's administrator: subscriptions within its partitions only
        for bad in ({}, {"partition": ["clinic-a", "clinic-b"]}, {"modality": "CT"}):
            r = create(clinic, filter=bad)
            assert r.status_code == 403, (bad, r.text)
            assert "clinic-a" in r.json()["detail"]
        mine = create(clinic, filter={"partition": "clinic-a"})
        assert mine.status_code == 201, mine.text
        mine = mine.json()
        listed = httpx.get(subs, headers=clinic).json()
        assert [s["id"] for s in listed] == [mine["id"]]
        assert len(httpx.get(subs, headers=root).json()) == 3
        for id in (everything["id"], other["id"]):
            one = f"{subs}/{id}"
            for r in (
                httpx.get(one, headers=clinic),
                httpx.patch(one, json={"state": "paused"}, headers=clinic),
                httpx.delete(one, headers=clinic),
                httpx.get(f"{one}/deadletters", headers=clinic),
                httpx.post(f"{one}/deadletters/1/replay", headers=clinic),
            ):
                assert r.status_code == 403, (r.request.method, r.request.url, r.text)
            assert httpx.get(one, headers=root).json()["state"] == "active"  # unchanged
        # nor may it move its own out of its partitions
        moved = httpx.patch(
            f"{subs}/{mine['id']}", json={"filter": {"partition": "clinic-b"}}, headers=clinic
        )
        assert moved.status_code == 403, moved.text
        got = httpx.get(f"{subs}/{mine['id']}", headers=clinic)
        assert got.status_code == 200 and got.json()["filter"] == {"partition": ["clinic-a"]}
        assert httpx.get(f"{subs}/{mine['id']}/deadletters", headers=clinic).json() == []
        # a reader or a writer manages none
        assert httpx.get(subs, headers=reader).status_code == 403
        assert httpx.get(subs, headers=as_role(issuer, "writer")).status_code == 403

        latest = httpx.get(f"{url}/v2/changefeed/latest", headers=root).json()
        start = latest["sequence"] if latest else 0
        stow(url, root, "clinic-b", 0)
        stow(url, root, "clinic-a", 1)
        stow(url, root, "clinic-b", 2)
        stow(url, root, "clinic-a", 3)
        # deliveries: everything 4, other 2, mine the two of clinic-a
        events = receiver.wait_for(8)
        by_partition = sorted(e["data"]["partitionName"] for e in events)
        assert by_partition == ["clinic-a"] * 4 + ["clinic-b"] * 4
        assert httpx.get(f"{subs}/{mine['id']}", headers=clinic).json()["delivered"] == 2

        # the live stream: a partition's reader gets its partitions' events only
        after = {"after": str(start)}
        got = read_stream(url, 2, headers=reader, params=after)
        assert [(t, d["data"]["partitionName"]) for _, t, d in got] == [(CREATED, "clinic-a")] * 2
        assert [d["data"]["imageSopInstanceUid"] for _, _, d in got] == [
            uid(240, 1, 1),
            uid(240, 1, 3),
        ]
        got = read_stream(url, 1, headers=reader, params={**after, "partition": "clinic-a"})
        assert got[0][2]["data"]["imageSopInstanceUid"] == uid(240, 1, 1)
        for partition in ("clinic-b", "clinic-a,clinic-b"):
            r = httpx.get(
                f"{url}/v2/events", headers=reader, params={**after, "partition": partition}
            )
            assert r.status_code == 403, r.text
        assert httpx.get(f"{url}/v2/events", headers=as_role(issuer, "writer")).status_code == 403
        got = read_stream(url, 4, headers=root, params=after)
        assert [d["data"]["partitionName"] for _, _, d in got] == ["clinic-b", "clinic-a"] * 2

        assert httpx.delete(f"{subs}/{mine['id']}", headers=clinic).status_code == 204
        assert len(httpx.get(subs, headers=root).json()) == 2
