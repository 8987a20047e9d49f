"""``dicomhub export``: an export from a terminal, for operators without an HTTP client.

It is a client of a running server (``POST /v2/export``, then ``GET /v2/operations/{id}``), not
of the index: an embedded server locks its data folder, and a scaled-out one runs the job on
whichever node claims it. The bearer token comes from ``--token-file`` or ``DICOMHUB_TOKEN``,
never from a flag (the command line is visible to every user of the machine).

Exit status: 0 the export completed; 1 it failed (or the server could not be reached);
2 the server refused the request (4xx: its problem document's detail is printed), or the
command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

from dicomhub.clients import common
from dicomhub.clients.common import URL_ENV, JsonHttp, Refused, Unreachable, bar, detail
from dicomhub.dicom.deidentify import OPTION_NAMES

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/v2"
COMPLETED, FAILED, REFUSED = 0, 1, 2
UNREACHABLE_FOR = 60.0  # seconds of failed polls (a server restarting) before giving up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "identifiers",
        nargs="*",
        metavar="IDENTIFIER",
        help="what to export: STUDY, STUDY/SERIES or STUDY/SERIES/INSTANCE UIDs",
    )
    parser.add_argument(
        "--query",
        metavar="QIDO-QUERY",
        help="export the studies this QIDO-RS study query matches (instead of identifiers), "
        "e.g. 'PatientID=P1&StudyDate=20200101-20201231&ModalitiesInStudy=CT'",
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="destination, under a prefix the server's --export-allow lists: file:///folder "
        "(or /folder, on the server's machine), s3://bucket/prefix, az://container/prefix, "
        "gs://bucket/prefix, or an Azure container's https:// URL",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the running dicomhub server [env {URL_ENV}; default {DEFAULT_URL}]",
    )
    common.add_token_argument(parser)
    parser.add_argument(
        "--deidentify",
        action="store_true",
        help="de-identify (PS3.15 Annex E Basic Profile) the exported instances",
    )
    parser.add_argument(
        "--deidentify-option",
        action="append",
        choices=list(OPTION_NAMES),
        default=[],
        metavar="NAME",
        help=f"a profile option (implies --deidentify); repeatable: {', '.join(OPTION_NAMES)}",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the operation is read (default 1)",
    )


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /export body the arguments ask for (conformance 7.7)."""
    if args.query is not None:
        source = {"type": "query", "settings": {"query": args.query}}
    else:
        source = {"type": "identifiers", "settings": {"values": args.identifiers}}
    to = args.to
    if to.startswith("/"):
        to = "file://" + to
    if to.startswith(("http://", "https://")):
        destination = {"type": "azureblob", "settings": {"blobContainerUri": to}}
    else:
        destination = {"type": "blob", "settings": {"url": to}}
    body: dict[str, Any] = {"source": source, "destination": destination}
    if args.deidentify or args.deidentify_option:
        body["deidentify"] = {"options": list(dict.fromkeys(args.deidentify_option))}
    return body


def token(args: argparse.Namespace) -> str | None:
    return common.token(args.token_file, "export")


def run(args: argparse.Namespace) -> int:
    if (args.query is None) == (not args.identifiers):
        return _usage("give the IDENTIFIERs to export, or --query (one of the two)")
    if args.poll_interval <= 0:
        return _usage("--poll-interval must be positive")
    bearer = token(args)
    headers = {"Accept": "application/json", **common.auth_headers(bearer)}
    base = args.url.rstrip("/") + API
    http = JsonHttp(headers)
    try:
        operation = _start(http, base, request_body(args))
        state = _follow(http, f"{base}/operations/{operation}", args.poll_interval, sys.stderr)
    except Refused as exc:
        print(f"dicomhub export: refused: {exc}", file=sys.stderr)
        return REFUSED
    except Unreachable as exc:
        print(f"dicomhub export: {args.url}: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(
            "\ndicomhub export: stopped following; the export goes on in the server",
            file=sys.stderr,
        )
        return 130
    _report(state, sys.stdout)
    if state.get("status") != "completed":
        for error in state.get("errors") or []:
            print(f"dicomhub export: {error}", file=sys.stderr)
        return FAILED
    return COMPLETED


def _usage(message: str) -> int:
    return common.usage("export", message)


def _start(http: JsonHttp, base: str, body: dict) -> str:
    status, answer = http.call("POST", f"{base}/export", body)
    if 400 <= status < 500:
        raise Refused(f"{status} {detail(answer)}")
    if status != 202:
        raise Unreachable(f"{status} {detail(answer)}")
    return answer["id"]


def _follow(http: JsonHttp, href: str, interval: float, err: TextIO) -> dict:
    """The operation once it has ended, its progress shown on ``err`` meanwhile."""
    show = _Progress(err, href.rsplit("/", 1)[-1])
    failing_since: float | None = None
    while True:
        try:
            status, state = http.call("GET", href)
            failing_since = None
        except Unreachable:
            # a server restarting (the job goes on on its own): keep asking for a while
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > UNREACHABLE_FOR:
                show.end()
                raise
            time.sleep(interval)
            continue
        if 400 <= status < 500:
            show.end()
            raise Refused(f"{status} {detail(state)}")
        show.update(state)
        if status == 200:
            show.end()
            return state
        time.sleep(interval)


class _Progress:
    """A bar redrawn in place on a terminal; plain lines, one per change, otherwise."""

    def __init__(self, out: TextIO, operation: str):
        self.out = out
        self.operation = operation
        self.tty = out.isatty()
        self.last: tuple | None = None

    def update(self, state: dict) -> None:
        results = state.get("results") or {}
        percent = int(state.get("percentComplete") or 0)
        exported, skipped = results.get("exported", 0), results.get("skipped", 0)
        shown = (state.get("status"), percent, exported, skipped)
        if self.tty:
            self.out.write(
                f"\r{bar(percent / 100)} {percent:3d}%  exported {exported}  "
                f"skipped {skipped}  {shown[0]}\x1b[K"
            )
        elif shown != self.last:
            self.out.write(
                f"export {self.operation}: {shown[0]} {percent}% "
                f"exported {exported} skipped {skipped}\n"
            )
        self.out.flush()
        self.last = shown

    def end(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("\n")
            self.out.flush()


def _report(state: dict, out: TextIO) -> None:
    results = state.get("results") or {}
    for name, value in (
        ("operation", state.get("operationId")),
        ("status", state.get("status")),
        ("exported", results.get("exported", 0)),
        ("skipped", results.get("skipped", 0)),
        ("errors.log", results.get("errorHref", "-")),
    ):
        print(f"{name:<11}{value}", file=out)
