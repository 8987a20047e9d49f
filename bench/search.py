"""Search at scale: builds an embedded (SQLite) index of synthetic studies, then times QIDO-RS
queries through the archive's search service and prints each query's plan.

    .venv/bin/python bench/search.py [--instances 1000000] [--db /tmp/dicomhub-bench.sqlite]

The index is written with the real schema (the migrations) and filled with SQL in bulk, which
takes about a minute per million instances; an existing file with the same size is reused.
Every keyed query must be served by an index: a full table scan is reported as a failure and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from dicomhub.archive.search import SearchService
from dicomhub.dicom import qido_results
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import parse_query
from dicomhub.storage.dialect import SQLITE
from dicomhub.storage.search_sql import search_sql
from dicomhub.storage.sqlite_index import SqliteIndex

SERIES_PER_STUDY = 4
INSTANCES_PER_SERIES = 5
LAST = ["Smith", "Müller", "García", "Nguyen", "O'Brien", "Kowalski", "Rossi", "Dubois", "Sato"]
FIRST = ["John", "Jürgen", "María", "Anh", "Mary Ann", "Piotr", "Giulia", "Chloé", "Haruto"]
MODALITIES = ["CT", "MR", "SR", "PR", "US", "DX", "PT", "MG"]
DESCRIPTIONS = ["CT Chest", "MR Brain", "US Abdomen", "XR Hand", "PET Whole body", "MG Screening"]
ROOT = "1.2.826.0.1.3680043.10.4321."

QUERIES = [
    (Level.STUDY, "", "study list, no filter (OHIF first page)"),
    (
        Level.STUDY,
        "limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030,00080060,00080090,00100030&StudyDate=20240101-20241231",
        "OHIF study list, one year",
    ),
    (
        Level.STUDY,
        "PatientName=*garc*&limit=101&includefield=00081030,00080060",
        "OHIF patient name (*x* wildcard)",
    ),
    (Level.STUDY, "PatientID=P123", "patient ID"),
    (Level.STUDY, "PatientName=garcia^maria", "patient name, exact (accent-insensitive)"),
    (Level.STUDY, "PatientName=gar mar&fuzzymatching=true", "patient name, fuzzy"),
    (Level.STUDY, "AccessionNumber=A4242", "accession number"),
    (Level.STUDY, "StudyDate=20240301", "study date"),
    (Level.STUDY, "ModalitiesInStudy=MG", "modality in study"),
    (Level.STUDY, f"StudyInstanceUID={ROOT}4242", "study UID"),
    (Level.STUDY, "orderby=-StudyDate,-StudyTime&limit=50", "newest studies first"),
    (Level.SERIES, f"SeriesInstanceUID={ROOT}4242.2", "series UID"),
    (Level.SERIES, "RequestAttributesSequence.ScheduledProcedureStepID=SPS4242", "by SPS ID"),
    (Level.INSTANCE, f"SOPInstanceUID={ROOT}4242.2.3", "instance UID"),
    (Level.INSTANCE, "PatientID=P123&InstanceNumber=1", "instances of a patient"),
]


def _name(rng: random.Random) -> str:
    return f"{rng.choice(LAST)}^{rng.choice(FIRST)}"


def build(path: Path, instances: int) -> None:
    studies = max(1, instances // (SERIES_PER_STUDY * INSTANCES_PER_SERIES))
    asyncio.run(_migrate(path))
    rng = random.Random(42)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    version = series_key = 0
    for s in range(1, studies + 1):
        study_uid = f"{ROOT}{s}"
        name, referring = _name(rng), _name(rng)
        date = f"{rng.randint(2000, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        study_js = {
            "00080020": {"vr": "DA", "Value": [date]},
            "00080030": {"vr": "TM", "Value": [f"{rng.randint(0, 23):02d}3000"]},
            "00080050": {"vr": "SH", "Value": [f"A{s}"]},
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": referring}]},
            "00081030": {"vr": "LO", "Value": [rng.choice(DESCRIPTIONS)]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
            "00100020": {"vr": "LO", "Value": [f"P{s % 20000}"]},
            "0020000D": {"vr": "UI", "Value": [study_uid]},
        }
        columns = sk.columns(Level.STUDY, study_js)
        doc = json.dumps(study_js, separators=(",", ":"))
        count = SERIES_PER_STUDY * INSTANCES_PER_SERIES
        conn.execute(
            "INSERT INTO study (study_key, partition_name, study_uid, patient_name, patient_id, "
            "patient_birth_date, study_date, study_time, accession_number, referring_physician, "
            "study_description, study_id, doc, revision, instance_count, series_count) "
            "VALUES (?, 'Microsoft.Default', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s,
                study_uid,
                columns["patient_name"],
                columns["patient_id"],
                columns["patient_birth_date"],
                columns["study_date"],
                columns["study_time"],
                columns["accession_number"],
                columns["referring_physician"],
                columns["study_description"],
                columns["study_id"],
                doc,
                count,
                count,
                SERIES_PER_STUDY,
            ),
        )
        conn.executemany(
            "INSERT INTO person_name_word (study_key, tag, word) VALUES (?, ?, ?)",
            [(s, tag, word) for tag, word in sk.words(study_js)],
        )
        for n in range(1, SERIES_PER_STUDY + 1):
            series_key += 1
            series_uid = f"{study_uid}.{n}"
            modality = rng.choice(MODALITIES)
            series_doc = json.dumps(
                {
                    "00080060": {"vr": "CS", "Value": [modality]},
                    "0020000E": {"vr": "UI", "Value": [series_uid]},
                    "00200011": {"vr": "IS", "Value": [n]},
                },
                separators=(",", ":"),
            )
            conn.execute(
                "INSERT INTO series (series_key, study_key, series_uid, modality, series_number, "
                "doc, revision, instance_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    series_key,
                    s,
                    series_uid,
                    modality,
                    n,
                    series_doc,
                    INSTANCES_PER_SERIES,
                    INSTANCES_PER_SERIES,
                ),
            )
            conn.execute(
                "INSERT INTO series_request (series_key, scheduled_step_id, requested_procedure_id)"
                " VALUES (?, ?, ?)",
                (series_key, f"SPS{s}", f"RP{s}"),
            )
            rows = []
            for i in range(1, INSTANCES_PER_SERIES + 1):
                version += 1
                sop = f"{series_uid}.{i}"
                instance_doc = json.dumps(
                    {
                        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                        "00080018": {"vr": "UI", "Value": [sop]},
                        "00200013": {"vr": "IS", "Value": [i]},
                        "00280010": {"vr": "US", "Value": [512]},
                        "00280011": {"vr": "US", "Value": [512]},
                    },
                    separators=(",", ":"),
                )
                rows.append(
                    (
                        version,
                        series_key,
                        sop,
                        "1.2.840.10008.5.1.4.1.1.2",
                        600_000,
                        instance_doc.encode(),
                        i,
                        instance_doc,
                    )
                )
            conn.executemany(
                "INSERT INTO instance (version, series_key, sop_uid, sop_class_uid, "
                "transfer_syntax, size, created, metadata, bulk, instance_number, doc) "
                "VALUES (?, ?, ?, ?, '1.2.840.10008.1.2.1', ?, 0, ?, '{}', ?, ?)",
                rows,
            )
    conn.execute("COMMIT")
    conn.close()


async def _migrate(path: Path) -> None:
    index = SqliteIndex(str(path))
    await index.start()
    await index.close()


def instance_count(path: Path) -> int:
    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT count(*) FROM instance").fetchone()[0]
    except sqlite3.Error:
        return -1


async def run_queries(path: Path, repeat: int) -> bool:
    index = SqliteIndex(str(path))
    await index.start()
    service = SearchService(index)
    ok = True
    print("| query | results | median ms | plan |")
    print("|---|---|---|---|")
    try:
        for level, params, label in QUERIES:
            pairs = [tuple(p.split("=", 1)) for p in params.split("&") if p]
            query = parse_query(pairs, level)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                page = await service.search(query, "http://bench/v2")
                times.append((time.perf_counter() - start) * 1000)
            sql, args = search_sql(query, qido_results.needs(query), SQLITE)
            with sqlite3.connect(path) as conn:
                plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
            outer = [p for p in plan if p.startswith(("SCAN", "SEARCH"))][:2]
            scans = [p for p in plan if p.startswith("SCAN") and "USING" not in p]
            keyed = any(not p.startswith(("limit", "offset", "orderby")) for p in params.split("&"))
            wildcard_scan = "*" in params.split("PatientName=")[-1][:1]
            if scans and keyed and not wildcard_scan:
                ok = False
            print(
                f"| {label} | {len(page.results)} | {statistics.median(times):.1f} | "
                f"{'; '.join(outer)} |"
            )
    finally:
        await index.close()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--db", default="/tmp/dicomhub-bench-search.sqlite")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = Path(args.db)
    wanted = (args.instances // (SERIES_PER_STUDY * INSTANCES_PER_SERIES)) * (
        SERIES_PER_STUDY * INSTANCES_PER_SERIES
    )
    if instance_count(path) != wanted:
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        build(path, args.instances)
        print(f"built {wanted} instances in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"{wanted:,} instances, {wanted // INSTANCES_PER_SERIES // SERIES_PER_STUDY:,} studies\n")
    ok = asyncio.run(run_queries(path, args.repeat))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
