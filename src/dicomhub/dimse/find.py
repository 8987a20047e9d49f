"""C-FIND (PS3.4 C.4.1) on the QIDO-RS query engine (the identifier mapping is
``dicom/cfind.py``). PATIENT level (Patient Root) is the study search reduced to one response
per patient."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydicom.dataset import Dataset

from dicomhub.archive.archive import Archive
from dicomhub.dicom.cfind import LEVELS, parameters, query_level, response
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import parse_query
from dicomhub.model import DEFAULT_PARTITION

PAGE = 1000


async def find(
    archive: Archive, identifier: Dataset, max_limit: int, partition: str = DEFAULT_PARTITION
) -> AsyncIterator[Dataset]:
    """Response identifiers for ``identifier``, one per match in data ``partition``
    (InvalidRequest: it cannot be searched)."""
    level_name = query_level(identifier)
    level = LEVELS.get(level_name, Level.STUDY)
    keys, _ = await archive.extended_tags.searchable()
    params = parameters(identifier)
    seen: set[str] = set()
    offset = 0
    while True:
        query = parse_query(
            [*params, ("limit", str(min(PAGE, max_limit))), ("offset", str(offset))],
            level,
            max_limit=max_limit,
            extended=keys,
        )
        query.partition = partition
        page = await archive.search.search(query, "")
        for result in page.results:
            found = Dataset.from_json(result)
            if level_name == "PATIENT":
                patient = str(found.get("PatientID", ""))
                if patient in seen:
                    continue
                seen.add(patient)
            yield response(identifier, found, level_name)
        if not page.more:
            return
        offset += query.limit
