"""Delete (non-standard, as Microsoft's server): gone from the index at once, blobs later."""

from __future__ import annotations

from datetime import timedelta

from dicomhub.clock import utcnow
from dicomhub.errors import NotFound
from dicomhub.model import Scope
from dicomhub.storage.protocols import Instances


class DeleteService:
    def __init__(self, index: Instances, delete_delay: int):
        self.index = index
        self.delay = timedelta(seconds=delete_delay)

    async def delete(self, scope: Scope) -> int:
        removed = await self.index.delete(scope, utcnow() + self.delay)
        if removed == 0:
            what = scope.sop or scope.series or scope.study
            raise NotFound(f"{what} not found")
        return removed
