"""The STOW-RS requests of ``dicomhub import`` (PS3.18 section 10.5): several files per
request over one persistent connection, and what the answer says of each file.

The standard library's ``http.client`` is enough, and keeps the command free of a runtime
dependency. A server that fails (5xx, 503 while its database restarts) or drops the connection
is asked again for a while (not one whose storage is full: 507); a request refused as a whole
for who sends it or where (401, 403, 404, 405) stops the import, since every other request
would be refused alike.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urlsplit

from dicomhub.clients.common import Refused, Unreachable, detail, json_or_text
from dicomhub.dicom import stow
from dicomhub.dicom.multipart import PART_END, closing, new_boundary, part_header

STORED, DUPLICATE, REFUSED = "stored", "duplicate", "refused"
ANSWERED = (stow.STATUS_OK, stow.STATUS_ACCEPTED, stow.STATUS_CONFLICT)
STOPPING = (401, 403, 404, 405)
INSUFFICIENT_STORAGE = 507
RETRY_FOR = 60.0  # seconds a failing server is asked again before the import gives up
WARNINGS = {
    stow.ATTRIBUTES_DROPPED: "attributes left out of the index",
    stow.IMPLICIT_VR: "stored in Implicit VR Little Endian",
}
FAILURES = {
    stow.PROCESSING_FAILURE: "processing failure",
    stow.VALIDATION_FAILURE: "validation failure",
    stow.OUT_OF_RESOURCES: "out of resources",
}


@dataclass(frozen=True)
class Outcome:
    kind: str  # STORED, DUPLICATE or REFUSED
    reason: str | None = None  # why it was refused, or the warning it was stored with


class Sender:
    """One connection to the server's DICOMweb root (e.g. ``http://host:8080/v2``)."""

    def __init__(
        self, url: str, headers: dict[str, str], stop: threading.Event, reached: threading.Event
    ):
        """``reached`` is set once any sender had an answer: until then a connection refused
        is a wrong URL, said at once, not a server restarting, waited for."""
        parts = urlsplit(url)
        self.connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self.address = (parts.hostname, parts.port)
        self.path = parts.path.rstrip("/") + "/studies"
        self.headers = {"Accept": "application/dicom+json", **headers}
        self.stop, self.reached = stop, reached
        self.connection: http.client.HTTPConnection | None = None

    def send(self, parts: list[bytes], uids: list[str]) -> list[Outcome]:
        """The outcome of each part, in order; ``uids`` are their SOP Instance UIDs."""
        boundary = new_boundary()
        chunks = []
        for part in parts:
            chunks += [part_header(boundary, "application/dicom"), part, PART_END]
        chunks.append(closing(boundary))
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        status, answer = self._post(b"".join(chunks), content_type)
        if status in ANSWERED and isinstance(answer, dict):
            return per_part(answer, uids)
        if status in STOPPING:
            raise Refused(f"{status} {detail(answer)}")
        return [Outcome(REFUSED, f"HTTP {status}: {detail(answer)}")] * len(parts)

    def _post(self, body: bytes, content_type: str) -> tuple[int, object]:
        headers = {**self.headers, "Content-Type": content_type}
        deadline, delay = time.monotonic() + RETRY_FOR, 0.5
        while True:
            try:
                status, retry_after, answer = self._exchange(body, headers)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                problem, wait = str(exc) or exc.__class__.__name__, delay
                if not self.reached.is_set():
                    raise Unreachable(problem) from exc
            else:
                self.reached.set()
                if status < 500:
                    return status, json_or_text(answer)
                problem = f"{status} {detail(json_or_text(answer))}"
                if status == INSUFFICIENT_STORAGE:  # a full disk: asking again will not help
                    raise Unreachable(problem)
                wait = float(retry_after) if retry_after.isdigit() else delay
            if time.monotonic() + wait > deadline or self.stop.wait(wait):
                raise Unreachable(problem)
            delay = min(delay * 2, 8.0)

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if self.connection is None:
            self.connection = self.connection_class(*self.address, timeout=600)
        self.connection.request("POST", self.path, body, headers)
        response = self.connection.getresponse()
        return response.status, response.headers.get("Retry-After", ""), response.read()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def per_part(answer: dict, uids: list[str]) -> list[Outcome]:
    """Each part's outcome from the answer's Referenced and Failed SOP Sequences, matched by
    the SOP Instance UID of each part (``uids``: the answer lists the stored and the failed
    apart, not in part order, so a request never holds two parts with one UID: which is which
    could not be told). Parts the server could not name take its unnamed answers, in order."""
    stored = answer.get("00081199", {}).get("Value") or []
    failed = answer.get("00081198", {}).get("Value") or []
    if not failed and len(stored) == len(uids) and not any("00081196" in i for i in stored):
        return [Outcome(STORED)] * len(uids)  # the common case
    said: dict[str, list[Outcome]] = defaultdict(list)
    for item in stored:
        said[_text(item, "00081155")].append(Outcome(STORED, _warning(item)))
    for item in failed:
        said[_text(item, "00081155")].append(_failure(item))
    out = [said[uid].pop(0) if uid and said.get(uid) else None for uid in uids]
    unnamed = said.pop("", []) + [outcome for outcomes in said.values() for outcome in outcomes]
    for i, outcome in enumerate(out):
        if outcome is None:  # unreadable: the server could not name it either
            out[i] = unnamed.pop(0) if unnamed else Outcome(REFUSED, "not in the server's answer")
    return out


def _text(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _failure(item: dict) -> Outcome:
    return failure(int(_text(item, "00081197") or 0), _text(item, "00000902"))


def _warning(item: dict) -> str | None:
    if "00081196" not in item:
        return None
    comments = [_text(c, "00000902") for c in item.get("00741048", {}).get("Value") or []]
    return warning(int(_text(item, "00081196") or 0), comments)


def failure(code: int, comment: str | None) -> Outcome:
    """A FailureReason and its comment as told to the user; 0xB00E is a duplicate."""
    if code == stow.SOP_INSTANCE_ALREADY_EXISTS:
        return Outcome(DUPLICATE)
    reason = f"0x{code:04X} {FAILURES.get(code, 'failure')}"
    return Outcome(REFUSED, f"{reason}: {comment}" if comment else reason)


def warning(code: int, comments: list[str]) -> str:
    """A WarningReason and its comments as told to the user."""
    reason = f"0x{code:04X} {WARNINGS.get(code, 'warning')}"
    return f"{reason}: {'; '.join(comments)}" if comments else reason
