"""Logs: readable text (the default) or JSON, one object per line (``--log-format json``), and
the request id every line written for a request carries.

The id of the request being served (and of the job being run, with the id of the request that
queued it) is kept in context variables: set by the web layer and the job runners, read here
when a line is written, so that nothing between them passes it along.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and
``request_id`` (null outside a request or a job), ``job_id`` while a job runs, the fields of a
request line (``method``, ``route``, ``path``, ``status``, ``duration_ms``, ``user``,
``partition``) and ``exception`` (its traceback) when there is one.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"  # as it has always been
ACCESS = "dicomhub.access"  # the request lines' logger
REQUEST_FIELDS = ("method", "route", "path", "status", "duration_ms", "user", "partition")
PAYLOAD_KEY = "requestId"  # a job's payload: the id of the request that queued it
MAX_REQUEST_ID = 128
_VISIBLE = bytes(range(0x21, 0x7F))  # visible ASCII: no space, no control character

request_id: ContextVar[str | None] = ContextVar("dicomhub_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("dicomhub_job_id", default=None)


def new_request_id() -> str:
    """A new id: a random (version 4) UUID as 32 hex digits, drawn without the uuid module's
    object (a third of its cost)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def sane_request_id(value: bytes) -> str | None:
    """A client's ``X-Request-Id`` when it can be kept (1 to 128 visible ASCII characters:
    nothing that could forge a log line or a header), else None."""
    if 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, _VISIBLE):
        return value.decode("ascii")
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[
                :-6
            ]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        job = job_id.get()
        if job is not None:
            line["job_id"] = job
        for name in REQUEST_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, form: str, access_log: bool) -> None:
    """This process's logging: ``form`` text or json, on standard error; request lines (at
    info level) when ``access_log``, or at ``level`` debug (as uvicorn's access log was)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "dicomhub", False)]:
        root.removeHandler(old)
    if not root.handlers:  # as logging.basicConfig: a host's own handlers are left alone
        handler = logging.StreamHandler(sys.stderr)
        handler.dicomhub = True
        handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT))
        root.addHandler(handler)
        root.setLevel(level.upper())
    access = logging.getLogger(ACCESS)
    on = access_log or level.lower() == "debug"
    access.setLevel(logging.INFO if on else logging.WARNING)


def uvicorn_config(form: str) -> dict | None:
    """uvicorn's log_config: its own (as before) for text; none for JSON, so that its lines
    reach the JSON handler of the root logger."""
    if form == "text":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    return None
