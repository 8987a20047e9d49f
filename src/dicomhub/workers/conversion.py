"""The conversion pool: worker processes that transcode and render pixel data, one frame per
task (archive/pixels.py's Converter), built by the composition root."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from dicomhub.errors import ConversionCrashed, ConversionFailed, DicomhubError
from dicomhub.lifetime import end_with_parent

log = logging.getLogger(__name__)


class ProcessConverter:
    """A pool of worker processes shared by every archive in this process."""

    _pools: dict[int, ProcessPoolExecutor] = {}

    def __init__(self, workers: int):
        self.workers = workers or os.cpu_count() or 1

    def _pool(self) -> ProcessPoolExecutor:
        pool = self._pools.get(self.workers)
        if pool is None:
            # spawn: no fork of a threaded server; the workers end with this process, however
            # it ends (they would idle on under PID 1)
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(
                self.workers, context, initializer=end_with_parent, initargs=(os.getpid(),)
            )
            self._pools[self.workers] = pool
        return pool

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` in a worker process. What it raises there is the data's fault
        (ConversionFailed, 406); a worker that dies or a task that cannot reach one is the
        server's (ConversionCrashed, 500)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), _in_worker, fn, *args)
        except BrokenProcessPool as exc:  # a worker died (a codec crashed it): a new pool
            self._pools.pop(self.workers, None)
            raise ConversionCrashed("a conversion worker process died; see the log") from exc
        except DicomhubError:
            raise
        except Exception as exc:  # e.g. arguments or a result that cannot cross to the worker
            log.exception("a conversion could not be run")
            raise ConversionCrashed("a conversion could not be run; see the log") from exc


def _in_worker(fn: Callable, *args):
    """Runs in the worker: codecs raise many kinds for data they cannot handle."""
    try:
        return fn(*args)
    except DicomhubError:
        raise
    except Exception as exc:
        raise ConversionFailed(f"the pixel data could not be converted: {exc}") from None
