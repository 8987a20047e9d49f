"""``dicomhub subscriptions``: webhook subscriptions from a terminal (``/v2/subscriptions``,
conformance 7.9), for operators without an HTTP client. A client of a running server; the
bearer token (its roles must grant the admin action) from ``--token-file`` or
``DICOMHUB_TOKEN``.

Exit status: 0 done; 1 the server could not be reached (or failed); 2 the server refused the
request (4xx: its problem document's detail is printed), or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from typing import Any

from dicomhub.clients import common
from dicomhub.clients.common import URL_ENV, JsonHttp, Refused, Unreachable, detail

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/v2/subscriptions"
DONE, UNREACHABLE, REFUSED = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the running dicomhub server [env {URL_ENV}; default {DEFAULT_URL}]",
    )
    common.add_token_argument(parser)
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every subscription, one line each: id, state, url")
    create = actions.add_parser(
        "create", help="subscribe URL; prints the subscription with its secret (shown once)"
    )
    create.add_argument("target", metavar="URL", help="where the events are POSTed")
    create.add_argument(
        "--event-type",
        action="append",
        metavar="TYPE",
        help="an event type (repeatable; default the three DicomImage events)",
    )
    create.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE[,VALUE]",
        help="partition, modality or sopClassUid (repeatable)",
    )
    create.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="ATTRIBUTE=VALUE",
        help="a QIDO-style study filter term, e.g. StudyDescription=*CHEST* (repeatable)",
    )
    create.add_argument("--schema", choices=["cloudevents", "eventgrid"])
    create.add_argument(
        "--secret-file", metavar="FILE", help="file holding the whsec_ secret (default: a new one)"
    )
    for name, what in (
        ("get", "one subscription, with its dead-letter count"),
        ("delete", "delete a subscription and its dead letters"),
        ("pause", "stop deliveries (they resume where they stopped)"),
        ("resume", "resume deliveries"),
        ("deadletters", "the events its receiver did not take"),
    ):
        actions.add_parser(name, help=what).add_argument("id", metavar="ID")
    replay = actions.add_parser("replay", help="deliver a dead letter again")
    replay.add_argument("id", metavar="ID")
    replay.add_argument("event", metavar="EVENT", help="the dead letter's event id")


def request(args: argparse.Namespace) -> tuple[str, str, Any, int]:
    """(method, path under /v2/subscriptions, body, expected status) of the action."""
    action = args.action
    if action == "list":
        return "GET", "", None, 200
    if action == "create":
        body: dict[str, Any] = {"url": args.target}
        if args.event_type:
            body["eventTypes"] = args.event_type
        if args.filter:
            body["filter"] = {}
            for item in args.filter:
                field, sep, values = item.partition("=")
                if not sep:
                    raise ValueError(f"--filter {item!r}: give FIELD=VALUE")
                body["filter"][field] = values.split(",")
        for item in args.study:
            attribute, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--study {item!r}: give ATTRIBUTE=VALUE")
            body.setdefault("filter", {}).setdefault("study", {})[attribute] = value
        if args.schema:
            body["schema"] = args.schema
        if args.secret_file:
            try:
                with open(args.secret_file) as f:
                    body["secret"] = f.read().strip()
            except OSError as exc:
                raise ValueError(f"cannot read --secret-file: {exc.strerror}") from exc
        return "POST", "", body, 201
    path = "/" + urllib.parse.quote(args.id, safe="")
    if action in ("pause", "resume"):
        return "PATCH", path, {"state": "paused" if action == "pause" else "active"}, 200
    if action == "delete":
        return "DELETE", path, None, 204
    if action == "deadletters":
        return "GET", path + "/deadletters", None, 200
    if action == "replay":
        event = urllib.parse.quote(args.event, safe="")
        return "POST", f"{path}/deadletters/{event}/replay", None, 202
    return "GET", path, None, 200


def run(args: argparse.Namespace) -> int:
    try:
        method, path, body, expected = request(args)
    except ValueError as exc:
        return common.usage("subscriptions", str(exc))
    headers = {"Accept": "application/json", **common.auth_headers(_token(args))}
    http = JsonHttp(headers)
    try:
        status, answer = http.call(method, args.url.rstrip("/") + API + path, body)
        if status != expected:
            raise Refused(f"{status} {detail(answer)}")
    except Refused as exc:
        print(f"dicomhub subscriptions: refused: {exc}", file=sys.stderr)
        return REFUSED
    except Unreachable as exc:
        print(f"dicomhub subscriptions: {args.url}: {exc}", file=sys.stderr)
        return UNREACHABLE
    if args.action == "list":
        for s in answer:
            print(f"{s['id']}  {s['state']:<7}  {s['url']}")
    elif status != 204 and status != 202:
        print(json.dumps(answer, indent=2))
    return DONE


def _token(args: argparse.Namespace) -> str | None:
    return common.token(args.token_file, "subscriptions")
