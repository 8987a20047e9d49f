"""FHIR sync per data partition, against the real FHIR R4 server (SQLite and PostgreSQL): the
same study stored in the default partition and in clinic-a becomes two ImagingStudy resources,
each with its partition's Endpoint and Patient; upserts, deletes and replays of one never touch
the other; dose reports of both stay apart."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient

from dicomhub.fhir import projection
from dicomhub.model import DEFAULT_PARTITION
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart
from tests.test_fhir import _bytes, archive_client, dose_report, fhir_get, study, sync

A = "clinic-a"


def base(partition: str) -> str:
    return "/v2" if partition == DEFAULT_PARTITION else f"/v2/partitions/{partition}"


def stow_to(client, partition: str, *files: bytes) -> None:
    r = client.post(
        f"{base(partition)}/studies", content=multipart(*files), headers={"Content-Type": MULTIPART}
    )
    assert r.status_code == 200, r.text


def studies_of(server, uid: str, system: str) -> list[dict]:
    return fhir_get(server, projection.study_search(uid, system))


def in_partition(files: list[bytes], accession: str, name: str) -> list[bytes]:
    out = []
    for data in files:
        ds = read(data)
        ds.AccessionNumber, ds.PatientName = accession, name
        out.append(_bytes(ds))
    return out


def test_projection_of_a_partition():
    options = projection.Options("http://pacs/v2", "urn:oid:1.2.3", True)
    assert options.of(DEFAULT_PARTITION) is options
    a = options.of(A)
    assert a.endpoint == "http://pacs/v2/partitions/clinic-a" and a.uid_system == a.endpoint
    assert options.uid_system == projection.DICOM_UID
    first = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.1.1"]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00100021": {"vr": "LO", "Value": ["HOSP A"]},
    }
    assert projection.patient_identifier(first, options) == ("HOSP A", "P1")
    assert projection.patient_identifier(first, a) == (f"{a.endpoint}/patients/HOSP%20A", "P1")
    bundle = projection.study_bundle([first], a)
    endpoint, patient, study_ = (e["resource"] for e in bundle["entry"])
    assert Endpoint(**endpoint).address == a.endpoint and "clinic-a" in endpoint["name"]
    Patient(**patient)
    s = ImagingStudy(**study_)
    assert [(i.system, i.value) for i in s.identifier] == [(a.endpoint, "urn:oid:1.2.3")]
    assert s.meta.source == a.endpoint
    assert bundle["entry"][2]["request"]["url"] == projection.study_search("1.2.3", a.endpoint)
    # the default partition's as before (DICOMcast's identifier)
    default = projection.study_bundle([first], options)["entry"][2]["resource"]
    assert default["identifier"] == [{"system": projection.DICOM_UID, "value": "urn:oid:1.2.3"}]


def test_two_partitions_copies_of_a_study_stay_apart(tmp_path, fhir_server, index_url):
    with archive_client(tmp_path, fhir_server.url, index_url=index_url, data_partitions=True) as c:
        patient_id = f"PAT-P-{uuid.uuid4().hex[:8]}"  # the FHIR server is the session's
        files = study(patient_id, "ACC-DEF")
        uid = read(files[0]).StudyInstanceUID
        root = c.get("/v2/fhir/status").json()["endpoint"]
        a_root = f"{root}/partitions/{A}"
        stow_to(c, DEFAULT_PARTITION, *files)
        stow_to(c, A, *in_partition(files, "ACC-A", "Alpha^Ann"))
        assert sync(c) == 6
        [default] = studies_of(fhir_server, uid, projection.DICOM_UID)
        [mine] = studies_of(fhir_server, uid, a_root)
        assert default["id"] != mine["id"]
        assert {i["value"] for i in default["identifier"]} == {f"urn:oid:{uid}", "ACC-DEF"}
        assert {i["value"] for i in mine["identifier"]} == {f"urn:oid:{uid}", "ACC-A"}
        assert mine["meta"]["source"] == a_root and default["meta"]["source"] == root
        # a search by the UID alone (any system) finds both copies
        both = fhir_get(fhir_server, f"ImagingStudy?identifier=urn:oid:{uid}")
        assert {s["id"] for s in both} == {default["id"], mine["id"]}
        # each copy its partition's Endpoint and Patient
        for found, address, name in ((default, root, "Jane"), (mine, a_root, "Ann")):
            endpoint_id = found["endpoint"][0]["reference"].split("/")[1]
            endpoint = httpx.get(f"{fhir_server.url}/Endpoint/{endpoint_id}").json()
            assert Endpoint(**endpoint).address == address
            subject = found["subject"]["reference"]
            patient = httpx.get(f"{fhir_server.url}/{subject}").json()
            assert Patient(**patient).name[0].given[0] == name
        assert default["subject"] != mine["subject"]
        [patient] = fhir_get(
            fhir_server, "Patient?identifier=" + quote(f"{a_root}/patients|{patient_id}", safe="|")
        )
        assert mine["subject"]["reference"] == f"Patient/{patient['id']}"
        # replaying the partition's study creates nothing twice, touches nothing else
        fhir = c.app.state.archive.fhir
        for _ in range(2):
            c.portal.call(fhir.sync_study, A, uid)
        assert [s["id"] for s in studies_of(fhir_server, uid, a_root)] == [mine["id"]]
        assert len(fhir_get(fhir_server, f"Patient?identifier={patient_id}")) == 2
        # an upsert in the partition reaches its copy only
        changed = read(files[0])
        changed.AccessionNumber, changed.StudyDescription = "ACC-A", "CORRECTED IN A"
        r = c.put(
            f"{base(A)}/studies",
            content=_bytes(changed),
            headers={"Content-Type": "application/dicom"},
        )
        assert r.status_code == 200, r.text
        assert sync(c) == 1
        [mine] = studies_of(fhir_server, uid, a_root)
        [again] = studies_of(fhir_server, uid, projection.DICOM_UID)
        assert mine["description"] == "CORRECTED IN A" and again["description"] == "CHEST CT"
        # deleting the partition's study removes its copy, the default one stays whole
        assert c.delete(f"{base(A)}/studies/{uid}").status_code == 204
        sync(c)
        assert studies_of(fhir_server, uid, a_root) == []
        [kept] = studies_of(fhir_server, uid, projection.DICOM_UID)
        assert kept["id"] == default["id"] and kept["numberOfInstances"] == 3
        # and the other way round
        stow_to(c, A, files[0])
        assert c.delete(f"/v2/studies/{uid}").status_code == 204
        sync(c)
        assert studies_of(fhir_server, uid, projection.DICOM_UID) == []
        [back] = studies_of(fhir_server, uid, a_root)
        assert back["numberOfInstances"] == 1


def test_dose_reports_of_two_partitions(tmp_path, fhir_server):
    with archive_client(tmp_path, fhir_server.url, data_partitions=True) as c:
        images = study("DOSE-P", "DP", 1)
        uid = read(images[0]).StudyInstanceUID
        sr = dose_report(uid, "DOSE-P", [("2.25.2001", 10.0, 300.0)])
        for partition in (DEFAULT_PARTITION, A):
            stow_to(c, partition, *images, sr)
        sync(c)
        root = c.get("/v2/fhir/status").json()["endpoint"]
        sop = read(sr).SOPInstanceUID
        seen = {}
        for system in (projection.DICOM_UID, f"{root}/partitions/{A}"):
            [found] = studies_of(fhir_server, uid, system)
            token = quote(f"{system}|urn:oid:{sop}", safe="|")
            [summary] = fhir_get(fhir_server, f"Observation?identifier={token}")
            assert summary["partOf"] == [{"reference": f"ImagingStudy/{found['id']}"}]
            seen[system] = summary["id"]
        assert len(set(seen.values())) == 2
        d = read(sr)  # the report deleted in the partition: its observations go, not the other's
        path = f"/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
        assert c.delete(f"{base(A)}/studies/{uid}{path}").status_code == 204
        sync(c)
        [found] = studies_of(fhir_server, uid, f"{root}/partitions/{A}")
        assert fhir_get(fhir_server, f"Observation?part-of=ImagingStudy/{found['id']}") == []
        [default] = studies_of(fhir_server, uid, projection.DICOM_UID)
        kept = fhir_get(fhir_server, f"Observation?part-of=ImagingStudy/{default['id']}")
        assert seen[projection.DICOM_UID] in {o["id"] for o in kept}


def test_a_refusal_names_the_partition(tmp_path, fhir_server):
    with archive_client(tmp_path, fhir_server.url, data_partitions=True) as c:
        no_patient = read(study("x", "ACC-X", 1)[0])
        del no_patient.PatientID
        stow_to(c, A, _bytes(no_patient))
        assert sync(c) == 1
        [failure] = c.get("/v2/fhir/failures").json()
        assert failure["error"].startswith(f"data partition {A}: ")
        assert "PatientID" in failure["error"]


def test_a_partitions_patient_is_never_the_default_partitions(tmp_path, fhir_server, index_url):
    """The partition's study synced first: the default partition's study of the same
    PatientID (no patient system: found by the PatientID alone, as DICOMcast) gets a Patient
    of its own, not the partition's, and keeps it when synced again."""
    with archive_client(tmp_path, fhir_server.url, index_url=index_url, data_partitions=True) as c:
        patient_id = f"PAT-Q-{uuid.uuid4().hex[:8]}"
        files = study(patient_id, "ACC-Q")
        uid = read(files[0]).StudyInstanceUID
        root = c.get("/v2/fhir/status").json()["endpoint"]
        stow_to(c, A, *in_partition(files, "ACC-QA", "Alpha^Ann"))
        assert sync(c) == 3
        stow_to(c, DEFAULT_PARTITION, *files)
        assert sync(c) == 3
        c.portal.call(c.app.state.archive.fhir.sync_study, DEFAULT_PARTITION, uid)
        [mine] = studies_of(fhir_server, uid, f"{root}/partitions/{A}")
        [default] = studies_of(fhir_server, uid, projection.DICOM_UID)
        assert mine["subject"] != default["subject"]
        patients = fhir_get(fhir_server, f"Patient?identifier={patient_id}")
        assert len(patients) == 2
        by_ref = {f"Patient/{p['id']}": p for p in patients}
        assert by_ref[mine["subject"]["reference"]]["name"][0]["family"] == "Alpha"
        assert by_ref[default["subject"]["reference"]]["name"][0]["family"] == "Doe"
        assert by_ref[default["subject"]["reference"]]["identifier"] == [{"value": patient_id}]
