"""The SQLite search index: query plans use an index for every matching key, and an index built
before search existed is filled in by its migration."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

import pytest

from dicomhub.dicom import qido_results
from dicomhub.dicom.instance import ingest
from dicomhub.dicom.levels import Level
from dicomhub.dicom.parse import read_part10
from dicomhub.dicom.query import parse_query
from dicomhub.storage import migrations
from dicomhub.storage.dialect import SQLITE
from dicomhub.storage.search_sql import count_sql, search_sql
from dicomhub.storage.sqlite_index import SqliteIndex
from tests.helpers import stow
from tests.synthetic import instance, uid
from tests.test_qido import S1, dataset_files, labels

KEYED_QUERIES = [
    (Level.STUDY, "PatientID=P1", "study_patient_id"),
    (Level.STUDY, "PatientName=doe*", "study_patient_name"),
    (Level.STUDY, "PatientName=joh&fuzzymatching=true", "person_name_word_lookup"),
    (Level.STUDY, "ReferringPhysicianName=doe^jane", "study_referring"),
    (Level.STUDY, "PatientBirthDate=19800101", "study_birth_date"),
    (Level.STUDY, "StudyDate=20200101-20201231", "study_date"),
    (Level.STUDY, "AccessionNumber=ACC-1", "study_accession"),
    (Level.STUDY, "StudyDescription=CT*", "study_description"),
    (Level.STUDY, "StudyID=ID1", "study_id"),
    (Level.STUDY, f"StudyInstanceUID={S1}", "sqlite_autoindex_study_1"),
    (Level.STUDY, "ModalitiesInStudy=CT", "series_modality"),
    (Level.SERIES, "Modality=CT", "series_modality"),
    (Level.SERIES, "SeriesInstanceUID=1.2.3", "series_uid"),
    (Level.SERIES, "SeriesNumber=3", "series_number"),
    (Level.SERIES, "PerformedProcedureStepStartDate=20200105", "series_pps_start"),
    (Level.SERIES, "ManufacturerModelName=X", "series_model"),
    (Level.SERIES, "RequestAttributesSequence.ScheduledProcedureStepID=S", "series_request_step"),
    (Level.SERIES, "RequestAttributesSequence.RequestedProcedureID=R", "series_request_procedure"),
    (Level.INSTANCE, "SOPInstanceUID=1.2.3", "instance_sop_uid"),
    (Level.INSTANCE, "SOPClassUID=1.2.3", "instance_sop_class"),
    (Level.INSTANCE, "InstanceNumber=3", "instance_number"),
    (Level.INSTANCE, "AcquisitionDateTime=2020", "instance_acquisition"),
    (Level.INSTANCE, "PatientID=P1", "study_patient_id"),
    (Level.STUDY, "", None),  # storage order is key order: the table itself, in order
    (Level.SERIES, "", None),
    (Level.INSTANCE, "", None),
]


def _query(level: Level, params: str):
    return parse_query([tuple(p.split("=", 1)) for p in params.split("&") if p], level)


@pytest.fixture(scope="module")
def stored_index(tmp_path_factory):
    from tests.test_qido import make_client

    folder = tmp_path_factory.mktemp("plans")
    with make_client(folder, index_url="", blob_url="") as c:
        assert stow(c, *dataset_files()).status_code == 200
    return folder / "index.sqlite"


@pytest.mark.parametrize("level,params,index", KEYED_QUERIES)
def test_every_matching_key_is_served_by_an_index(stored_index, level, params, index):
    query = _query(level, params)
    sql, args = search_sql(query, qido_results.needs(query), SQLITE)
    with sqlite3.connect(stored_index) as conn:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        count, count_args = count_sql(query, SQLITE)
        count_plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + count, count_args)]
    assert index is None or any(index in line for line in plan), plan
    for line in plan:  # a page never reads a table whole, unless in storage order to a limit
        assert not (line.startswith("SCAN") and "USING" not in line and params), plan
        assert "TEMP B-TREE FOR ORDER BY" not in line or params, plan
    if params:  # a matching key reads only a range of its index
        assert not any(line.startswith("SCAN") for line in plan + count_plan), plan


def _version_1_index(path, files: list[bytes]) -> None:
    """An index as the first release wrote it: schema 1, rows without search columns."""
    conn = sqlite3.connect(path)
    conn.executescript(migrations.scripts("sqlite")[0][1])
    conn.executescript(
        "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        "INSERT INTO schema_version VALUES (1);"
    )
    for number, data in enumerate(files, 1):
        parsed = read_part10(io.BytesIO(data), len(data), 1024)
        record = ingest(parsed, lambda o, n, data=data: data[o : o + n], 1024, False, None).record
        ids = record.id
        conn.execute(
            "INSERT OR IGNORE INTO study (partition_name, study_uid, last_sequence) "
            "VALUES ('Microsoft.Default', ?, ?)",
            (ids.study, number),
        )
        (study_key,) = conn.execute(
            "SELECT study_key FROM study WHERE study_uid = ?", (ids.study,)
        ).fetchone()
        conn.execute(
            "INSERT OR IGNORE INTO series (study_key, series_uid, last_sequence) VALUES (?, ?, ?)",
            (study_key, ids.series, number),
        )
        (series_key,) = conn.execute(
            "SELECT series_key FROM series WHERE series_uid = ?", (ids.series,)
        ).fetchone()
        conn.execute(
            "INSERT INTO instance (version, series_key, sop_uid, status, sop_class_uid, "
            "transfer_syntax, size, created, metadata, bulk) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, 0, ?, '{}')",
            (
                number,
                series_key,
                ids.sop,
                record.sop_class,
                record.transfer_syntax,
                len(data),
                record.metadata,
            ),
        )
        conn.execute(
            "INSERT INTO changefeed (timestamp, action, partition_name, study_uid, series_uid, "
            "sop_uid, version) VALUES (0, 0, 'Microsoft.Default', ?, ?, ?, ?)",
            (ids.study, ids.series, ids.sop, number),
        )
    conn.commit()
    conn.close()


def test_migration_fills_in_the_search_index_of_existing_instances(tmp_path):
    path = tmp_path / "index.sqlite"
    extra = instance(S1, uid(1, 1), uid(1, 1, 9), PatientID="P1", PatientName="Doe^John")
    _version_1_index(path, [*dataset_files(), extra])

    async def run():
        index = SqliteIndex(str(path))
        await index.start()
        try:
            out = {}
            for params in ("PatientName=joh&fuzzymatching=true", "ModalitiesInStudy=SR", ""):
                query = _query(Level.STUDY, params)
                rows = await index.search(query, qido_results.needs(query))
                out[params] = [qido_results.build(query, row, "http://x/v2") for row in rows]
            out["count"] = await index.count(_query(Level.INSTANCE, "InstanceNumber=1"))
            return out
        finally:
            await index.close()

    found = asyncio.run(run())
    assert labels(found["PatientName=joh&fuzzymatching=true"]) == ["1", "4"]
    assert labels(found["ModalitiesInStudy=SR"]) == ["1"]
    assert labels(found[""]) == ["1", "2", "3", "4"]
    study = found[""][0]
    assert study["00201208"]["Value"] == [4] and study["00201206"]["Value"] == [2]
    assert study["00080020"]["Value"] == ["20200105"]  # kept although the last lacks it
    assert found["count"] == 3
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        assert version == migrations.latest("sqlite")
        (doc,) = conn.execute("SELECT doc FROM instance WHERE version = 1").fetchone()
        assert json.loads(doc)["00200013"]["Value"] == [1]
