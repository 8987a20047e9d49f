"""The servers under test, each started fresh on a free loopback port and stopped after its
workload: dicomhub (``dicomhub serve``, the embedded default unless an index URL is given) and
Orthanc with its DICOMweb plugin, configured comparably (no compression, full metadata)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
REPOSITORY = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_available() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian packages orthanc, orthanc-dicomweb)"
    if not Path(ORTHANC_PLUGIN).exists():
        return f"the Orthanc DICOMweb plugin is missing ({ORTHANC_PLUGIN})"
    return None


class Server:
    name: str
    base_url: str
    process: subprocess.Popen

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()

    def command(self) -> list[str]:
        raise NotImplementedError

    ready_path = "/"
    start_timeout = 60  # seconds to answer ready_path
    stop_timeout = 30  # seconds to end after SIGTERM, before SIGKILL

    def environment(self) -> dict[str, str] | None:
        """The server process's environment (None: this process's)."""
        return None

    def __enter__(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            self.command(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPOSITORY,
            env=self.environment(),
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.workdir / 'server.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.ready_path)
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{self.name} did not answer on port {self.port}")

    def _tree(self):
        """(pid, /proc/pid/status text, /proc/pid/stat fields) of the server and its workers."""
        return _process_tree(self.process.pid)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server and its worker processes, summed."""
        kb = sum(
            int(line.split()[1])
            for _, status, _ in self._tree()
            for line in status.splitlines()
            if line.startswith("VmHWM:")
        )
        return round(kb / 1024, 1)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its worker processes."""
        ticks = sum(int(stat[11]) + int(stat[12]) for _, _, stat in self._tree())
        return ticks / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


class Dicomhub(Server):
    ready_path = "/health/check"

    def __init__(
        self,
        workdir: Path,
        index_url: str | None = None,
        extra: list[str] = (),
        partition: str | None = None,
        source: Path | None = None,
        subscriptions: int = 0,
    ):
        """``partition``: run with data partitions, the workloads in this one. ``source``:
        the dicomhub of another source tree (its ``src``), e.g. a worktree of the commit before
        a change, named "dicomhub (baseline)". ``subscriptions``: webhook subscriptions made
        before the workloads (bench/webhooks.py), named "dicomhub (N subscriptions)"."""
        super().__init__(workdir)
        self.index_url, self.extra, self.source = index_url, list(extra), source
        self.subscriptions = subscriptions
        self.name = "dicomhub" if index_url is None else f"dicomhub ({index_url.split(':')[0]})"
        if source is not None:
            self.name += " (baseline)"
        if subscriptions:
            self.name += f" ({subscriptions} subscriptions)"
            self.extra += ["--webhook-allow-private", "true"]  # the receivers are on loopback
        self.base_url = f"http://127.0.0.1:{self.port}/v2"
        if partition:
            self.extra += ["--data-partitions", "true"]
            self.base_url += f"/partitions/{partition}"

    def __enter__(self) -> Dicomhub:
        self._postmaster = self.index_url and _postmaster(self.index_url)
        return super().__enter__()

    def cpu_seconds(self) -> float:
        """The server's CPU and, on a PostgreSQL on this machine, PostgreSQL's: every process
        of its cluster, those that ended included (a backend per connection, the WAL writer,
        the checkpointer), as Orthanc's CPU includes its SQLite's. Nothing else may use that
        PostgreSQL during a run."""
        return super().cpu_seconds() + self.database_cpu_seconds()

    def database_cpu_seconds(self) -> float:
        if not self._postmaster:
            return 0.0
        ticks = 0
        for pid, _, stat in _process_tree(self._postmaster):
            ticks += int(stat[11]) + int(stat[12])
            if pid == self._postmaster:  # its children that ended (waited for): their CPU
                ticks += int(stat[13]) + int(stat[14])
        return ticks / os.sysconf("SC_CLK_TCK")

    def environment(self) -> dict[str, str] | None:
        if self.source is None:
            return None
        return {**os.environ, "PYTHONPATH": str(self.source / "src")}

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "dicomhub",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.workdir / "data"),
            "--log-level",
            "warning",
            *self.extra,
        ]
        if self.index_url:
            cmd += ["--index-url", self.index_url]
        return cmd


def _process_tree(root: int):
    """(pid, /proc/pid/status text, /proc/pid/stat fields after the name) of ``root`` and its
    descendants."""
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            pending += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:
            continue
        yield pid, status, stat


def _postmaster(url: str) -> int | None:
    """The pid of the PostgreSQL server of ``url`` when it runs on this machine (the parent of
    the backend that answers, read while it does), else None."""

    async def parent() -> int | None:
        conn = await asyncpg.connect(url)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            stat = Path(f"/proc/{backend}/stat").read_text()
        except OSError:  # another machine's, or in a container of its own
            return None
        finally:
            await conn.close()
        return int(stat.rsplit(")", 1)[1].split()[1])

    if urlsplit(url).hostname not in (None, "", "localhost", "127.0.0.1", "::1"):
        return None
    return asyncio.run(parent())


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of ``url`` (made through it), dropped
    afterwards: each measurement of dicomhub on PostgreSQL starts from nothing, and the
    database the URL names is never touched."""
    name = f"dicomhub_bench_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    try:
        yield urlunsplit(urlsplit(url)._replace(path="/" + name))
    finally:
        asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class Orthanc(Server):
    name = "Orthanc"
    ready_path = "/system"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.base_url = f"http://127.0.0.1:{self.port}/dicom-web"

    def command(self) -> list[str]:
        config = {
            "Name": "bench",
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "DicomServerEnabled": False,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "SaveJobs": False,
            "Plugins": [ORTHANC_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        return ["Orthanc", str(path)]


class Loopback(Server):
    """The raw loopback HTTP ceiling (``bench/loopback.py``), answering ``size`` bytes."""

    name = "loopback"

    def __init__(self, workdir: Path, size: int):
        super().__init__(workdir)
        self.size = size
        self.base_url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.loopback", str(self.port), str(self.size)]
