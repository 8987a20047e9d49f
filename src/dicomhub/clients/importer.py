"""``dicomhub import PATH...``: files, folders, ZIP and tar files and DICOMDIR media into a
running server over STOW-RS (PS3.18 section 10.5), for people without a DICOMweb client.

One thread reads the files in order (sources.py) and groups small ones into requests;
``--parallel`` threads send them, each on a persistent connection (stow.py). What the
server acknowledged (stored, or already held) is appended to a state file as answers come, so
the same command run again after an interruption (Ctrl-C, a lost connection) skips it; the
state file is removed once an import ends with nothing left to do.

Exit status: 0 every instance stored or already there; 1 some refused, or the server could not
be reached; 2 the command line is wrong or the server refused the requests as a whole (401,
403: the problem's detail is printed); 130 interrupted (the state is kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from dicomhub.clients import common
from dicomhub.clients.common import URL_ENV, Refused
from dicomhub.clients.progress import Progress, Tally, write_summary
from dicomhub.clients.sources import Item, plan, read, sop_instance_uid
from dicomhub.clients.stow import DUPLICATE, STORED, Sender

DEFAULT_URL = "http://127.0.0.1:8080/v2"
DONE, FAILED, REFUSED, INTERRUPTED = 0, 1, 2, 130
POLL = 0.2  # seconds between progress redraws and stop checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files, folders (walked recursively), ZIP or tar files (.zip, .tar, .tar.gz, "
        ".tgz, .tar.bz2, .tar.xz), DICOMDIR files",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help="the server's DICOMweb root (a server root with no path gets /v2) "
        f"[env {URL_ENV}; default {DEFAULT_URL}]",
    )
    target.add_argument(
        "--data-dir",
        metavar="DIR",
        help="instead of a server: store straight into this data folder (no server may be "
        "using it; the other settings come from DICOMHUB_* variables, as for serve)",
    )
    common.add_token_argument(parser)
    parser.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="requests under way at once, each on a connection of its own (default 4)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=50,
        metavar="FILES",
        help="most files per request (default 50)",
    )
    parser.add_argument(
        "--batch-mb",
        type=float,
        default=16,
        metavar="MB",
        help="most megabytes per request; a larger file goes alone (default 16)",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="where what the server acknowledged is recorded, to resume after an "
        "interruption (default .dicomhub-import-HASH.jsonl in the current folder, HASH "
        "of the URL and PATHs: the same command finds it again)",
    )


def run(args: argparse.Namespace) -> int:
    if args.parallel < 1 or args.batch < 1 or args.batch_mb <= 0:
        return common.usage("import", "--parallel, --batch and --batch-mb must be positive")
    url = dicomweb_root(args.url)
    headers = common.auth_headers(common.token(args.token_file, "import"))
    try:
        items = plan(args.paths)
    except FileNotFoundError as exc:
        return common.usage("import", f"no such file or folder: {exc}")
    except KeyboardInterrupt:  # while listing the files: nothing sent yet
        return INTERRUPTED
    if args.data_dir:
        url = "file://" + os.path.abspath(args.data_dir)
    state = State(Path(args.state or default_state(url, args.paths)))
    todo = [item for item in items if item.key not in state.done]
    tally = Tally(total_files=len(todo), total_bytes=sum(i.size for i in todo))
    tally.resumed = len(items) - len(todo)
    if tally.resumed:
        print(
            f"dicomhub import: resuming: {tally.resumed} files acknowledged by an earlier run "
            f"are skipped ({state.path})",
            file=sys.stderr,
        )
    job = _Import(url, headers, args, tally, state)
    if args.data_dir:
        from dicomhub.clients.local import LocalArchive  # the archive's code: only loaded here

        job.local = LocalArchive(args.data_dir)
    try:
        status = job.run(todo)
    finally:
        if job.local is not None:
            job.local.close()
    state.close(remove=status == DONE)
    write_summary(tally, state.path, status != DONE, sys.stdout)
    return status


def dicomweb_root(url: str) -> str:
    """The DICOMweb root: as given, or ``/v2`` of a server root (``DICOMHUB_URL`` as
    ``dicomhub export`` takes it)."""
    url = url.rstrip("/")
    return url + "/v2" if urlsplit(url).path in ("", "/") else url


def default_state(url: str, paths: list[str]) -> str:
    what = json.dumps([url, sorted(str(Path(p).resolve()) for p in paths)])
    return f".dicomhub-import-{hashlib.sha256(what.encode()).hexdigest()[:12]}.jsonl"


class State:
    """The keys (sources.Item.key) the server acknowledged, one JSON string a line,
    appended and flushed after each answer: a killed import loses at most the answers under
    way, which the next run sends again (and the server reports as duplicates)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.done.add(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
        self.file = None
        self.lock = threading.Lock()

    def add(self, keys: list[str]) -> None:
        if not keys:
            return
        with self.lock:
            if self.file is None:
                self.file = open(self.path, "a")  # noqa: SIM115 - open for the whole import
            self.file.write("".join(json.dumps(k) + "\n" for k in keys))
            self.file.flush()

    def close(self, remove: bool) -> None:
        if self.file is not None:
            self.file.close()
        if remove:
            self.path.unlink(missing_ok=True)


class _Import:
    """The reading thread, the sending threads, and the stop they share."""

    def __init__(self, url, headers, args, tally: Tally, state: State):
        self.url, self.headers, self.args = url, headers, args
        self.tally, self.state = tally, state
        self.stop = threading.Event()
        self.batches: queue.Queue = queue.Queue(maxsize=2 * args.parallel)
        self.errors: list[Exception] = []
        self.reached = threading.Event()
        self.local = None  # local.LocalArchive, with --data-dir

    def run(self, todo: list[Item]) -> int:
        threads = [threading.Thread(target=self._read, args=(todo,), daemon=True)]
        threads += [
            threading.Thread(target=self._send, daemon=True) for _ in range(self.args.parallel)
        ]
        progress = Progress(sys.stderr, self.tally)
        try:
            for thread in threads:
                thread.start()
            while alive := [t for t in threads if t.is_alive()]:
                alive[0].join(POLL)
                progress.draw()
            progress.end()
        except KeyboardInterrupt:
            progress.end()
            return self._interrupted(threads)
        return self._status()

    def _interrupted(self, threads: list[threading.Thread]) -> int:
        self.stop.set()
        print(
            "dicomhub import: stopping once the requests under way are answered "
            "(Ctrl-C again to quit at once)",
            file=sys.stderr,
        )
        self.tally.interrupted = True
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            pass
        return INTERRUPTED

    def _status(self) -> int:
        for exc in self.errors:
            print(f"dicomhub import: {self.url}: {exc}", file=sys.stderr)
            return REFUSED if isinstance(exc, Refused) else FAILED
        return FAILED if self.tally.refused else DONE

    def _read(self, todo: list[Item]) -> None:
        try:
            for batch in self._batches(todo):
                self._put(batch)
        except Exception as exc:  # reported, not lost in the thread
            self.errors.append(exc)
            self.stop.set()
        finally:
            for _ in range(self.args.parallel):
                self._put(None)

    def _put(self, batch) -> None:
        while not self.stop.is_set():
            try:
                self.batches.put(batch, timeout=POLL)
                return
            except queue.Full:
                continue

    def _batches(self, todo: list[Item]) -> Iterator[list[tuple[Item, bytes, str]]]:
        """Files in requests of at most --batch files and --batch-mb megabytes, and never two
        with one SOP Instance UID (see stow.per_part)."""
        most = self.args.batch_mb * 1e6
        batch: list[tuple[Item, bytes, str]] = []
        size, uids = 0, set()
        for item, data, why in read(todo):
            if self.stop.is_set():
                return
            if data is None:
                self.tally.skip(item, why)
                continue
            uid = sop_instance_uid(data)
            full = len(batch) >= self.args.batch or size + len(data) > most
            if batch and (full or (uid and uid in uids)):
                yield batch
                batch, size, uids = [], 0, set()
            batch.append((item, data, uid))
            size += len(data)
            uids.add(uid)
        if batch:
            yield batch

    def _send(self) -> None:
        if self.local is not None:
            sender = self.local.sender()
        else:
            sender = Sender(self.url, self.headers, self.stop, self.reached)
        try:
            while not self.stop.is_set():
                try:
                    batch = self.batches.get(timeout=POLL)
                except queue.Empty:
                    continue
                if batch is None:
                    return
                items, parts, uids = zip(*batch, strict=True)
                outcomes = sender.send(list(parts), list(uids))
                self.tally.record(items, outcomes)
                pairs = zip(items, outcomes, strict=True)
                self.state.add([i.key for i, o in pairs if o.kind in (STORED, DUPLICATE)])
        except Exception as exc:  # Refused, Unreachable, or the local archive's: stop
            self.errors.append(exc)
            self.stop.set()
        finally:
            sender.close()
