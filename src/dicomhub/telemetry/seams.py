"""Timing of the storage seams: a thin proxy around the index or the blob store, put in place
by the composition root, so that no backend measures itself.

Every coroutine method of the seam is timed (a histogram per method) and its failures counted;
a failure is the store's own (an exception outside the error tree, or ``Unavailable``), not a
request's (``NotFound``, ``AlreadyExists``, ... are answers). Other attributes (properties,
streams, plain methods) are the wrapped object's, untouched.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any

from dicomhub.errors import DicomhubError, Unavailable
from dicomhub.telemetry.instruments import BLOB_DURATION, BLOB_ERRORS, INDEX_DURATION, INDEX_ERRORS

_METRICS = {"index": (INDEX_DURATION, INDEX_ERRORS), "blob": (BLOB_DURATION, BLOB_ERRORS)}


class Measured:
    """``target`` (an index or a blob store), its coroutine methods timed as ``kind``."""

    def __init__(self, target: Any, kind: str):
        self._target = target
        self._metrics = _METRICS[kind]

    @property
    def measured(self) -> Any:
        """The object measured."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not inspect.ismethod(value):
            return value  # not kept: a property's value may change
        wrapped = value  # a plain method: kept as it is, not looked up again
        if inspect.iscoroutinefunction(value):
            wrapped = _timed(value, *(metric.labels(name) for metric in self._metrics))
        setattr(self, name, wrapped)  # found directly from now on
        return wrapped


def _timed(method, duration, errors):
    @functools.wraps(method)
    async def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, Unavailable) or not isinstance(exc, DicomhubError):
                errors.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    return timed


def measured(target: Any, kind: str) -> Any:
    """``target`` timed as ``kind`` ("index" or "blob")."""
    return Measured(target, kind)
