"""FHIR sync against a real FHIR R4 engine (Medplum's, started by the fixture): studies stored in
dicomhub are read back from the FHIR server by identifier and compared field by field; deletes,
replays, refusals, outages, two nodes and two deployments."""

from __future__ import annotations

import contextlib
import uuid

import httpx
import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from starlette.testclient import TestClient

from dicomhub.cli import build_archive
from dicomhub.fhir import projection
from dicomhub.model import DEFAULT_PARTITION
from dicomhub.settings import Settings
from dicomhub.web.app import create_app
from tests.components import TcpProxy
from tests.dicomfiles import load, read, with_new_uids
from tests.helpers import stow


@contextlib.contextmanager
def archive_client(tmp_path, fhir_url: str, name: str = "a", **overrides):
    settings = Settings(
        data_dir=str(tmp_path / name),
        blob_url="memory://",
        delete_delay=0,
        fhir_url=fhir_url,
        public_url=f"http://{name}-{uuid.uuid4().hex[:6]}.example.org",
        **overrides,
    )
    with TestClient(create_app(settings, build_archive(settings))) as client:
        yield client


def sync(client, owner: str = "node-1") -> int:
    """Run the sync until it has caught up; the changes passed."""
    total = 0
    while True:
        step = client.portal.call(client.app.state.archive.fhir.step, owner)
        assert step.held
        if not step.changes:
            return total
        total += step.changes


def study(patient_id: str, accession: str, count: int = 3) -> list[bytes]:
    """``count`` instances of a new study in two series, for a patient of its own."""
    uid = f"2.25.{uuid.uuid4().int}"
    base = read(load("CT_small.dcm"))
    out = []
    for n in range(count):
        ds = read(with_new_uids(load("CT_small.dcm"), study=uid, series=f"{uid}.{n % 2 + 1}"))
        ds.PatientID, ds.AccessionNumber = patient_id, accession
        ds.PatientName = "Doe^Jane^Q^Dr^III"
        ds.PatientSex, ds.PatientBirthDate = "F", "19700102"
        ds.StudyDescription, ds.ReferringPhysicianName = "CHEST CT", "House^Gregory"
        ds.SeriesNumber, ds.InstanceNumber = n % 2 + 1, n + 1
        ds.SeriesDescription = f"series {n % 2 + 1}"
        ds.BodyPartExamined, ds.Laterality = "CHEST", "L"
        ds.TimezoneOffsetFromUTC = "+0100"
        ds.StudyDate, ds.StudyTime = base.StudyDate, "103000"
        out.append(_bytes(ds))
    return out


def _bytes(ds) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fhir_get(server, query: str) -> list[dict]:
    bundle = httpx.get(f"{server.url}/{query}", timeout=30).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def imaging_study(server, uid: str) -> list[dict]:
    return fhir_get(server, projection.study_search(uid))


