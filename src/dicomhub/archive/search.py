"""Search (QIDO-RS): run a parsed query on the index and shape its rows into DICOM JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomhub.dicom import qido_results
from dicomhub.dicom.query import Query
from dicomhub.storage.protocols import InstanceSearch


@dataclass
class SearchPage:
    results: list[dict[str, Any]]
    more: bool  # further matches follow this page


class SearchService:
    def __init__(self, index: InstanceSearch):
        self.index = index

    async def search(self, query: Query, base_url: str) -> SearchPage:
        rows = await self.index.search(query, qido_results.needs(query))
        more = len(rows) > query.limit
        results = [qido_results.build(query, row, base_url) for row in rows[: query.limit]]
        return SearchPage(results, more)

    async def count(self, query: Query) -> int:
        return await self.index.count(query)
