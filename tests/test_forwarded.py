"""Behind a reverse proxy: Forwarded and X-Forwarded-* headers from an address in
--forwarded-allow-ips decide the scheme and host of RetrieveURL and BulkDataURI and the client
address the audit log records; from anyone else they are ignored; --public-url still wins.
Real servers on real sockets (the proxy is this test, on 127.0.0.1)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import running_server
from tests.dicomfiles import load, with_new_uids
from tests.synthetic import uid

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A server at its defaults (127.0.0.1 is a trusted proxy), one trusting only 10.0.0.0/8,
    and one with --public-url."""
    folder = tmp_path_factory.mktemp
    with (
        running_server(folder("default")) as (default, _),
        running_server(folder("strict"), forwarded_allow_ips="10.0.0.0/8") as (strict, _),
        running_server(folder("public"), public_url="https://pacs.example.org") as (public, _),
    ):
        yield default, strict, public


def stored_url(base: str, n: int, headers: dict) -> str:
    data = with_new_uids(load("CT_small.dcm"), study=uid(70, n), series=uid(70, n, 1))
    r = httpx.post(base + "/v2/studies", content=data, headers={**DICOM, **headers})
    assert r.status_code == 200, r.text
    return r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]


def bulk_uri(base: str, n: int, headers: dict) -> str:
    r = httpx.get(f"{base}/v2/studies/{uid(70, n)}/metadata", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()[0]["7FE00010"]["BulkDataURI"]


def audited_address(base: str, study: str) -> str:
    """The client address of the audit entry of the metadata request of ``study``."""
    entries = httpx.get(base + "/v2/audit", params={"limit": 1000}).json()
    return next(e["address"] for e in entries if study in e["path"])


NGINX = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "pacs.example.org",
    "X-Forwarded-For": "192.0.2.60",
}
RFC7239 = {"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https;host=viewer.example.org:8443'}


def test_a_trusted_proxy_names_the_address_clients_use(servers):
    default, _, _ = servers
    assert stored_url(default, 1, NGINX).startswith("https://pacs.example.org/v2/studies/")
    assert bulk_uri(default, 1, NGINX).startswith("https://pacs.example.org/v2/studies/")
    assert stored_url(default, 2, RFC7239).startswith("https://viewer.example.org:8443/v2/")
    assert bulk_uri(default, 2, RFC7239).startswith("https://viewer.example.org:8443/v2/")
    # the audit log records the client the proxy names, not the proxy
    assert audited_address(default, uid(70, 1)) == "192.0.2.60"
    assert audited_address(default, uid(70, 2)) == "2001:db8:cafe::17"


def test_a_chain_of_proxies_names_the_first_untrusted_address(servers):
    default, _, _ = servers
    headers = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 127.0.0.1"}
    stored_url(default, 3, headers)
    bulk_uri(default, 3, headers)
    assert audited_address(default, uid(70, 3)) == "203.0.113.9"


def test_anyone_else_is_not_believed(servers):
    default, strict, _ = servers
    own = stored_url(strict, 4, NGINX)
    assert own.startswith(strict + "/v2/")  # 127.0.0.1 is not one of its proxies
    assert bulk_uri(strict, 4, RFC7239).startswith(strict + "/v2/")
    assert audited_address(strict, uid(70, 4)) == "127.0.0.1"
    # and a trusted proxy's malformed values are ignored, not used
    odd = {"X-Forwarded-Host": "evil.example/path?", "X-Forwarded-Proto": "gopher"}
    assert stored_url(default, 5, odd).startswith(default + "/v2/")


def test_the_public_url_wins(servers):
    _, _, public = servers
    assert stored_url(public, 6, RFC7239).startswith("https://pacs.example.org/v2/")
