"""C-FIND (PS3.4 C.4.1) on the QIDO-RS query engine: the identifier becomes QIDO parameters
(a key with a value is a matching key in the same DICOM matching syntax, an empty key is
returned), and each QIDO result becomes a response identifier holding exactly the keys asked
for. PATIENT level (Patient Root) is the study search reduced to one response per patient."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomhub.archive.archive import Archive
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import parse_query
from dicomhub.errors import InvalidRequest

LEVELS = {"STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
SKIPPED = {0x00080005, 0x00080052, 0x00080054}  # charset, level, RetrieveAETitle
PAGE = 1000


class FindError(Exception):
    """The identifier cannot be searched (status 0xA900)."""


def parameters(identifier: Dataset) -> list[tuple[str, str]]:
    """The QIDO-RS parameters of a C-FIND identifier."""
    params = []
    for elem in identifier:
        if elem.tag in SKIPPED or elem.tag.group == 0x0002:
            continue
        key = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            item = elem.value[0] if elem.value else None
            matched = [e for e in item if not e.is_empty] if item is not None else []
            for inner in matched:
                params.append((f"{key}.{inner.tag:08X}", _text(inner.value)))
            if not matched:
                params.append(("includefield", key))
        elif elem.is_empty:
            params.append(("includefield", key))
        else:
            params.append((key, _text(elem.value)))
    return params


def _text(value) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


async def find(archive: Archive, identifier: Dataset, max_limit: int) -> AsyncIterator[Dataset]:
    """Response identifiers for ``identifier``, one per match (FindError: not searchable)."""
    level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level_name != "PATIENT" and level_name not in LEVELS:
        raise FindError(f"QueryRetrieveLevel {level_name!r} is not PATIENT, STUDY, SERIES or IMAGE")
    level = LEVELS.get(level_name, Level.STUDY)
    keys, _ = await archive.extended_tags.searchable()
    params = parameters(identifier)
    seen: set[str] = set()
    offset = 0
    while True:
        try:
            query = parse_query(
                [*params, ("limit", str(min(PAGE, max_limit))), ("offset", str(offset))],
                level,
                max_limit=max_limit,
                extended=keys,
            )
        except InvalidRequest as exc:
            raise FindError(str(exc)) from exc
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


def response(identifier: Dataset, found: Dataset, level_name: str) -> Dataset:
    """The keys of ``identifier``, with the values ``found`` has (empty where it has none)."""
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = level_name
    for elem in identifier:
        if elem.tag in SKIPPED or elem.tag.group == 0x0002:
            continue
        if elem.tag in found:
            out.add(found[elem.tag])
        else:
            out.add_new(elem.tag, elem.VR, None)
    return out
