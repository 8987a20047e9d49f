"""HTTPS served by dicomhub itself (uvicorn's TLS), once, with a self-signed certificate made
here: a client that trusts it stores and searches; plain HTTP on that port gets nowhere."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, free_port
from tests.dicomfiles import load, read


def self_signed(folder) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)


def test_https_with_a_self_signed_certificate(tmp_path):
    certfile, keyfile = self_signed(tmp_path)
    port = free_port()
    env = dict(os.environ, DICOMHUB_TLS_CERTFILE=certfile, DICOMHUB_TLS_KEYFILE=keyfile)
    command = [
        sys.executable,
        "-m",
        "dicomhub",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=certfile)) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get(f"{url}/health/check").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            data = load("CT_small.dcm")
            r = client.post(
                f"{url}/v2/studies", content=data, headers={"Content-Type": "application/dicom"}
            )
            assert r.status_code == 200
            found = client.get(f"{url}/v2/studies?StudyInstanceUID={read(data).StudyInstanceUID}")
            assert len(found.json()) == 1
        with pytest.raises(httpx.HTTPError):  # a client that does not trust it
            httpx.get(f"{url}/health/check")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/health/check").raise_for_status()
    finally:
        proc.terminate()
        proc.wait(10)
