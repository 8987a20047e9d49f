"""The event loop of dicomhub's own processes and threads (the SQLite writer, the background
and DIMSE processes of ``serve``), as uvicorn picks it for the server processes: uvloop where
it is installed (not on Windows), whose sockets and hand-offs cost less CPU than asyncio's own
loop (a webhook delivery's request, an index statement), else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
