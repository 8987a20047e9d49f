"""C-FIND on the Modality Worklist Information Model (PS3.4 Annex K) and on UPS Pull (PS3.4
CC.2.8), answered by the workitem search of the caller's data partition (``archive.workitems``;
the identifier mappings are ``dicom/worklist.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydicom.dataset import Dataset

from dicomhub.archive.archive import Archive
from dicomhub.dicom import worklist
from dicomhub.dicom.workitem_query import MAX_LIMIT
from dicomhub.model import DEFAULT_PARTITION

PAGE = MAX_LIMIT


async def _pages(
    archive: Archive, params: list[tuple[str, str]], partition: str
) -> AsyncIterator[dict]:
    workitems = archive.workitems.of(partition)
    offset = 0
    while True:
        page = [("limit", str(PAGE)), ("offset", str(offset))]
        found, _ = await workitems.search([*params, *page])
        for workitem in found:
            yield workitem
        if len(found) < PAGE:
            return
        offset += PAGE


async def modality_worklist(
    archive: Archive, identifier: Dataset, partition: str = DEFAULT_PARTITION
) -> AsyncIterator[Dataset]:
    """One worklist item per SCHEDULED workitem of data ``partition`` the identifier matches
    (InvalidRequest or WorkitemInvalid: it cannot be searched)."""
    query = worklist.query(identifier)
    async for workitem in _pages(archive, query.params, partition):
        if worklist.in_times(workitem, query.times):
            yield worklist.response(identifier, workitem)


async def ups_find(
    archive: Archive, identifier: Dataset, partition: str = DEFAULT_PARTITION
) -> AsyncIterator[Dataset]:
    """One response per workitem of data ``partition`` the identifier matches (UPS-RS
    search's keys)."""
    params, _ = worklist.ups_query(identifier)
    async for workitem in _pages(archive, params, partition):
        yield worklist.ups_response(identifier, workitem)
