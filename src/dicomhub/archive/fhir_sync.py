"""FHIR sync: the change feed, in order, into a FHIR server (one study at a time).

Each step reads the changes after the checkpoint kept in the index, writes the current state of
every study they touch (an emptied study is deleted from FHIR), then moves the checkpoint past
them. Writes describe the whole study and are conditional on identifiers, so a step that is
repeated (after a crash, a lost lease or a transient error) creates nothing twice. A change the
FHIR server refuses for good is recorded with its OperationOutcome and skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from dicomhub.clock import utcnow
from dicomhub.fhir import projection
from dicomhub.fhir.client import FhirClient, FhirError
from dicomhub.model import DEFAULT_PARTITION, Scope, SyncFailure, SyncState
from dicomhub.storage.protocols import ChangeFeed, FhirCheckpoints, Instances

log = logging.getLogger(__name__)


class FhirSyncIndex(FhirCheckpoints, ChangeFeed, Instances, Protocol):
    """What the FHIR sync uses of the index: its checkpoint and lease, the change feed after
    it, and the metadata of the studies the changes touch."""


@dataclass(frozen=True)
class Step:
    held: bool  # False: another node holds the sync
    changes: int  # change-feed entries passed (0: caught up)


@dataclass(frozen=True)
class Status:
    state: SyncState
    latest: int  # the newest change-feed sequence

    @property
    def lag(self) -> int:
        return max(0, self.latest - self.state.sequence)


class FhirSync:
    def __init__(
        self,
        index: FhirSyncIndex,
        client: FhirClient,
        options: projection.Options,
        batch: int,
        lease: float,
    ):
        self.index = index
        self.client = client
        self.options = options
        self.target = client.base_url
        self.batch = batch
        self.lease = timedelta(seconds=lease)

    async def step(self, owner: str) -> Step:
        """Sync the next batch of changes. Raises FhirError (transient) without moving on."""
        now = utcnow()
        checkpoint = await self.index.claim_fhir_sync(self.target, owner, now, now + self.lease, 0)
        if checkpoint is None:
            return Step(False, 0)
        entries = await self.index.changefeed(
            checkpoint, self.batch, by_sequence=True, include_metadata=False
        )
        if not entries:
            latest = await self.index.latest_change(include_metadata=False)
            if latest is None or latest.sequence <= checkpoint:
                return Step(True, 0)
            entries_end = min(checkpoint + self.batch, latest.sequence)  # a gap in sequences
            await self._advance(owner, entries_end, 0)
            return Step(True, entries_end - checkpoint)
        studies: dict[tuple[str, str], int] = {}
        for entry in entries:  # each study once, at its last change in the batch
            studies[(entry.id.partition, entry.id.study)] = entry.sequence
        for (partition, study), sequence in studies.items():
            try:
                await self.sync_study(partition, study)
            except projection.Unmappable as exc:
                await self._failed(sequence, study, _in(partition, str(exc)), None)
            except FhirError as exc:
                if exc.transient:
                    raise
                await self._failed(sequence, study, _in(partition, str(exc)), exc.outcome)
        await self._advance(owner, entries[-1].sequence, len(entries))
        return Step(True, len(entries))

    async def sync_study(self, partition: str, study: str) -> None:
        """Make the FHIR server hold data ``partition``'s study as the index holds it now
        (another partition's copy of the study is another ImagingStudy, left as it is)."""
        options = self.options.of(partition)
        items, _ = await self.index.metadata(Scope(study, partition=partition))
        if not items:
            await self._delete(study, options)
            return
        instances = [json.loads(item) for item in items]
        search = projection.patient_search(instances[-1], options)
        found = projection.linkable(await self.client.search(search), instances[-1], options)
        studies = await self.client.search(projection.study_search(study, options.uid_system))
        stale = await self._stale_observations(studies, projection.observation_keys(instances))
        bundle = projection.study_bundle(instances, options, found, stale)
        await self.client.transaction(bundle)

    async def _stale_observations(self, studies: list[dict], keep: set[str]) -> tuple[str, ...]:
        """Observations written for the study's (``studies``, as found in FHIR) dose reports
        that are gone now."""
        stale = []
        for found in studies:
            for observation in await self.client.search(
                f"Observation?part-of=ImagingStudy/{found['id']}"
            ):
                keys = {i.get("value") for i in observation.get("identifier", [])}
                if not keys & keep:
                    stale.append(f"Observation/{observation['id']}")
        return tuple(stale)

    async def _delete(self, study: str, options: projection.Options) -> None:
        """An emptied study leaves FHIR, if this deployment (and partition) wrote it
        (``meta.source``)."""
        found = await self.client.search(projection.study_search(study, options.uid_system))
        mine = [r for r in found if r.get("meta", {}).get("source") == options.endpoint]
        if not mine:
            return
        stale = await self._stale_observations(mine, set())
        urls = [*stale, *(f"ImagingStudy/{r['id']}" for r in mine)]
        entries = [{"request": {"method": "DELETE", "url": url}} for url in urls]
        await self.client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )

    async def status(self) -> Status:
        state = await self.index.fhir_sync_state(self.target)
        latest = await self.index.latest_change(include_metadata=False)
        return Status(state, latest.sequence if latest else 0)

    async def failures(self, offset: int, limit: int) -> list[SyncFailure]:
        return await self.index.fhir_failures(self.target, offset, limit)

    async def release(self, owner: str) -> None:
        await self.index.release_fhir_sync(self.target, owner)

    async def _advance(self, owner: str, sequence: int, count: int) -> None:
        now = utcnow()
        held = await self.index.advance_fhir_sync(
            self.target, owner, sequence, count, now, now + self.lease
        )
        if not held:
            log.warning("FHIR sync: the lease was lost to another node at sequence %d", sequence)

    async def _failed(
        self, sequence: int, study: str, error: str, outcome: dict[str, Any] | None
    ) -> None:
        log.warning("FHIR sync: change %d (study %s) refused: %s", sequence, study, error)
        await self.index.record_fhir_failure(self.target, sequence, study, error, outcome, utcnow())


def _in(partition: str, error: str) -> str:
    """A refusal's error, naming the data partition unless it is the default one."""
    return error if partition == DEFAULT_PARTITION else f"data partition {partition}: {error}"
