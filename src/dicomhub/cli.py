"""Composition root: settings -> stores -> archive -> servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from dicomhub import __version__, clients, logs, settings_groups
from dicomhub.archive.archive import Archive
from dicomhub.archive.fhir_sync import FhirSync, FhirSyncIndex
from dicomhub.errors import DicomhubError
from dicomhub.fhir.client import Auth, FhirClient
from dicomhub.fhir.projection import Options
from dicomhub.lifetime import PRIORITIES, Child, end_with_parent, lower_priority
from dicomhub.loops import loop_factory
from dicomhub.settings import Settings
from dicomhub.settings_fields import convert
from dicomhub.storage import sqlite_writer
from dicomhub.storage.export_sinks import Sink
from dicomhub.storage.kept_blobs import KeptBlobStore
from dicomhub.storage.urls import FSYNC, open_audit, open_blobs, open_index
from dicomhub.web.forwarded import TrustedProxies
from dicomhub.workers.conversion import ProcessConverter


def build_index(settings: Settings, migrate: bool | None = None, writer: bool = False):
    """``writer``: this process writes the index itself, even when it was started beside the
    one process that writes an embedded index (``serve --workers N``)."""
    migrate = settings.migrate_on_start if migrate is None else migrate
    remote = None if writer else os.environ.get(sqlite_writer.ENVIRONMENT)
    return open_index(
        settings.resolved_index_url,
        settings.index_pool_size,
        migrate,
        remote,
        fsync=settings.fsync != "off",
    )


def build_archive(settings: Settings) -> Archive:
    """The archive over its stores, each timed at its seam (the metrics of telemetry/seams), its
    webhook deliveries counted (telemetry/instruments)."""
    from dicomhub.telemetry import instruments
    from dicomhub.telemetry.seams import measured

    blobs = open_blobs(
        settings.resolved_blob_url, settings.blob_multipart_threshold, settings.fsync != "off"
    )
    blobs = measured(blobs, "blob")
    index = measured(build_index(settings), "index")
    blobs = KeptBlobStore(blobs, index)  # small instances' files kept by the index
    audit = open_audit(settings.audit_log, index)
    config = settings.archive
    converter = ProcessConverter(config.pixels.conversion_workers)
    fhir = build_fhir_sync(settings.fhir, index) if settings.fhir_url else None
    archive = Archive(config, index, blobs, converter, fhir, audit, deidentify_key(settings), Sink)
    archive.webhooks.observe = instruments.webhook  # delivery attempts, timed
    return archive


def build_fhir_sync(settings: settings_groups.Fhir, index: FhirSyncIndex) -> FhirSync:
    auth = Auth(
        settings.auth,
        settings.token,
        settings.username,
        settings.password,
        settings.token_url,
        settings.client_id,
        settings.client_secret,
        settings.scope,
    )
    client = FhirClient(settings.url, auth, settings.timeout)
    options = Options(settings.dicomweb_root, settings.patient_system, settings.use_issuer)
    return FhirSync(index, client, options, settings.batch_size, settings.lease)


# serve's random de-identification key (no --deidentify-key-file), handed to its server
# processes in their environment so that they all replace UIDs alike
PROCESS_KEY = "DICOMHUB_DEIDENTIFY_PROCESS_KEY"
MIN_KEY_BYTES = 16


def deidentify_key(settings: Settings) -> bytes:
    """The key of de-identified downloads: the key file's, else the one serve drew for its
    processes, else a random one of this process's own."""
    if settings.deidentify_key_file:
        return load_key(settings.deidentify_key_file)
    shared = os.environ.get(PROCESS_KEY)
    return bytes.fromhex(shared) if shared else secrets.token_bytes(32)