def test_projection_is_valid_fhir_r4():
    """Every resource the sync writes parses as a FHIR R4(B) model, field for field."""
    instances = [
        {
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "0020000E": {"vr": "UI", "Value": [f"1.2.3.{n % 2}"]},
            "00080018": {"vr": "UI", "Value": [f"1.2.3.{n % 2}.{n}"]},
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00080060": {"vr": "CS", "Value": ["CT" if n % 2 else "SR"]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00100021": {"vr": "LO", "Value": ["HOSP"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
            "00100040": {"vr": "CS", "Value": ["M"]},
            "00100030": {"vr": "DA", "Value": ["19800101"]},
            "00080020": {"vr": "DA", "Value": ["20240102"]},
            "00080030": {"vr": "TM", "Value": ["101112.5"]},
            "00080201": {"vr": "SH", "Value": ["-0500"]},
            "00080050": {"vr": "SH", "Value": ["ACC1"]},
            "00200013": {"vr": "IS", "Value": [n + 1]},
            "0040A043": {"vr": "SQ", "Value": [{"00080104": {"vr": "LO", "Value": ["Report"]}}]},
        }
        for n in range(3)
    ]
    options = projection.Options("http://pacs/v2", "urn:oid:1.2.36.146.595.217.0.1", True)
    bundle = projection.study_bundle(instances, options)
    endpoint, patient, study_ = (e["resource"] for e in bundle["entry"])
    Endpoint(**endpoint)
    p = Patient(**patient)
    assert p.identifier[0].system == "HOSP" and p.identifier[0].value == "P1"  # the issuer
    assert p.gender == "male" and str(p.birthDate) == "1980-01-01"
    s = ImagingStudy(**study_)
    assert s.started.isoformat() == "2024-01-02T10:11:12-05:00"
    assert [m.code for m in s.modality] == ["SR", "CT"]
    assert s.numberOfSeries == 2 and s.numberOfInstances == 3
    assert s.identifier[1].value == "ACC1" and s.identifier[1].type.coding[0].code == "ACSN"
    assert s.series[0].instance[0].title == "Report"
    assert s.series[0].instance[0].sopClass.code == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    # without a UTC offset the time cannot be given (FHIR needs a zone with a time)
    del instances[-1]["00080201"]
    assert projection.study_bundle(instances, options)["entry"][2]["resource"]["started"] == (
        "2024-01-02"
    )


def test_a_study_reaches_fhir_field_by_field(tmp_path, fhir_server, index_url):
    with archive_client(tmp_path, fhir_server.url, index_url=index_url) as client:
        files = study("PAT-1", "ACC-1")
        assert stow(client, *files).status_code == 200
        assert sync(client) == 3
        uid = read(files[0]).StudyInstanceUID
        [found] = imaging_study(fhir_server, uid)
        s = ImagingStudy(**found)
        assert s.status == "available"
        assert s.numberOfSeries == 2 and s.numberOfInstances == 3
        assert s.started.isoformat() == f"{_iso(read(files[0]).StudyDate)}T10:30:00+01:00"
        assert s.description == "CHEST CT" and s.referrer.display == "Gregory House"
        assert {i.value for i in s.identifier} == {f"urn:oid:{uid}", "ACC-1"}
        series = {x.uid: x for x in s.series}
        for data in files:
            ds = read(data)
            x = series[ds.SeriesInstanceUID]
            assert x.number == ds.SeriesNumber and x.modality.code == "CT"
            assert x.description == ds.SeriesDescription and x.bodySite.display == "CHEST"
            assert x.laterality.code == "7771000"
            [instance] = [i for i in x.instance if i.uid == ds.SOPInstanceUID]
            assert instance.number == ds.InstanceNumber
            assert instance.sopClass.code == f"urn:oid:{ds.SOPClassUID}"
        [patient] = fhir_get(fhir_server, "Patient?identifier=PAT-1")
        assert found["subject"]["reference"] == f"Patient/{patient['id']}"
        p = Patient(**patient)
        assert p.name[0].family == "Doe" and p.name[0].given == ["Jane", "Q"]
        assert p.name[0].prefix == ["Dr"] and p.name[0].suffix == ["III"]
        assert p.gender == "female" and str(p.birthDate) == "1970-01-02"
        root = client.get("/v2/fhir/status").json()["endpoint"]  # its DICOMweb root
        [endpoint] = fhir_get(fhir_server, f"Endpoint?identifier={projection.ENDPOINT_ID}|{root}")
        assert Endpoint(**endpoint).address == root
        assert found["endpoint"] == [{"reference": f"Endpoint/{endpoint['id']}"}]
        status = client.get("/v2/fhir/status").json()
        assert status["lag"] == 0 and status["checkpoint"] == status["latest"] == 3
        assert status["synced"] == 3 and status["failures"] == 0


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


def test_deletes_and_replays(tmp_path, fhir_server):
    with archive_client(tmp_path, fhir_server.url) as client:
        files = study("PAT-2", "ACC-2")
        stow(client, *files)
        sync(client)
        ds = read(files[0])
        uid = ds.StudyInstanceUID
        path = f"/v2/studies/{uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        assert client.delete(path).status_code == 204
        sync(client)
        [found] = imaging_study(fhir_server, uid)
        assert found["numberOfInstances"] == 2
        assert ds.SOPInstanceUID not in str(found)
        # the patient's details change in DICOM: FHIR follows, other fields kept
        [patient] = fhir_get(fhir_server, "Patient?identifier=PAT-2")
        patient["telecom"] = [{"system": "phone", "value": "555-0100"}]
        httpx.put(f"{fhir_server.url}/Patient/{patient['id']}", json=patient).raise_for_status()
        changed = read(with_new_uids(files[1], study=uid, series=ds.SeriesInstanceUID))
        changed.PatientName, changed.PatientID = "Roe^Jane", "PAT-2"
        stow(client, _bytes(changed))
        sync(client)
        [patient] = fhir_get(fhir_server, "Patient?identifier=PAT-2")
        assert (
            patient["name"][0]["family"] == "Roe" and patient["telecom"][0]["value"] == "555-0100"
        )
        # replaying every study creates nothing twice
        fhir = client.app.state.archive.fhir
        for _ in range(2):
            client.portal.call(fhir.sync_study, DEFAULT_PARTITION, uid)
        assert len(imaging_study(fhir_server, uid)) == 1
        assert len(fhir_get(fhir_server, "Patient?identifier=PAT-2")) == 1
        # an emptied study leaves FHIR
        assert client.delete(f"/v2/studies/{uid}").status_code == 204
        sync(client)
        assert imaging_study(fhir_server, uid) == []
        # stored again, it comes back
        stow(client, files[2])
        sync(client)
        [back] = imaging_study(fhir_server, uid)
        assert back["numberOfInstances"] == 1


def test_an_upsert_is_projected_again(tmp_path, fhir_server, index_url):
    """An update entry (PUT replacing an instance) re-projects the study from the latest
    versions: the changed attributes reach FHIR, nothing is counted twice."""
    with archive_client(tmp_path, fhir_server.url, index_url=index_url) as client:
        files = study("PAT-U", "ACC-U")
        assert stow(client, *files).status_code == 200
        assert sync(client) == 3
        uid = read(files[0]).StudyInstanceUID
        changed = read(files[0])
        changed.StudyDescription, changed.PatientName = "CHEST CT CORRECTED", "Doe^Janet"
        put = client.put(
            "/v2/studies", content=_bytes(changed), headers={"Content-Type": "application/dicom"}
        )
        assert put.status_code == 200, put.text
        assert client.get("/v1/changefeed/latest").json()["action"] == "update"
        assert sync(client) == 1
        [found] = imaging_study(fhir_server, uid)
        assert found["description"] == "CHEST CT CORRECTED"
        assert found["numberOfInstances"] == 3 and found["numberOfSeries"] == 2
        [patient] = fhir_get(fhir_server, "Patient?identifier=PAT-U")
        assert patient["name"][0]["given"] == ["Janet"]


def test_refused_changes_are_recorded_and_skipped(tmp_path, fhir_server, index_url):
    with archive_client(tmp_path, fhir_server.url, index_url=index_url) as client:
        no_patient = read(study("x", "ACC-3", 1)[0])
        del no_patient.PatientID
        good = study("PAT-4", "ACC-4", 1)
        stow(client, _bytes(no_patient))
        stow(client, *good)
        assert sync(client) == 2
        assert len(imaging_study(fhir_server, read(good[0]).StudyInstanceUID)) == 1
        [failure] = client.get("/v2/fhir/failures").json()
        assert failure["studyInstanceUid"] == no_patient.StudyInstanceUID
        assert "PatientID" in failure["error"] and failure["sequence"] == 1
        status = client.get("/v2/fhir/status").json()
        assert status["failures"] == 1 and status["lag"] == 0
        assert "dicomhub_fhir_sync_failures_total 1" in client.get("/metrics").text


def test_outage_keeps_the_checkpoint_and_order(tmp_path, fhir_server):
    host, port = fhir_server.url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    with archive_client(tmp_path, f"http://127.0.0.1:{proxy.port}", fhir_timeout=5) as client:
        files = study("PAT-5", "ACC-5", 2)
        stow(client, *files)
        proxy.cut()
        from dicomhub.fhir.client import FhirError

        with pytest.raises(FhirError) as caught:
            client.portal.call(client.app.state.archive.fhir.step, "node-1")
        assert caught.value.transient
        assert client.get("/v2/fhir/status").json()["checkpoint"] == 0
        proxy.restore()
        assert sync(client) == 2
        assert len(imaging_study(fhir_server, read(files[0]).StudyInstanceUID)) == 1


def test_one_node_at_a_time(tmp_path, fhir_server, index_url):
    with archive_client(tmp_path, fhir_server.url, index_url=index_url) as client:
        stow(client, *study("PAT-6", "ACC-6", 1))
        fhir = client.app.state.archive.fhir
        assert client.portal.call(fhir.step, "node-1").held
        assert not client.portal.call(fhir.step, "node-2").held  # node-1's lease holds
        client.portal.call(client.app.state.archive.index.release_fhir_sync, fhir.target, "node-1")
        assert client.portal.call(fhir.step, "node-2").held


def test_two_deployments_feed_one_fhir_server(tmp_path, fhir_server):
    shared = study("PAT-7", "ACC-7", 1)
    with (
        archive_client(tmp_path, fhir_server.url, "east") as east,
        archive_client(tmp_path, fhir_server.url, "west") as west,
    ):
        other = study("PAT-7", "ACC-8", 1)
        stow(east, *shared)
        stow(west, *other)
        sync(east)
        sync(west)
        [a] = imaging_study(fhir_server, read(shared[0]).StudyInstanceUID)
        [b] = imaging_study(fhir_server, read(other[0]).StudyInstanceUID)
        assert a["subject"] == b["subject"]  # one patient
        assert a["endpoint"] != b["endpoint"]  # each deployment its own Endpoint
        for client, found in ((east, a), (west, b)):
            root = client.get("/v2/fhir/status").json()["endpoint"]  # its DICOMweb root
            endpoint_id = found["endpoint"][0]["reference"].split("/")[1]
            endpoint = httpx.get(f"{fhir_server.url}/Endpoint/{endpoint_id}").json()
            assert endpoint["address"] == root and found["meta"]["source"] == root


@contextlib.contextmanager
def _fhir_server(folder, auth):
    """A FHIR server of the test's own (skipped, or failed under CI, when it cannot run)."""
    from tests import components
    from tests.conftest import ran, unavailable

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(components.fhir_server(folder, auth))
        except components.Unavailable as exc:
            unavailable(exc)
        ran("FHIR server")
        yield server


@pytest.mark.parametrize(
    "kind, server_auth, settings",
    [
        ("bearer", "bearer:s3cret", {"fhir_token": "s3cret"}),
        ("basic", "basic:dicomhub:pa:ss", {"fhir_username": "dicomhub", "fhir_password": "pa:ss"}),
        ("oauth2", "oauth2:hub:secret", {"fhir_client_id": "hub", "fhir_client_secret": "secret"}),
    ],
)
def test_authentication(tmp_path, kind, server_auth, settings, clock):
    """Each kind of authentication against a FHIR server that demands it; without the right
    credentials the sync stops (transient: 401 may be a rotated secret) and keeps its place. The
    right secret comes from its file."""
    from dicomhub.fhir.client import FhirError

    (tmp_path / "fhir").mkdir()
    with _fhir_server(tmp_path / "fhir", server_auth) as server:
        if kind == "oauth2":
            settings = {**settings, "fhir_token_url": f"{server.url}/oauth/token"}
        wrong = {k: "wrong" if k != "fhir_token_url" else v for k, v in settings.items()}
        with archive_client(tmp_path, server.url, "bad", fhir_auth=kind, **wrong) as client:
            stow(client, *study(f"AUTH-{kind}", "A1", 1))
            with pytest.raises(FhirError) as caught:
                client.portal.call(client.app.state.archive.fhir.step, "node-1")
            assert caught.value.transient
            assert client.get("/v2/fhir/status").json()["checkpoint"] == 0
        # the right secret from a file (--fhir-token-file, ...), as a deployment gives it
        from_files = {}
        for key, value in settings.items():
            if key in Settings.secrets():
                (tmp_path / key).write_text(value + "\n")
                key, value = f"{key}_file", str(tmp_path / key)
            from_files[key] = value
        with archive_client(tmp_path, server.url, "good", fhir_auth=kind, **from_files) as client:
            files = study(f"AUTH-{kind}", "A2", 1)
            stow(client, *files)
            assert sync(client) == 1
            if kind == "oauth2":  # the token (valid 2 s) is renewed when it runs out
                clock.advance(2.5)
                stow(client, *study(f"AUTH-{kind}", "A3", 1))
                assert sync(client) == 1
                assert httpx.get(f"{server.url}/oauth/issued").json()["issued"] == 2
        headers = {"Authorization": "Bearer s3cret"} if kind == "bearer" else {}
        if kind == "basic":
            headers = {"Authorization": "Basic ZGljb21odWI6cGE6c3M="}
        if kind != "oauth2":
            found = httpx.get(
                f"{server.url}/{projection.study_search(read(files[0]).StudyInstanceUID)}",
                headers=headers,
            ).json()
            assert found["total"] == 1


def _code(value: str, scheme: str, meaning: str):
    from pydicom import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _item(kind: str, concept, **fields):
    from pydicom import Dataset

    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", kind
    item.ConceptNameCodeSequence = [concept]
    for name, v in fields.items():
        setattr(item, name, v)
    return item


def _num(code: str, meaning: str, number: float, unit: str):
    from pydicom import Dataset

    measured = Dataset()
    measured.NumericValue = str(number)
    measured.MeasurementUnitsCodeSequence = [_code(unit, "UCUM", unit)]
    return _item("NUM", _code(code, "DCM", meaning), MeasuredValueSequence=[measured])


def dose_report(study_uid: str, patient_id: str, events: list[tuple[str, float, float]]) -> bytes:
    """An X-Ray Radiation Dose SR (TID 10011, CT) with these (event UID, CTDIvol, DLP)."""
    from pydicom.uid import generate_uid

    ds = read(with_new_uids(load("CT_small.dcm"), study=study_uid, series=generate_uid()))
    for keyword in [e.keyword for e in ds if e.tag.group in (0x0028, 0x7FE0)]:
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    ds.Modality, ds.PatientID = "SR", patient_id
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    ds.ContinuityOfContent = "SEPARATE"
    total = _item(
        "CONTAINER",
        _code("113811", "DCM", "CT Accumulated Dose Data"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=[
            _num("113813", "CT Dose Length Product Total", sum(e[2] for e in events), "mGy.cm"),
            _num("113812", "Total Number of Irradiation Events", len(events), "{events}"),
        ],
    )
    acquisitions = [
        _item(
            "CONTAINER",
            _code("113819", "DCM", "CT Acquisition"),
            ContinuityOfContent="SEPARATE",
            ContentSequence=[
                _item("UIDREF", _code("113769", "DCM", "Irradiation Event UID"), UID=uid),
                _item(
                    "CODE",
                    _code("123014", "DCM", "Target Region"),
                    ConceptCodeSequence=[_code("51185008", "SCT", "Chest")],
                ),
                _item(
                    "CONTAINER",
                    _code("113829", "DCM", "CT Dose"),
                    ContinuityOfContent="SEPARATE",
                    ContentSequence=[
                        _num("113830", "Mean CTDIvol", ctdi, "mGy"),
                        _num("113838", "DLP", dlp, "mGy.cm"),
                    ],
                ),
            ],
        )
        for uid, ctdi, dlp in events
    ]
    ds.ContentSequence = [total, *acquisitions]
    return _bytes(ds)


def test_dose_reports_become_observations(tmp_path, fhir_server):
    from fhir.resources.R4B.observation import Observation

    with archive_client(tmp_path, fhir_server.url) as client:
        images = study("DOSE-1", "D1", 1)
        uid = read(images[0]).StudyInstanceUID
        events = [("2.25.1001", 12.5, 400.0), ("2.25.1002", 8.25, 150.5)]
        sr = dose_report(uid, "DOSE-1", events)
        assert stow(client, *images, sr).status_code == 200
        sync(client)
        [found] = imaging_study(fhir_server, uid)
        sop = read(sr).SOPInstanceUID
        [summary] = fhir_get(
            fhir_server, f"Observation?identifier={projection.DICOM_UID}|urn:oid:{sop}"
        )
        s = Observation(**summary)
        assert s.code.coding[0].code == "73569-6" and s.status == "preliminary"
        assert s.partOf[0].reference == f"ImagingStudy/{found['id']}"
        values = {c.code.coding[0].code: c.valueQuantity for c in s.component}
        assert float(values["113813"].value) == 550.5 and values["113813"].code == "mGy.cm"
        for event_uid, ctdi, dlp in events:
            [event] = fhir_get(
                fhir_server, f"Observation?identifier={projection.DICOM_UID}|urn:oid:{event_uid}"
            )
            e = Observation(**event)
            assert e.code.coding[0].code == "113852" and e.bodySite.coding[0].code == "51185008"
            got = {c.code.coding[0].code: float(c.valueQuantity.value) for c in e.component}
            assert got == {"113830": ctdi, "113838": dlp}
        # the report deleted, its observations go; the study stays with its image
        d = read(sr)
        path = f"/v2/studies/{uid}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
        assert client.delete(path).status_code == 204
        sync(client)
        assert fhir_get(fhir_server, f"Observation?part-of=ImagingStudy/{found['id']}") == []
        assert imaging_study(fhir_server, uid)[0]["numberOfInstances"] == 1


def test_a_study_of_a_thousand_instances(tmp_path, fhir_server):
    """One transaction per study however large: 1,200 instances in 3 series, synced whole."""
    from pydicom.uid import generate_uid

    base = read(load("CT_small.dcm"))
    base.Rows = base.Columns = 4
    base.PixelData = bytes(32)
    base.PatientID = "BIG-1"
    uid = generate_uid()[:40]  # room for the series and instance suffixes
    files = []
    for n in range(1200):
        base.StudyInstanceUID, base.SeriesInstanceUID = uid, f"{uid}.{n % 3}"
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{n % 3}.{n}"
        base.InstanceNumber = n
        files.append(_bytes(base))
    with archive_client(tmp_path, fhir_server.url, fhir_batch_size=500) as client:
        for start in range(0, len(files), 200):
            assert stow(client, *files[start : start + 200]).status_code == 200
        assert sync(client) == 1200
        [found] = imaging_study(fhir_server, uid)
        assert found["numberOfInstances"] == 1200 and found["numberOfSeries"] == 3
        assert sum(len(s["instance"]) for s in found["series"]) == 1200
