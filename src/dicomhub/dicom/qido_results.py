"""What a QIDO-RS result carries (PS3.18 10.6.3.3) and how it is put together from index rows.

A row holds the level documents the index keeps (study, series, instance), counters, and, only
when an attribute outside them is asked for, the metadata of the instance itself or of the latest
instance of the study or series.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dicomhub.dicom import levels as lv
from dicomhub.dicom.levels import INSTANCE_SUMMARY, Level, level_of
from dicomhub.dicom.query import ALL, Query

_IN_DOCS = {
    Level.STUDY: lv.STUDY_ATTRIBUTES,
    Level.SERIES: lv.SERIES_ATTRIBUTES,
    Level.INSTANCE: INSTANCE_SUMMARY,
}


def default_levels(query: Query) -> list[Level]:
    """Levels whose default attributes a resource returns: its own, and the levels above it that
    the URL does not fix (e.g. all series carry study attributes, a study's series do not)."""
    out = [query.level]
    if query.level >= Level.SERIES and query.study is None:
        out.append(Level.STUDY)
    if query.level is Level.INSTANCE and query.series is None:
        out.append(Level.SERIES)
    return out


def requested(query: Query) -> frozenset[int] | str:
    if query.includes == ALL:
        return ALL
    tags = set(query.includes)
    for level in default_levels(query):
        tags |= lv.DEFAULTS[level]
    return frozenset(tags)


def needs(query: Query) -> set[str]:
    """Optional parts of the index row: modalities, sop_classes, series_doc (a study's latest
    series), metadata (the instance's, or the latest instance's of the study or series)."""
    tags = requested(query)
    out = set()
    if tags == ALL:
        if query.level is Level.STUDY:
            out |= {"modalities", "sop_classes"}
        if query.level is Level.INSTANCE or _extended(query):
            out.add("metadata")
        return out
    if tags & _extended(query):  # values of extended query tags come from the metadata
        out.add("metadata")
    if lv.MODALITIES_IN_STUDY in tags:
        out.add("modalities")
    if lv.SOP_CLASSES_IN_STUDY in tags:
        out.add("sop_classes")
    for tag in tags - lv.COMPUTED[Level.STUDY] - lv.COMPUTED[Level.SERIES]:
        level = level_of(tag)
        if level is Level.SERIES and query.level is Level.STUDY:
            out.add("series_doc")
        elif level is Level.INSTANCE and tag not in INSTANCE_SUMMARY:
            out.add("metadata")
    return out


def build(query: Query, row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """One DICOM JSON result object, its attributes in tag order."""
    tags = requested(query)
    found: dict[str, Any] = {}
    if row.get("metadata"):
        metadata = json.loads(row["metadata"])
        found.update((k, v) for k, v in metadata.items() if "BulkDataURI" not in v)
    for name in ("series_doc", "study_doc", "instance_doc"):
        if row.get(name):
            found.update(json.loads(row[name]))
    found.update(_computed(query, row, base_url))
    if tags == ALL and query.level is Level.INSTANCE:
        picked = found  # everything the instance has
    else:
        if tags == ALL:
            tags = lv.COMPUTED[query.level].union(
                *(_IN_DOCS[level] for level in Level if level <= query.level), _extended(query)
            )
        picked = {k: v for k, v in found.items() if int(k, 16) in tags}
    return dict(sorted(picked.items()))


def _extended(query: Query) -> frozenset[int]:
    """Extended query tags of this level and the levels above it (the result's attributes)."""
    return frozenset(tag for tag, level in query.extended.items() if level <= query.level)


def _computed(query: Query, row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    url = f"{base_url}/studies/{row['study_uid']}"
    if query.level >= Level.SERIES:
        url += f"/series/{row['series_uid']}"
    if query.level is Level.INSTANCE:
        url += f"/instances/{row['sop_uid']}"
    out = {
        f"{lv.RETRIEVE_URL:08X}": {"vr": "UR", "Value": [url]},
        f"{lv.INSTANCE_AVAILABILITY:08X}": {"vr": "CS", "Value": ["ONLINE"]},
        f"{lv.STUDY_SERIES_COUNT:08X}": {"vr": "IS", "Value": [row["study_series"]]},
        f"{lv.STUDY_INSTANCE_COUNT:08X}": {"vr": "IS", "Value": [row["study_instances"]]},
    }
    if query.level >= Level.SERIES:
        out[f"{lv.SERIES_INSTANCE_COUNT:08X}"] = {"vr": "IS", "Value": [row["series_instances"]]}
    for tag, name, vr in (
        (lv.MODALITIES_IN_STUDY, "modalities", "CS"),
        (lv.SOP_CLASSES_IN_STUDY, "sop_classes", "UI"),
    ):
        if row.get(name):
            out[f"{tag:08X}"] = {"vr": vr, "Value": sorted(row[name].split(","))}
    return out
