"""Export (Microsoft's POST /export, section 13 of its docs): instances copied, as stored or
de-identified, to ``<operationId>/results/<study>/<series>/<sop>.dcm`` under a destination the
operator allows, failures listed in ``<operationId>/errors.log``.

It is a background job that goes on from its checkpoint: the source it is at, the last
instance it finished there (sources are walked in (series, SOP Instance UID) order), and the
counts and error lines up to that instance, all saved together. A job resumed on another node
starts from that point with those counts, so no instance is counted twice; the files written
after the checkpoint are written again, with the same bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from dicomhub.archive import export_request
from dicomhub.archive.extended_tags import ExtendedTagsService
from dicomhub.archive.operations import OperationsService
from dicomhub.clock import isoformat, utcnow
from dicomhub.dicom.deidentify import Context, Options, deidentify_file
from dicomhub.errors import InvalidDicom, InvalidRequest, NotFound
from dicomhub.model import DEFAULT_PARTITION, JobType, Scope, StoredInstance
from dicomhub.settings_groups import Export
from dicomhub.storage.protocols import (
    BlobStore,
    ExportSink,
    Instances,
    InstanceSearch,
    OpenSink,
)

BATCH = 100  # instances between checkpoints (Microsoft's batch size)
CONCURRENCY = 8  # instances read and written at once
# what dicomhub cannot de-identify (no Clean Pixel Data Option): skipped, as downloads refuse it
BURNED_IN = "burned-in annotation (0028,0301 YES): not exported de-identified"
MAX_ERROR_LINES = 10_000  # errors.log lines kept (failures past them are only counted)


class ExportIndex(Instances, InstanceSearch, Protocol):
    """What an export uses of the index: a query source's studies, then their instances."""


