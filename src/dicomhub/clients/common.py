"""What the client commands (``dicomhub export``, ``dicomhub import``, ``dicomhub
subscriptions``) share: where the server is, the bearer token, how a refusal is told, JSON over
HTTP, and the progress bar.

They talk to a running server, never to its index: an embedded server locks its data folder,
and a scaled-out one spreads its work over nodes. The bearer token comes from ``--token-file``
or ``DICOMHUB_TOKEN``, never from a flag (a command line is visible to every user of the
machine).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN_ENV = "DICOMHUB_TOKEN"
URL_ENV = "DICOMHUB_URL"
BAR = 30  # characters of the progress bar


class Refused(Exception):
    """The request was refused (4xx); the message is the problem document's detail."""


class Unreachable(Exception):
    """The server could not be reached, or failed (5xx)."""


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the bearer token, when the server needs one [else env {TOKEN_ENV}]",
    )


def token(token_file: str | None, command: str) -> str | None:
    """The bearer token: the file's content, else the environment's, else None."""
    if token_file:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as exc:
            why = exc.strerror
            raise SystemExit(f"dicomhub {command}: cannot read --token-file: {why}") from exc
        if not text:
            raise SystemExit(f"dicomhub {command}: the token file {token_file} is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


def auth_headers(bearer: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def usage(command: str, message: str) -> int:
    """A wrong command line: said on stderr, exit status 2."""
    print(f"dicomhub {command}: error: {message} (see dicomhub {command} --help)", file=sys.stderr)
    return 2


def json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return data.decode("utf-8", "replace")[:500]


def detail(answer: Any) -> str:
    """What a problem document (or any answer) says."""
    if isinstance(answer, dict):
        return str(answer.get("detail") or answer.get("title") or answer)
    return str(answer)[:500]


def bar(fraction: float) -> str:
    """``[#####-----]`` for a fraction done between 0 and 1."""
    done = int(BAR * max(0.0, min(1.0, fraction)))
    return "[" + "#" * done + "-" * (BAR - done) + "]"


class JsonHttp:
    """JSON over HTTP with the standard library (the CLI needs nothing more)."""

    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """(status, answer) of a request; raises Unreachable for no answer or a 5xx."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json_or_text(response.read())
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, json_or_text(exc.read())
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(str(exc) or exc.__class__.__name__) from exc
        if status >= 500:
            raise Unreachable(f"{status} {detail(answer)}")
        return status, answer
