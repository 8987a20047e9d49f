"""``dicomhub import --data-dir DIR``: straight into a local data folder, with no server.

The archive is built as ``serve`` builds it (cli.build_archive, the same settings from the
environment) and the folder locked as ``serve`` locks it (cli.lock_data_dir): an embedded
archive has one process storing into it, which also undoes at start-up what a crash left. Parts
go through the archive's STOW service (archive/store.py) on an event loop of its own thread,
so the sending threads of cli_import use it as they use a server; its outcomes come in part
order, with no answer to match. Nothing is audited as a request: whoever can write the data
folder can change the archive anyway.
"""

from __future__ import annotations

import asyncio
import threading

from dicomhub.archive.spool import PartBody
from dicomhub.archive.store import Part
from dicomhub.clients.stow import STORED, Outcome, failure, warning
from dicomhub.dicom import stow
from dicomhub.settings import Settings

DICOM = "application/dicom"


class LocalArchive:
    """The data folder's archive, opened and locked until close()."""

    def __init__(self, data_dir: str):
        from dicomhub.cli import build_archive, lock_data_dir  # the composition root's

        settings = Settings.load({"data_dir": data_dir})
        self.lock = lock_data_dir(settings)  # exits when a server holds the folder
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.archive = self.call(_started(build_archive, settings))

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def sender(self) -> LocalSender:
        return LocalSender(self)

    def close(self) -> None:
        try:
            self.call(self.archive.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.lock.close()


async def _started(build_archive, settings: Settings):
    archive = build_archive(settings)  # on the loop that will use it
    await archive.start(recover=True)
    return archive


class LocalSender:
    """What stow.Sender is to a server, for the local archive."""

    def __init__(self, local: LocalArchive):
        self.local = local

    def send(self, parts: list[bytes], uids: list[str]) -> list[Outcome]:
        outcomes = self.local.call(self._store(parts))
        return [_outcome(o) for o in outcomes]

    async def _store(self, parts: list[bytes]) -> list[stow.PartOutcome]:
        async def received():
            for data in parts:
                yield Part(DICOM, PartBody.of(data))

        return await self.local.archive.store.store_parts(received(), None, strict=False)

    def close(self) -> None:
        pass


def _outcome(o: stow.PartOutcome) -> Outcome:
    if o.failure is not None:
        return failure(o.failure, o.message)
    return Outcome(STORED, warning(o.warning_reason, o.warnings) if o.warning_reason else None)