class ExportService:
    def __init__(
        self,
        settings: Export,
        index: ExportIndex,
        blobs: BlobStore,
        ops: OperationsService,
        key: bytes,
        extended_tags: ExtendedTagsService,
        sinks: OpenSink,
    ):
        """``key``: the server's de-identification key, taken when the operator gave one
        (``--deidentify-key-file``: the same UIDs across exports and nodes). ``sinks`` opens
        a destination (chosen in the composition root, cli.py)."""
        self.sinks = sinks
        self.key = key
        self.project_key = settings.operator_key
        self.allow = list(settings.allow)
        self.request_credentials = settings.request_credentials
        self.index = index
        self.blobs = blobs
        self.operations = ops
        self.extended_tags = extended_tags

    async def start(self, body: Any, partition: str = DEFAULT_PARTITION) -> str:
        """Queue the export ``body`` asks for, of data partition ``partition``; its operation
        id."""
        payload = export_request.parse(body, self.allow, self.request_credentials, self.project_key)
        self.sinks(payload["destination"]["url"], payload["destination"]["options"])  # valid?
        payload["partition"] = partition
        if "query" in payload:
            payload["sources"] = await self.studies(payload["query"], partition)
        operation = await self.operations.start(str(JobType.EXPORT), payload)
        assert operation is not None
        return operation

    async def studies(self, text: str, partition: str = DEFAULT_PARTITION) -> list[list[str]]:
        """The studies of ``partition`` a "query" source matches now, in storage order, as
        identifiers: the job exports these, wherever and however often it is resumed."""
        keys, _ = await self.extended_tags.searchable()
        query = export_request.study_query(text, keys)
        query.partition = partition
        rows = await self.index.search(query, set())  # UIDs only: nothing optional needed
        if len(rows) > query.limit:
            raise InvalidRequest(
                f"the query matches more than {query.limit} studies, the most one export "
                "takes; narrow it (e.g. by StudyDate ranges) and export in parts"
            )
        return [[row["study_uid"]] for row in rows]

    async def run(
        self,
        operation: str,
        payload: dict,
        checkpoint: dict | None,
        progress: Callable[[int, Any], None],
    ) -> dict:
        dest = payload["destination"]
        sink = self.sinks(dest["url"], dest["options"])
        deid = payload.get("deidentify")
        key = bytes.fromhex(payload["key"]) if payload.get("key") else self.key
        context = Context(key) if deid is not None else None
        options = Options(**(deid or {}))
        sources = payload["sources"]
        state = checkpoint or {"source": 0, "after": None, "exported": 0, "skipped": 0}
        errors: list[dict] = list(state.get("errors", []))
        exported, skipped = state["exported"], state["skipped"]
        results = {"errorHref": f"{dest['href']}/{operation}/errors.log"}

        def save(source: int, after: list[str] | None, done: float) -> None:
            # A fresh dict each time: the runner saves it with a later lease renewal.
            progress(
                int((source + done) * 100 / len(sources)),
                {
                    "source": source,
                    "after": after,
                    "exported": exported,
                    "skipped": skipped,
                    "errors": list(errors),
                    "results": {**results, "exported": exported, "skipped": skipped},
                },
            )

        for number in range(state["source"], len(sources)):
            ids = sources[number]
            after = state["after"] if number == state["source"] else None
            scope = Scope(*ids, partition=payload.get("partition", DEFAULT_PARTITION))
            found = sorted(await self.index.instances(scope), key=_order)
            if not found:
                skipped += 1
                _error(errors, _named(ids, context), "not found")
                await self._errors_log(sink, operation, errors)
            todo = [i for i in found if after is None or _order(i) > tuple(after)]
            for start in range(0, len(todo), BATCH):
                batch = todo[start : start + BATCH]
                failures = await self._batch(sink, operation, batch, context, options)
                for instance, failure in zip(batch, failures, strict=True):
                    if failure is None:
                        exported += 1
                    else:
                        skipped += 1
                        _error(errors, _named(_ids(instance), context), failure)
                if any(failures):
                    await self._errors_log(sink, operation, errors)
                save(number, list(_order(batch[-1])), (start + len(batch)) / len(todo))
            save(number + 1, None, 0)
        await self._errors_log(sink, operation, errors)
        return {**results, "exported": exported, "skipped": skipped}

    async def _batch(
        self,
        sink: ExportSink,
        operation: str,
        batch: list[StoredInstance],
        context: Context | None,
        options: Options,
    ) -> list[str | None]:
        """Each instance exported, or why it could not be (the destination failing fails the
        job: it is retried from its checkpoint)."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(instance: StoredInstance) -> str | None:
            async with gate:
                try:
                    data = await self.blobs.read(instance.blob_key)
                    uids = (instance.id.study, instance.id.series, instance.id.sop)
                    if context is not None:
                        data, ds = await asyncio.to_thread(deidentify_file, data, context, options)
                        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
                            return BURNED_IN  # as downloads refuse it
                        uids = tuple(context.uid(u) for u in uids)  # UIDs may carry PHI
                except NotFound:
                    return "the stored file of the instance is missing"
                except InvalidDicom as exc:
                    return str(exc)
                await sink.put(f"{operation}/results/{'/'.join(uids)}.dcm", data)
                return None

        return list(await asyncio.gather(*(one(i) for i in batch)))

    async def _errors_log(self, sink: ExportSink, operation: str, errors: list[dict]) -> None:
        """errors.log rewritten whole from the lines of the checkpoint: no line twice."""
        text = "".join(json.dumps(e) + "\n" for e in errors)
        await sink.put(f"{operation}/errors.log", text.encode())


def _order(instance: StoredInstance) -> tuple[str, str]:
    return (instance.id.series, instance.id.sop)


def _ids(instance: StoredInstance) -> list[str]:
    return [instance.id.study, instance.id.series, instance.id.sop]


def _named(ids: list[str], context: Context | None) -> str:
    """An identifier as errors.log names it: de-identified exports name the new UIDs (the
    originals may carry PHI), as their files do."""
    return "/".join(context.uid(u) if context is not None else u for u in ids)


def _error(errors: list[dict], identifier: str, error: str) -> None:
    if len(errors) < MAX_ERROR_LINES:
        errors.append({"Timestamp": isoformat(utcnow()), "Identifier": identifier, "Error": error})