def load_key(path: str) -> bytes:
    """A key file's bytes, trailing white space (a newline an editor adds) ignored."""
    try:
        key = Path(path).read_bytes().rstrip()
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the key file {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(e.g. openssl rand -hex 32 > FILE)"
        )
    return key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomhub", description="DICOMweb server")
    parser.add_argument("--version", action="version", version=f"dicomhub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _settings_flags(commands.add_parser("serve", help="run the DICOMweb server"))
    _settings_flags(
        commands.add_parser("worker", help="run background job runners only (no HTTP API)")
    )
    _settings_flags(
        commands.add_parser("fhir-sync", help="run the FHIR sync only (needs --fhir-url)")
    )
    _settings_flags(
        commands.add_parser("dimse", help="run the DIMSE service only (needs --dimse-port)")
    )
    clients.add_parsers(commands)  # for --help: dicomhub.main runs them without this module
    db = commands.add_parser("db", help="manage the index database")
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply pending migrations")
    _settings_flags(db)
    return parser


REPEATABLE = {"export_allow"}  # list settings whose flag may be given more than once


class _Refused(argparse.Action):
    """A secret's flag: refused, so that no secret shows in ``ps``."""

    def __call__(self, parser, namespace, values, option_string=None):
        env = "DICOMHUB_" + self.dest.upper()
        parser.error(
            f"{option_string} is not taken on the command line, where every user of the "
            f"machine can read it (ps); set {env} or give {option_string}-file FILE"
        )


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    for f in Settings.fields():
        flag = "--" + f.name.replace("_", "-")
        env = "DICOMHUB_" + f.name.upper()
        if f.metadata.get("secret"):
            parser.add_argument(
                flag,
                dest=f.name,
                action=_Refused,
                default=None,
                help=f"{f.metadata['help']} Refused: set {env}, or {flag}-file FILE.",
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type=lambda raw, f=f: convert(f, raw),
            default=None,
            action="append" if f.name in REPEATABLE else "store",
            help=f"{f.metadata['help']} [env {env}; default {f.default!r}]",
        )
    parser.add_argument(
        "--dimse-peer",
        action="append",
        metavar="AET=host:port",
        help="one DIMSE peer (AET=tls://host:port for DICOM TLS); repeatable, joined to what "
        "--dimse-peers gives",
    )


SUPERVISOR = "DICOMHUB_SUPERVISOR_PID"  # how a server process knows its supervisor
METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"  # telemetry.exposition.ENVIRONMENT


def lock_data_dir(settings: Settings):
    """The embedded mode has one server process per data folder (it cleans up at start-up)."""
    folder = Path(settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"dicomhub: another dicomhub serve is using {folder.resolve()}")
    return handle


def parse_command_line(argv: list[str] | None = None) -> tuple[str, Settings]:
    """The command and the settings (flags over environment over defaults)."""
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    args.pop("action", None)
    for name in REPEATABLE:
        if args.get(name) is not None:
            args[name] = ",".join(args[name])
    peers = args.pop("dimse_peer", None)
    if peers:
        args["dimse_peers"] = ",".join(filter(None, [args.get("dimse_peers"), *peers]))
    return command, Settings.load(args)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in clients.COMMANDS:  # a client of a running server: no settings, no index
        sys.exit(clients.run(argv if argv is not None else sys.argv[1:]))
    command, settings = parse_command_line(argv)
    if METRICS_FOLDER in os.environ and SUPERVISOR not in os.environ:
        # serve chooses where its processes share their metrics; a folder named by someone
        # else would mix theirs in (read when prometheus-client is first imported: not yet)
        os.environ.pop(METRICS_FOLDER)
    if settings.log_format not in logs.FORMATS:
        formats = " or ".join(logs.FORMATS)
        sys.exit(f"dicomhub: --log-format takes {formats}, not {settings.log_format!r}")
    _configure_logging(settings)
    if urlsplit(getattr(args, "index_url", None) or "").password:
        logging.getLogger("dicomhub").warning(
            "--index-url holds a password, which every user of this machine can read (ps); "
            "set it in DICOMHUB_INDEX_URL, PGPASSWORD or ~/.pgpass instead"
        )
    for name in Settings.secrets():
        try:
            settings.secret(name)
        except ValueError as exc:
            sys.exit(f"dicomhub: {exc}")
    if SUPERVISOR not in os.environ:  # only serve sets it, for its own processes
        os.environ.pop(PROCESS_KEY, None)
    if settings.deidentify_key_file:
        try:
            load_key(settings.deidentify_key_file)
        except ValueError as exc:
            sys.exit(f"dicomhub: --deidentify-key-file: {exc}")
    if settings.background_priority not in PRIORITIES:
        choices, given = " or ".join(PRIORITIES), settings.background_priority
        sys.exit(f"dicomhub: --background-priority takes {choices}, not {given!r}")
    if settings.fsync not in FSYNC:
        sys.exit(f"dicomhub: --fsync takes {' or '.join(FSYNC)}, not {settings.fsync!r}")
    try:
        TrustedProxies(settings.forwarded_allow_ips)
    except ValueError as exc:
        sys.exit(f"dicomhub: --forwarded-allow-ips: {exc}")
    if settings.dimse_port:
        from dicomhub.dimse.callers import Callers, parse_partitions, parse_peers
        from dicomhub.dimse.tls import client_tls_context, tls_context

        try:
            Callers(settings.dimse_callers)
            if parse_partitions(settings.dimse_partitions) and not settings.data_partitions:
                raise ValueError("--dimse-partitions needs --data-partitions true")
            if any(peer.tls for peer in parse_peers(settings.dimse_peers).values()):
                client_tls_context(settings.dimse)
            tls_context(settings.dimse)
        except (ValueError, OSError) as exc:
            sys.exit(f"dicomhub: {exc}")
    if command == "db":
        asyncio.run(_upgrade(settings))
    elif command in ("worker", "fhir-sync", "dimse"):
        if command == "fhir-sync" and not settings.fhir_url:
            sys.exit("dicomhub fhir-sync: set --fhir-url (or DICOMHUB_FHIR_URL)")
        if command == "dimse":
            if not settings.dimse_port:
                sys.exit("dicomhub dimse: set --dimse-port (or DICOMHUB_DIMSE_PORT)")
            _check_exposure(settings)
        if SUPERVISOR in os.environ:  # one of serve's processes (see serve below)
            if command == "worker":  # before the threads it starts: they inherit it
                lower_priority(settings.background_priority)
            _stop_with_parent()
        with (
            contextlib.suppress(KeyboardInterrupt),
            asyncio.Runner(loop_factory=loop_factory()) as r,
        ):
            r.run(_work(settings, command))
    elif command == "serve":
        import uvicorn

        from dicomhub.web import balance

        _check_exposure(settings)
        _check_viewer(settings)
        lock = lock_data_dir(settings)
        _raise_file_limit()
        options = dict(
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=logs.uvicorn_config(settings.log_format),
            access_log=False,  # the request line is dicomhub's own (logs.ACCESS)
            # uvicorn's httptools protocol, plus the kernel sending stored files (sendfile), and
            # WebSocket upgrades (the UPS event channel)
            http="dicomhub.web.zerocopy:HttpToolsProtocol",
            proxy_headers=False,  # web/forwarded.py applies them, from --forwarded-allow-ips
        )
        if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
            sys.exit("dicomhub serve: HTTPS needs both --tls-certfile and --tls-keyfile")
        if settings.tls_certfile:
            options.update(ssl_certfile=settings.tls_certfile, ssl_keyfile=settings.tls_keyfile)
        workers = settings.server_processes
        if workers > 1:
            # Recovery runs once, here, before any worker stores; the workers read these
            # settings back from the environment. The DIMSE port is served by one process of
            # its own beside them, and the background work (jobs, webhook deliveries, the FHIR
            # sync) by another, at --background-priority: ingest and reads come first.
            asyncio.run(_recover(settings))
            os.environ.update(settings.environ(), **{SUPERVISOR: str(os.getpid())})
            if not settings.deidentify_key_file:
                os.environ[PROCESS_KEY] = secrets.token_hex(32)
            writer = _index_writer(settings)
            from dicomhub.telemetry import exposition

            # the processes share a private folder: their metrics (telemetry/exposition) and
            # the table of the connections each holds (web/balance)
            with exposition.shared_folder() as shared:
                os.environ[balance.ENVIRONMENT] = balance.create(shared, workers)
                children = [
                    Child([sys.executable, "-m", "dicomhub", command])
                    for command, wanted in (
                        ("dimse", settings.dimse_port),
                        ("worker", settings.background_jobs),
                    )
                    if wanted
                ]
                try:
                    uvicorn.run(
                        "dicomhub.cli:worker_app",
                        factory=True,
                        workers=workers,
                        timeout_worker_healthcheck=settings.worker_healthcheck_timeout,
                        **options,
                    )
                finally:
                    for child in children:
                        child.stop()
                    if writer is not None:
                        writer.stop()
        else:
            uvicorn.run(_app(settings, alone=True), **options)
        lock.close()


# Open files a server process needs beside its connections: the index, blobs being read or
# written, spool files, logs, the conversion workers' pipes.
FILES_BESIDE_CONNECTIONS = 256


def _raise_file_limit() -> None:
    """The soft limit on open files up to the hard one: the default soft limit (often 1,024)
    caps the connections a process can hold far below what it can serve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit may not do
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def max_connections(settings: Settings) -> int:
    """The connections one server process holds: the setting, else what the open-file limit
    leaves room for (a connection holds two descriptors: its socket and the duplicate that
    sends stored files, web/zerocopy.py)."""
    if settings.max_connections:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(16, (soft - FILES_BESIDE_CONNECTIONS) // 2)


def _index_writer(settings: Settings) -> sqlite_writer.WriterService | None:
    """An embedded (SQLite) index is written by this process alone, for all the server
    processes (see storage/sqlite_writer.py); None for a shared index (PostgreSQL)."""
    if build_index(settings).shared:
        return None
    service = sqlite_writer.WriterService(lambda: build_index(settings, writer=True))
    try:
        service.start()
    except DicomhubError as exc:
        sys.exit(f"dicomhub serve: {exc}")
    os.environ[sqlite_writer.ENVIRONMENT] = service.address
    return service


def _check_exposure(settings: Settings) -> None:
    """Without authentication (an issuer for HTTP, an allow-list of callers for DIMSE), serve
    stays on loopback unless told otherwise."""
    if settings.host in ("127.0.0.1", "::1", "localhost"):
        return
    if settings.dimse_port and not settings.dimse_callers and not settings.allow_unauthenticated:
        sys.exit(
            f"dicomhub: a DIMSE service on {settings.host} without --dimse-callers lets any "
            "device store into the archive; name the callers, or --allow-unauthenticated true"
        )
    if settings.auth_issuer:
        return
    if not settings.allow_unauthenticated:
        sys.exit(
            f"dicomhub serve: binding {settings.host} without authentication exposes every "
            "study to the network; set --auth-issuer and --auth-audience, or "
            "--allow-unauthenticated true"
        )
    logging.getLogger("dicomhub").warning(
        "serving %s WITHOUT authentication: anyone who reaches it can read and change data",
        settings.host,
    )


def _check_viewer(settings: Settings) -> None:
    """A --viewer folder that is no OHIF build stops serve at start, not the first page."""
    if not settings.viewer:
        return
    from dicomhub.web.viewer import NotAViewerBuild, Viewer

    try:
        Viewer(settings.viewer, None, settings.viewer_config)
    except NotAViewerBuild as exc:
        sys.exit(f"dicomhub serve: --viewer: {exc}")


def _configure_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format, settings.access_log)


async def _upgrade(settings: Settings) -> None:
    index = build_index(settings, migrate=True)
    try:
        await index.start()
    except DicomhubError as exc:
        sys.exit(f"dicomhub db upgrade: {exc}")
    await index.close()
    print(f"dicomhub: the index at {settings.resolved_index_url.split('@')[-1]} is up to date")


async def _recover(settings: Settings) -> None:
    from dicomhub.web.partitions import refuse_when_off

    archive = build_archive(settings)
    await archive.start(recover=True)
    try:
        await refuse_when_off(archive.index, settings.data_partitions)
    finally:
        await archive.close()


def worker_app():
    """The app of one of several ``serve --workers`` processes (uvicorn's factory)."""
    _stop_with_parent()
    settings = Settings.load()
    _configure_logging(settings)
    from dicomhub.web import balance
    from dicomhub.web.zerocopy import HttpToolsProtocol

    if os.environ.get(balance.ENVIRONMENT):
        HttpToolsProtocol.balance = balance.Balance(os.environ[balance.ENVIRONMENT])
    return _app(settings, alone=False)


def _stop_with_parent() -> None:
    """A server process whose supervisor is killed (SIGKILL, OOM) stops too, instead of
    serving on alone, unsupervised, on the shared port."""
    end_with_parent(int(os.environ.get(SUPERVISOR, os.getppid())))


def _app(settings: Settings, alone: bool):
    """``alone``: serve's one process, which recovers at start, serves the DIMSE port and runs
    the background work; else one of several server processes, beside serve's own children
    that do those."""
    from dicomhub.web.app import create_app
    from dicomhub.web.zerocopy import HttpToolsProtocol
    from dicomhub.workers.background import run_background

    HttpToolsProtocol.limit(settings.header_timeout, max_connections(settings))

    archive = build_archive(settings)
    jobs = []
    if alone and settings.background_jobs:
        jobs.append(lambda: run_background(archive, archive.index, settings.jobs, settings.dimse))
    if alone and settings.dimse_port:
        from dicomhub.dimse.service import run_dimse  # pynetdicom: only loaded when it serves

        jobs.append(lambda: run_dimse(archive, settings.dimse))

    async def background() -> None:
        await asyncio.gather(*(job() for job in jobs))

    return create_app(settings, archive, background if jobs else None, alone)


async def _work(settings: Settings, command: str) -> None:
    """``dicomhub worker`` (job runners), ``dicomhub fhir-sync`` or ``dicomhub dimse`` until
    SIGTERM or SIGINT; job work cut off mid-way is taken over by another node once its lease
    runs out."""
    from dicomhub.workers.background import run_background
    from dicomhub.workers.fhir_sync import run_fhir_sync

    archive = build_archive(settings)
    await archive.start(recover=False)
    if command == "fhir-sync":
        job = run_fhir_sync(archive.fhir, settings.fhir_poll_interval)
    elif command == "dimse":
        from dicomhub.dimse.service import run_dimse

        job = run_dimse(archive, settings.dimse)
    else:
        job = run_background(archive, archive.index, settings.jobs, settings.dimse)
    from dicomhub.telemetry import exposition, instruments

    instruments.alive(command)  # beside serve's processes: summed with theirs
    work = asyncio.create_task(job)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, work.cancel)
    try:
        await work
    except asyncio.CancelledError:
        pass
    finally:
        await archive.close()
        exposition.leave()
