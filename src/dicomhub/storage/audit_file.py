"""The audit log as an append-only file of JSON lines (``--audit-log /path/audit.jsonl``).

Each batch is appended and synced to disk before it counts as written. The file is opened per
batch, so it can be rotated by renaming it (logrotate without copytruncate); entries are read
back from the current file only, in order, and an entry's id is its line number there.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path

from dicomhub.model import AuditEntry, AuditQuery


class FileAuditLog:
    def __init__(self, path: str):
        self.path = Path(path)

    async def add_audit_entries(self, entries: list[AuditEntry]) -> None:
        data = "".join(json.dumps(e.to_json(), separators=(",", ":")) + "\n" for e in entries)
        await asyncio.to_thread(self._append, data.encode())

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return await asyncio.to_thread(self._read, query)

    def _read(self, query: AuditQuery) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        skip = query.offset
        if not self.path.exists():
            return out
        with self.path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    entry = AuditEntry.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash mid-write
                entry.id = number
                if not query.matches(entry):
                    continue
                if skip:
                    skip -= 1
                    continue
                out.append(entry)
                if len(out) == query.limit:
                    break
        return out

    async def purge_audit_entries(self, before: datetime) -> None:
        """Nothing: an append-only file is rotated and expired by the host's log rotation."""
