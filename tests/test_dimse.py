"""The DIMSE service against DCMTK's clients and pynetdicom as SCU, on a running server: C-ECHO,
C-STORE of pydicom's test files read back byte-equal over WADO-RS, the statuses of duplicates,
invalid data sets and callers without permission, rejected AE titles, junk on the port, the
audit entries, the exposure check, and the service beside several HTTP workers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import sys
import time

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.components import Unavailable, orthanc
from tests.conftest import ROOT, free_port, ran, running_server, unavailable
from tests.dicomfiles import read, storable_files
from tests.synthetic import instance, uid


@pytest.fixture(autouse=True, scope="module")
def dcmtk_installed():
    if shutil.which("dcmsend") is None:
        unavailable(Unavailable("DCMTK", "Debian dcmtk is not installed"))
    ran("DCMTK")


CALLERS = "MODALITY=store,VIEWER=find+retrieve,ROGUE@10.9.9.9=store"
# pynetdicom aborts the association on these RLE files as DCMTK sends them (it reports a C-STORE
# of SOP Class '31', which the files do not hold): nothing is stored; storescp takes them.
SENT_BROKEN = {"rtdose_rle.dcm", "rtdose_rle_1frame.dcm"}


@pytest.fixture(scope="module")
def destination(tmp_path_factory):
    """DCMTK's storescp, bit-preserving, as the C-MOVE destination DEST: (port, its folder)."""
    folder = tmp_path_factory.mktemp("dest")
    port = free_port()
    scp = subprocess.Popen(["storescp", "+B", "+xa", "-aet", "DEST", "-od", str(folder), str(port)])
    _wait_for_port(port)
    yield port, folder
    scp.terminate()
    scp.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, destination):
    port = free_port()
    data = tmp_path_factory.mktemp("dimse")
    peers = f"DEST=127.0.0.1:{destination[0]},GONE=127.0.0.1:{free_port()}"
    settings = dict(dimse_port=str(port), dimse_callers=CALLERS, dimse_peers=peers)
    with running_server(data, **settings) as (base, proc):
        _wait_for_port(port)
        yield base, port, proc


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the DIMSE port did not open"
            time.sleep(0.1)


def dcmtk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def dataset_part(data: bytes) -> bytes:
    """The bytes after the file meta group (whose length (0002,0000) gives)."""
    assert data[128:132] == b"DICM"
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length :]


def test_echo(server):
    _, port, _ = server
    ok = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMHUB", "127.0.0.1", str(port))
    assert ok.returncode == 0, ok.stderr
    stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "DICOMHUB", "127.0.0.1", str(port))
    assert stranger.returncode != 0 and "reject" in (stranger.stderr + stranger.stdout).lower()
    base = server[0]
    entries = httpx.get(base + "/v2/audit", params={"principal": "STRANGER"}).json()
    assert [(e["method"], e["address"]) for e in entries] == [("A-ASSOCIATE-RJ", "127.0.0.1")]
    echoes = httpx.get(base + "/v2/audit", params={"principal": "MODALITY"}).json()
    assert ("C-ECHO", 0) in [(e["method"], e["status"]) for e in echoes]


def test_dcmsend_stores_exactly_what_was_sent(server, tmp_path):
    """pydicom's test files sent with dcmsend are stored as the bytes that crossed the wire:
    DCMTK's own storescp, receiving the same send in bit-preserving mode, is the reference
    (DCMTK re-encodes some malformed files as it sends them)."""
    base, port, _ = server
    files = list(storable_files())
    paths = []
    for n, f in enumerate(files):
        path = tmp_path / f"{n:03d}-{f.name}"
        path.write_bytes(f.data)
        paths.append(str(path))
    reference = tmp_path / "storescp"
    reference.mkdir()
    peer = free_port()
    scp = subprocess.Popen(["storescp", "+B", "+xa", "-od", str(reference), str(peer)])
    try:
        _wait_for_port(peer)
        for target in (peer, port):
            for path in paths:  # an association each: one aborted loses no other file
                dcmtk(
                    "dcmsend",
                    "-aet",
                    "MODALITY",
                    "-aec",
                    "DICOMHUB",
                    "--decompress-never",
                    "127.0.0.1",
                    str(target),
                    path,
                )
    finally:
        scp.terminate()
        scp.wait(10)
    received = {}
    for path in reference.iterdir():
        data = path.read_bytes()
        received[str(read(data).SOPInstanceUID)] = data
    assert len(received) >= len(files) - 5, "storescp took too few files to compare with"
    with httpx.Client(base_url=base, timeout=60) as http:
        for f in files:
            r = http.get(
                f"/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}",
                headers={"Accept": "application/dicom; transfer-syntax=*"},
            )
            if f.sop not in received:
                assert r.status_code == 404, f.name  # not sent: not negotiable
                continue
            if f.name in SENT_BROKEN:
                assert r.status_code == 404, f.name
                continue
            assert r.status_code == 200, (f.name, r.text)
            assert dataset_part(r.content) == dataset_part(received[f.sop]), f.name
            syntax = read(received[f.sop]).file_meta.TransferSyntaxUID
            assert read(r.content).file_meta.TransferSyntaxUID == syntax, f.name
        stored = set(received) - {f.sop for f in files if f.name in SENT_BROKEN}
        feed = http.get("/v2/changefeed", params={"limit": 200}).json()
        assert {e["sopInstanceUid"] for e in feed} >= stored
        entries = http.get("/v2/audit", params={"action": "write", "limit": 1000}).json()
        dimse = [e for e in entries if e["protocol"] == "dimse" and e["status"] == 0]
        assert {e["sopInstanceUid"] for e in dimse} >= stored
        assert {(e["method"], e["principal"], e["address"]) for e in dimse} == {
            ("C-STORE", "MODALITY", "127.0.0.1")
        }


def test_statuses(server):
    """Duplicates, invalid data sets and callers without the store permission, as pynetdicom
    (a second, independent DIMSE implementation) sees them."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    base, port, _ = server
    good = instance(uid(60, 1), uid(60, 2), uid(60, 3))
    bad_uid = instance("1.2.abc", uid(60, 2), uid(60, 4))

    def send(calling: str, data: bytes) -> int:
        ae = AE(ae_title=calling)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
        assert assoc.is_established
        try:
            import io

            import pydicom

            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
            return status.Status
        finally:
            assoc.release()

    assert send("MODALITY", good) == 0x0000
    assert send("MODALITY", good) == 0x0111  # duplicate SOP instance, as STOW's 45070
    assert send("MODALITY", bad_uid) == 0xA900  # as STOW's 43264
    assert send("VIEWER", instance(uid(60, 1), uid(60, 2), uid(60, 5))) == 0x0124  # no store
    assert send("ROGUE", instance(uid(60, 1), uid(60, 2), uid(60, 5))) == 0x0124  # not from here
    with httpx.Client(base_url=base) as http:
        assert http.get(f"/v2/studies/{uid(60, 1)}/series/{uid(60, 2)}/instances").json()
        missing = http.get(f"/v2/studies/{uid(60, 1)}/series/{uid(60, 2)}/instances/{uid(60, 5)}")
        assert missing.status_code == 404
        refused = http.get("/v2/audit", params={"principal": "VIEWER"}).json()
        assert [(e["method"], e["status"]) for e in refused] == [("C-STORE", 0x0124)]
        invalid = http.get("/v2/audit", params={"status": "0xA900", "limit": 1000}).json()
        assert {e["status"] for e in invalid} == {0xA900}
        assert ("C-STORE", "MODALITY", uid(60, 4)) in [
            (e["method"], e["principal"], e["sopInstanceUid"]) for e in invalid
        ]


@pytest.mark.parametrize("spec", ["CT1", "CT1=", "CT1=fly", "=store", "A" * 17 + "=store"])
def test_a_bad_caller_list_is_refused(spec):
    from dicomhub.dimse.callers import Callers

    with pytest.raises(ValueError, match="dimse_callers"):
        Callers(spec)
    callers = Callers("CT1=store, PACS@10.0.0.5=store+find")
    assert callers.allows("CT1", "10.1.1.1", "store") and not callers.allows("CT1", "x", "find")
    assert callers.allows("PACS", "10.0.0.5", "find") and not callers.allows("PACS", "x", "find")


def test_junk_never_takes_the_adapter_down(server):
    _, port, proc = server
    for junk in (
        b"\x00" * 10,
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x01\x00" + b"\xff" * 4 + b"x" * 100,
        struct.pack(">BBI", 1, 0, 0xFFFFFFFF) + b"\x00" * 64,
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(junk)
            try:
                sock.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    assert proc.poll() is None
    ok = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMHUB", "127.0.0.1", str(port))
    assert ok.returncode == 0, ok.stderr


def test_an_aborted_association_is_audited(server):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    base, port, _ = server
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    assoc.abort()
    deadline = time.monotonic() + 10
    while True:
        entries = httpx.get(base + "/v2/audit", params={"principal": "VIEWER"}).json()
        if any(e["method"] == "A-ABORT" for e in entries):
            break
        assert time.monotonic() < deadline, entries
        time.sleep(0.2)


def test_an_open_dimse_service_stays_on_loopback(tmp_path):
    command = [
        sys.executable,
        "-m",
        "dicomhub",
        "dimse",
        "--host",
        "0.0.0.0",
        "--dimse-port",
        str(free_port()),
        "--data-dir",
        str(tmp_path),
    ]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--dimse-callers" in refused.stderr
    bad_list = [*command, "--dimse-callers", "CT1=fly"]
    refused = subprocess.run(bad_list, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "dimse_callers entry 'CT1=fly'" in refused.stderr


def test_beside_several_http_workers(tmp_path):
    """With serve --workers 2 the DIMSE port is served by one process of its own, stopped
    with the server."""
    port = free_port()
    with running_server(tmp_path, workers="2", dimse_port=str(port)) as (base, _):
        _wait_for_port(port)
        data = instance(uid(61, 1), uid(61, 2), uid(61, 3))
        path = tmp_path / "one.dcm"
        path.write_bytes(data)
        sent = dcmtk("dcmsend", "-aec", "DICOMHUB", "127.0.0.1", str(port), str(path))
        assert sent.returncode == 0, sent.stderr
        with httpx.Client(base_url=base) as http:
            r = http.get(f"/v2/studies/{uid(61, 1)}/metadata")
            assert r.status_code == 200 and len(r.json()) == 1
    deadline = time.monotonic() + 30
    while True:  # the port is released once the server has stopped
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the DIMSE process outlived the server"
        time.sleep(0.2)


# -- C-FIND ---------------------------------------------------------------------------------

FIND_STUDIES = [  # (patient, name, date, modality, series count)
    ("FIND1", "Find^Alice", "20200105", "CT", 2),
    ("FIND1", "Find^Alice", "20210610", "MR", 1),
    ("FIND2", "Find^Bob", "20200720", "MR", 2),
    ("FIND3", "Find^Bea", "20191231", "CT", 1),
]


@pytest.fixture(scope="module")
def find_data(server):
    base, _, _ = server
    studies = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for n, (patient, name, date, modality, series) in enumerate(FIND_STUDIES):
            study = uid(62, n)
            parts = [
                instance(
                    study,
                    uid(62, n, s),
                    uid(62, n, s, i),
                    PatientID=patient,
                    PatientName=name,
                    StudyDate=date,
                    Modality=modality,
                    InstanceNumber=i,
                )
                for s in range(series)
                for i in range(2)
            ]
            from tests.helpers import stow

            assert stow(http, *parts).status_code == 200
            studies.append(study)
    return studies


def dcmtk_query(tool: str, port: int, calling: str, level: str, keys: dict, *options: str):
    """Run a DCMTK query or retrieve tool: ``calling`` asks DICOMHUB at ``level`` for ``keys``,
    with the tool's own ``options``."""
    args = [tool, *options, "-aet", calling, "-aec", "DICOMHUB"]
    args += ["-k", f"QueryRetrieveLevel={level}"]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    return dcmtk(*args, "127.0.0.1", str(port))


def findscu(port: int, tmp_path, model: str, level: str, **keys: str) -> list:
    out = tmp_path / f"find-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    done = dcmtk_query("findscu", port, "VIEWER", level, keys, model, "-v", "-X", "-od", str(out))
    # findscu exits 0 whatever the final status: a refused query must not look like no match
    assert done.returncode == 0, done.stderr
    assert "Received Final Find Response (Success)" in done.stdout + done.stderr, done.stderr
    return [read(p.read_bytes()) for p in sorted(out.iterdir())]


def qido(base: str, path: str, **params) -> list[dict]:
    r = httpx.get(base + path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def values(results, tag: str) -> set[str]:
    return {str(r[tag]["Value"][0]) for r in results}


@pytest.mark.parametrize(
    "level, keys, path",
    [
        ("STUDY", {"PatientID": "FIND1"}, "/v2/studies"),
        ("STUDY", {"PatientName": "Find^B*"}, "/v2/studies"),
        ("STUDY", {"PatientID": "FIND*", "StudyDate": "20200101-20201231"}, "/v2/studies"),
        ("STUDY", {"PatientID": "FIND*", "StudyDate": "-20200101"}, "/v2/studies"),
        ("STUDY", {"PatientID": "FIND*", "ModalitiesInStudy": "MR"}, "/v2/studies"),
        ("STUDY", {"PatientID": "FIND1\\FIND3"}, "/v2/studies"),
        ("SERIES", {"PatientID": "FIND2", "Modality": "MR"}, "/v2/series"),
        ("IMAGE", {"PatientID": "FIND1", "InstanceNumber": "1"}, "/v2/instances"),
    ],
)
def test_c_find_matches_what_qido_matches(server, find_data, tmp_path, level, keys, path):
    base, port, _ = server
    returned = {
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    tag = {"STUDY": "0020000D", "SERIES": "0020000E", "IMAGE": "00080018"}[level]
    found = findscu(port, tmp_path, "-S", level, **{returned: "", "PatientName": "", **keys})
    expected = values(qido(base, path, **keys), tag)
    assert expected, "the case must match something"
    assert {str(ds[returned].value) for ds in found} == expected
    for ds in found:  # the keys asked for, and only those
        assert ds.QueryRetrieveLevel == level
        assert {e.keyword for e in ds} <= {
            "SpecificCharacterSet",
            "QueryRetrieveLevel",
            returned,
            "PatientName",
            *keys,
        }
        assert str(ds.PatientName).startswith("Find^")


def test_c_find_in_a_study_and_a_series(server, find_data, tmp_path):
    base, port, _ = server
    study = find_data[0]
    series = findscu(
        port, tmp_path, "-S", "SERIES", StudyInstanceUID=study, SeriesInstanceUID="", Modality=""
    )
    assert {str(s.SeriesInstanceUID) for s in series} == values(
        qido(base, f"/v2/studies/{study}/series"), "0020000E"
    )
    assert {s.Modality for s in series} == {"CT"}
    first = uid(62, 0, 0)
    images = findscu(
        port,
        tmp_path,
        "-S",
        "IMAGE",
        StudyInstanceUID=study,
        SeriesInstanceUID=first,
        SOPInstanceUID="",
    )
    assert {str(i.SOPInstanceUID) for i in images} == {uid(62, 0, 0, 0), uid(62, 0, 0, 1)}


def test_c_find_sequence_keys(server, tmp_path):
    """A sequence key with a valued item key matches items, as QIDO-RS's Sequence.Key does; an
    empty sequence key is a return key, answered with the stored items."""
    from tests.helpers import stow

    base, port, _ = server
    study = uid(67, 1)
    requests = {0: "RP7", 1: "RP8"}
    parts = [
        instance(
            study,
            uid(67, 2, s),
            uid(67, 3, s),
            RequestAttributesSequence=[
                {"RequestedProcedureID": rp, "ScheduledProcedureStepID": f"SPS{s}"}
            ],
        )
        for s, rp in requests.items()
    ]
    with httpx.Client(base_url=base) as http:
        assert stow(http, *parts).status_code == 200
    found = findscu(
        port,
        tmp_path,
        "-S",
        "SERIES",
        StudyInstanceUID=study,
        SeriesInstanceUID="",
        **{"RequestAttributesSequence[0].RequestedProcedureID": "RP8"},
    )
    expected = qido(base, f"/v2/studies/{study}/series", **{"00400275.00401001": "RP8"})
    assert [str(ds.SeriesInstanceUID) for ds in found] == [uid(67, 2, 1)]
    assert values(expected, "0020000E") == {uid(67, 2, 1)}
    assert found[0].RequestAttributesSequence[0].RequestedProcedureID == "RP8"
    returned = findscu(
        port,
        tmp_path,
        "-S",
        "SERIES",
        StudyInstanceUID=study,
        SeriesInstanceUID=uid(67, 2, 0),
        RequestAttributesSequence="",
    )
    [item] = returned[0].RequestAttributesSequence
    assert (item.RequestedProcedureID, item.ScheduledProcedureStepID) == ("RP7", "SPS0")


def test_c_find_patient_level(server, find_data, tmp_path):
    _, port, _ = server
    patients = findscu(port, tmp_path, "-P", "PATIENT", PatientID="FIND*", PatientName="")
    assert sorted((str(p.PatientID), str(p.PatientName)) for p in patients) == [
        ("FIND1", "Find^Alice"),
        ("FIND2", "Find^Bob"),
        ("FIND3", "Find^Bea"),
    ]


def test_c_find_statuses_and_audit(server, find_data):
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Model

    base, port, _ = server

    def find(calling: str, **keys) -> list[int]:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Model)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
        assert assoc.is_established
        identifier = Dataset()
        for key, value in keys.items():
            setattr(identifier, key, value)
        try:
            return [status.Status for status, _ in assoc.send_c_find(identifier, Model)]
        finally:
            assoc.release()

    assert find("VIEWER", QueryRetrieveLevel="STUDY", PatientID="FIND2") == [0xFF00, 0x0000]
    assert find("VIEWER", QueryRetrieveLevel="GALAXY", PatientID="FIND2") == [0xA900]
    assert find("VIEWER", QueryRetrieveLevel="STUDY", StudyDate="2020-13-45") == [0xA900]
    assert find("MODALITY", QueryRetrieveLevel="STUDY", PatientID="FIND2") == [0x0124]
    entries = httpx.get(base + "/v2/audit", params={"action": "read", "limit": 1000}).json()
    finds = [e for e in entries if e["method"] == "C-FIND"]
    assert (finds[-4]["principal"], finds[-4]["status"], finds[-4]["detail"]["matches"]) == (
        "VIEWER",
        0,
        1,
    )
    assert [e["status"] for e in finds[-3:]] == [0xA900, 0xA900, 0x0124]


def test_c_find_cancel(server, find_data, tmp_path):
    """findscu cancels after the first response: of 1,500 matches, the adapter stops early and
    ends with the Cancel status."""
    from tests.helpers import stow

    base, port, _ = server
    parts = [instance(uid(63, 1), uid(63, 2), uid(63, 3, i), PatientID="MANY") for i in range(1500)]
    with httpx.Client(base_url=base, timeout=120) as http:
        assert stow(http, *parts).status_code == 200
    done = dcmtk(
        "findscu",
        "-v",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        "DICOMHUB",
        "--cancel",
        "1",
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "PatientID=MANY",
        "-k",
        "SOPInstanceUID=",
        "127.0.0.1",
        str(port),
    )
    text = done.stdout + done.stderr
    assert "Cancel" in text, text[-2000:]
    assert text.count("Find Response:") < 1500


# -- C-GET ----------------------------------------------------------------------------------


def getscu(port: int, out, level: str, calling: str = "VIEWER", **keys: str):
    out.mkdir()
    model = "-P" if level == "PATIENT" else "-S"
    return dcmtk_query("getscu", port, calling, level, keys, model, "-od", str(out))


@pytest.mark.parametrize(
    "level, keys, count",
    [
        ("STUDY", {"StudyInstanceUID": uid(62, 0)}, 4),
        ("SERIES", {"StudyInstanceUID": uid(62, 0), "SeriesInstanceUID": uid(62, 0, 1)}, 2),
        (
            "IMAGE",
            {
                "StudyInstanceUID": uid(62, 2),
                "SeriesInstanceUID": uid(62, 2, 0),
                "SOPInstanceUID": uid(62, 2, 0, 1),
            },
            1,
        ),
        ("STUDY", {"StudyInstanceUID": f"{uid(62, 1)}\\{uid(62, 3)}"}, 4),
        ("PATIENT", {"PatientID": "FIND2"}, 4),
    ],
)
def test_c_get_sends_the_stored_instances(server, find_data, tmp_path, level, keys, count):
    base, port, _ = server
    done = getscu(port, tmp_path / "got", level, **keys)
    assert done.returncode == 0, done.stderr
    got = {
        str(read(p.read_bytes()).SOPInstanceUID): p.read_bytes()
        for p in (tmp_path / "got").iterdir()
    }
    assert len(got) == count
    for sop, data in got.items():
        ds = read(data)
        r = httpx.get(
            f"{base}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{sop}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
        )
        assert dataset_part(r.content) == dataset_part(data), sop


COMPRESSED = [
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def _stored_and_converted(base: str, name: str, study: str) -> bytes:
    """Store a copy of pydicom's file ``name`` in ``study``; WADO-RS's Explicit VR Little
    Endian conversion of it."""
    from tests.dicomfiles import load, with_new_uids
    from tests.helpers import stow

    data = with_new_uids(load(name), study=study, series=study + ".1")
    ds = read(data)
    with httpx.Client(base_url=base, timeout=60) as http:
        assert stow(http, data).status_code == 200
        converted = http.get(
            f"/v2/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
            headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"},
        )
    assert converted.status_code == 200, converted.text
    return converted.content


@pytest.mark.parametrize("name", COMPRESSED)
def test_c_get_converts_what_the_requestor_cannot_take(server, tmp_path, name):
    """getscu accepts only uncompressed syntaxes by default: a compressed instance goes out in
    Explicit VR Little Endian, exactly as WADO-RS converts it."""
    base, port, _ = server
    study = uid(66, COMPRESSED.index(name))
    converted = _stored_and_converted(base, name, study)
    done = getscu(port, tmp_path / "got", "STUDY", StudyInstanceUID=study)
    assert done.returncode == 0, done.stderr
    [got] = [p.read_bytes() for p in (tmp_path / "got").iterdir()]
    assert read(got).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert _elements(got) == _elements(converted)


@pytest.mark.parametrize("name", COMPRESSED[:2])
def test_c_move_converts_what_the_destination_refuses(tmp_path, name):
    """A storescp taking only uncompressed syntaxes (its default) as the destination: the
    compressed instance arrives in Explicit VR Little Endian, as WADO-RS converts it."""
    folder, dest_port, port = tmp_path / "plain", free_port(), free_port()
    folder.mkdir()
    scp = subprocess.Popen(["storescp", "+B", "-aet", "PLAIN", "-od", str(folder), str(dest_port)])
    try:
        _wait_for_port(dest_port)
        data = tmp_path / "data"
        data.mkdir()
        with running_server(
            data, dimse_port=str(port), dimse_peers=f"PLAIN=127.0.0.1:{dest_port}"
        ) as (base, _):
            _wait_for_port(port)
            converted = _stored_and_converted(base, name, uid(68, 1))
            done = movescu(port, "STUDY", "PLAIN", StudyInstanceUID=uid(68, 1))
            assert done.returncode == 0, done.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    [got] = [p.read_bytes() for p in folder.iterdir()]
    assert read(got).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert _elements(got) == _elements(converted)


def test_c_get_refusals(server, find_data, tmp_path):
    base, port, _ = server
    denied = getscu(
        port, tmp_path / "denied", "STUDY", calling="MODALITY", StudyInstanceUID=uid(62, 0)
    )
    assert "0x124" in denied.stderr, denied.stderr  # Refused: not authorized
    assert not any((tmp_path / "denied").iterdir())
    universal = getscu(port, tmp_path / "universal", "STUDY", PatientID="FIND1")
    assert not any((tmp_path / "universal").iterdir())
    assert "DataSetDoesNotMatchSOPClass" in universal.stderr  # 0xA900: no StudyInstanceUID
    entries = httpx.get(base + "/v2/audit", params={"limit": 1000}).json()
    gets = [e for e in entries if e["method"] == "C-GET"]
    assert [(e["principal"], e["status"]) for e in gets[-2:]] == [
        ("MODALITY", 0x0124),
        ("VIEWER", 0xA900),
    ]


# -- C-MOVE ---------------------------------------------------------------------------------


def movescu(port: int, level: str, destination: str, calling: str = "VIEWER", **keys: str):
    model = "-P" if level == "PATIENT" else "-S"
    return dcmtk_query("movescu", port, calling, level, keys, "-v", model, "-aem", destination)


def test_c_move_sends_a_study_to_a_peer(server, destination, find_data):
    base, port, _ = server
    folder = destination[1]
    before = set(folder.iterdir())
    done = movescu(port, "STUDY", "DEST", StudyInstanceUID=uid(62, 2))
    assert done.returncode == 0, done.stderr
    assert "Received Final Move Response (Success)" in done.stderr
    received = set(folder.iterdir()) - before
    assert len(received) == 4
    for path in received:
        data = path.read_bytes()
        ds = read(data)
        r = httpx.get(
            f"{base}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
        )
        assert dataset_part(r.content) == dataset_part(data)
    entries = httpx.get(base + "/v2/audit", params={"limit": 1000}).json()
    move = [e for e in entries if e["method"] == "C-MOVE"][-1]
    assert (move["status"], move["detail"]["destination"], move["detail"]["instances"]) == (
        0,
        "DEST",
        4,
    )


def test_c_move_refusals(server, destination, find_data):
    base, port, _ = server
    before = set(destination[1].iterdir())
    unknown = movescu(port, "STUDY", "NOWHERE", StudyInstanceUID=uid(62, 0))
    assert (
        "MoveDestinationUnknown" in unknown.stdout + unknown.stderr
        or "a801" in (unknown.stdout + unknown.stderr).lower()
    )
    unreachable = movescu(port, "STUDY", "GONE", StudyInstanceUID=uid(62, 0))
    assert (
        "MoveDestinationUnknown" in unreachable.stdout + unreachable.stderr
        or "a801" in (unreachable.stdout + unreachable.stderr).lower()
    )
    nothing = movescu(port, "STUDY", "DEST", StudyInstanceUID=uid(99, 99))
    assert "Received Final Move Response (Success)" in nothing.stderr
    denied = movescu(port, "STUDY", "DEST", calling="MODALITY", StudyInstanceUID=uid(62, 0))
    assert "0x124" in denied.stdout + denied.stderr
    assert set(destination[1].iterdir()) == before
    # entries reach the log in batches: wait for them
    expected = [
        ("MODALITY", "DEST", 0x0124),
        ("VIEWER", "DEST", 0),
        ("VIEWER", "GONE", 0xA801),
        ("VIEWER", "NOWHERE", 0xA801),
    ]
    deadline = time.monotonic() + 10
    while True:
        entries = httpx.get(base + "/v2/audit", params={"limit": 1000}).json()
        moves = [
            e for e in entries if e["method"] == "C-MOVE" and e["detail"].get("instances", -1) != 4
        ]
        seen = sorted((e["principal"], e["detail"]["destination"], e["status"]) for e in moves)
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == expected


# -- Orthanc as a DIMSE peer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_peer(tmp_path_factory):
    """Orthanc (Debian) with its DICOM server on, knowing dicomhub as a modality; and a
    dicomhub that lets ORTHANC store and retrieve and may C-MOVE to it."""
    orthanc_port, dimse_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        try:
            orthanc_url = stack.enter_context(
                orthanc(
                    tmp_path_factory.mktemp("orthanc"),
                    DicomPort=orthanc_port,
                    DicomAet="ORTHANC",
                    DicomModalities={"dicomhub": ["DICOMHUB", "127.0.0.1", dimse_port]},
                )
            )
        except Unavailable as exc:
            unavailable(exc)
        ran("Orthanc")
        base, _ = stack.enter_context(
            running_server(
                tmp_path_factory.mktemp("dicomhub-peer"),
                dimse_port=str(dimse_port),
                dimse_callers="ORTHANC=store+find+retrieve",
                dimse_peers=f"ORTHANC=127.0.0.1:{orthanc_port}",
            )
        )
        _wait_for_port(dimse_port)
        yield orthanc_url, base


def _orthanc_file(orthanc: str, sop: str) -> bytes:
    found = httpx.post(orthanc + "/tools/lookup", content=sop).json()
    (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
    return httpx.get(f"{orthanc}/instances/{instance}/file").content


def _elements(data: bytes) -> dict:
    """Every element of the data set (not the file meta group) with its value, group lengths
    and trailing padding (which DCMTK drops when it sends) left out: Orthanc re-encodes what
    it stores, so the two are compared element by element (the byte-for-byte comparison is
    the storescp test's)."""
    ds = read(data)
    return {
        e.tag: (e.VR, e.value) for e in ds.iterall() if e.tag.element != 0 and e.tag != 0xFFFCFFFC
    }


def _dicomhub_file(base: str, ds) -> bytes:
    r = httpx.get(
        f"{base}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert r.status_code == 200, r.text
    return r.content


def test_orthanc_stores_to_dicomhub(orthanc_peer):
    """Orthanc C-STOREs what it holds; dicomhub then holds the same data sets, in the same
    transfer syntax."""
    from tests.dicomfiles import load

    orthanc, base = orthanc_peer
    names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"]
    ids = [httpx.post(orthanc + "/instances", content=load(n)).json()["ID"] for n in names]
    r = httpx.post(
        orthanc + "/modalities/dicomhub/store",
        timeout=120,
        json={"Resources": ids, "Synchronous": True},
    )
    assert r.status_code == 200, r.text
    for name in names:
        ds = read(load(name))
        sent = _orthanc_file(orthanc, str(ds.SOPInstanceUID))
        got = _dicomhub_file(base, ds)
        assert _elements(got) == _elements(sent), name
        assert read(got).file_meta.TransferSyntaxUID == read(sent).file_meta.TransferSyntaxUID


def test_dicomhub_moves_a_study_to_orthanc(orthanc_peer):
    """Orthanc asks dicomhub (C-MOVE) to send it a study only dicomhub has; afterwards both
    hold identical instances."""
    from tests.helpers import stow

    orthanc, base = orthanc_peer
    study = uid(64, 1)
    parts = [
        instance(study, uid(64, 2, s), uid(64, 3, s, i), PatientID="PEER", InstanceNumber=i)
        for s in range(2)
        for i in range(3)
    ]
    with httpx.Client(base_url=base) as http:
        assert stow(http, *parts).status_code == 200
    r = httpx.post(
        orthanc + "/modalities/dicomhub/move",
        timeout=120,
        json={
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": study}],
            "TargetAet": "ORTHANC",
        },
    )
    assert r.status_code == 200, r.text
    for data in parts:
        ds = read(data)
        stored = _orthanc_file(orthanc, str(ds.SOPInstanceUID))
        assert _elements(stored) == _elements(_dicomhub_file(base, ds))
    entries = httpx.get(base + "/v2/audit", params={"principal": "ORTHANC"}).json()
    move = [e for e in entries if e["method"] == "C-MOVE"][-1]
    assert (move["status"], move["detail"]["instances"]) == (0, 6)


def test_orthanc_asks_dicomhub_for_storage_commitment(orthanc_peer):
    """Orthanc (storage commitment SCU) asks dicomhub to commit what it stored there, and one
    instance it never sent; dicomhub's report reaches Orthanc on a new association."""
    from tests.helpers import stow

    orthanc, base = orthanc_peer
    study = uid(65, 1)
    sops = [uid(65, 3, i) for i in range(3)]
    with httpx.Client(base_url=base) as http:
        assert stow(http, *(instance(study, uid(65, 2), sop) for sop in sops)).status_code == 200
    ct, missing = "1.2.840.10008.5.1.4.1.1.2", uid(65, 9)
    asked = [[ct, sop] for sop in sops] + [[ct, missing]]
    r = httpx.post(
        orthanc + "/modalities/dicomhub/storage-commitment",
        json={"DicomInstances": asked},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    path = r.json()["Path"]
    deadline = time.monotonic() + 30
    while (outcome := httpx.get(orthanc + path).json())["Status"] == "Pending":
        assert time.monotonic() < deadline, outcome
        time.sleep(0.2)
    assert outcome["Status"] == "Failure", outcome  # one instance is not there
    assert sorted(s["SOPInstanceUID"] for s in outcome["Success"]) == sorted(sops)
    [failure] = outcome["Failures"]
    assert (failure["SOPInstanceUID"], failure["FailureReason"]) == (missing, 0x0112)


@pytest.mark.parametrize(
    "spec", ["DEST", "DEST=host", "DEST=host:0", "DEST=:104", "=h:104", "DEST=tls://:104"]
)
def test_a_bad_peer_list_is_refused(spec):
    from dicomhub.dimse.callers import parse_peers

    with pytest.raises(ValueError, match="dimse_peers"):
        parse_peers(spec)
    from dicomhub.dimse.callers import Peer

    assert parse_peers("A=h:104, B=10.0.0.5:11112,C=tls://pacs:2762") == {
        "A": Peer("h", 104),
        "B": Peer("10.0.0.5", 11112),
        "C": Peer("pacs", 2762, tls=True),
    }


def test_dimse_peer_is_repeatable(monkeypatch):
    """``--dimse-peer`` (repeatable) adds to ``--dimse-peers``; either overrides the env."""
    from dicomhub.cli import parse_command_line

    monkeypatch.setenv("DICOMHUB_DIMSE_PEERS", "ENV=h:1")
    _, settings = parse_command_line(["dimse", "--dimse-peer", "A=h:104", "--dimse-peer", "B=k:5"])
    assert settings.dimse_peers == "A=h:104,B=k:5"
    _, settings = parse_command_line(["serve", "--dimse-peers", "X=h:7", "--dimse-peer", "A=h:9"])
    assert settings.dimse_peers == "X=h:7,A=h:9"
    assert parse_command_line(["serve"])[1].dimse_peers == "ENV=h:1"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomhub",
            "dimse",
            "--dimse-port",
            "11112",
            "--dimse-peer",
            "A=h:104",
            "--dimse-peer",
            "nonsense",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode != 0 and "'nonsense'" in bad.stderr


def test_dicom_tls(tmp_path):
    """DICOM TLS with DCMTK: a peer with a certificate the CA signed gets in and stores; a
    plain TCP peer and an anonymous TLS peer do not; a C-MOVE reaches a tls:// peer over TLS
    (each side checking the other's certificate)."""
    from tests.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    secure, secure_port = tmp_path / "secure", free_port()  # a C-MOVE destination over TLS
    secure.mkdir()
    scp = subprocess.Popen(
        [
            "storescp",
            "+B",
            "+tls",
            key,
            cert,
            "+cf",
            cert,
            "-aet",
            "SECURE",
            "-od",
            str(secure),
            str(secure_port),
        ]
    )
    with contextlib.ExitStack() as stack:
        stack.callback(scp.wait, 10)
        stack.callback(scp.terminate)
        base, _ = stack.enter_context(
            running_server(
                data,
                dimse_port=str(port),
                dimse_tls_certfile=cert,
                dimse_tls_keyfile=key,
                dimse_tls_ca=cert,
                dimse_peers=f"SECURE=tls://127.0.0.1:{secure_port}",
            )
        )
        _wait_for_port(port)
        tls = ["+tls", key, cert, "+cf", cert]
        ok = dcmtk("echoscu", *tls, "-aec", "DICOMHUB", "127.0.0.1", str(port))
        assert ok.returncode == 0, ok.stderr
        plain = dcmtk("echoscu", "-to", "5", "-aec", "DICOMHUB", "127.0.0.1", str(port))
        assert plain.returncode != 0
        anonymous = dcmtk(
            "echoscu", "+tla", "+cf", cert, "-aec", "DICOMHUB", "127.0.0.1", str(port)
        )
        assert anonymous.returncode != 0
        path = tmp_path / "one.dcm"
        path.write_bytes(instance(uid(65, 1), uid(65, 2), uid(65, 3)))
        stored = dcmtk("storescu", *tls, "-aec", "DICOMHUB", "127.0.0.1", str(port), str(path))
        assert stored.returncode == 0, stored.stderr
        r = httpx.get(f"{base}/v2/studies/{uid(65, 1)}/metadata")
        assert r.status_code == 200 and len(r.json()) == 1
        assert _move_over_tls(port, cert, key, "SECURE", uid(65, 1))[-1] == 0x0000
        [received] = list(secure.iterdir())
        assert received.read_bytes().endswith(dataset_part(path.read_bytes()))


def _move_over_tls(port: int, cert: str, key: str, destination: str, study: str) -> list[int]:
    """The statuses of a C-MOVE asked over TLS by pynetdicom (DCMTK's movescu has no TLS)."""
    import ssl

    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Model

    context = ssl.create_default_context(cafile=cert)
    context.load_cert_chain(cert, key)
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(Model)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB", tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    try:
        return [status.Status for status, _ in assoc.send_c_move(query, destination, Model)]
    finally:
        assoc.release()


def test_c_move_cancel(server, destination, find_data):
    """movescu cancels after the first response: of 1,500 instances, the adapter sends fewer
    and ends with the Cancel status (the same loop serves C-GET)."""
    from tests.helpers import stow

    base, port, _ = server
    parts = [
        instance(uid(66, 1), uid(66, 2), uid(66, 3, i), PatientID="MOVEMANY") for i in range(1500)
    ]
    with httpx.Client(base_url=base, timeout=120) as http:
        assert stow(http, *parts).status_code == 200
    before = len(list(destination[1].iterdir()))
    done = dcmtk(
        "movescu",
        "-v",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        "DICOMHUB",
        "-aem",
        "DEST",
        "--cancel",
        "1",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={uid(66, 1)}",
        "127.0.0.1",
        str(port),
    )
    assert "Cancel" in done.stderr, done.stderr[-2000:]
    assert len(list(destination[1].iterdir())) - before < 1500


def test_the_association_limit(tmp_path):
    """With --dimse-max-associations 1, a second association is rejected while one is open
    (and the rejection is audited); a connection that never associates holds the slot only
    until the ACSE timeout (10 s, shorter than --dimse-timeout)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    with running_server(
        tmp_path, dimse_port=str(port), dimse_max_associations="1", dimse_timeout="30"
    ) as (base, _):
        ae = AE(ae_title="FIRST")
        ae.add_requested_context(Verification)
        deadline = time.monotonic() + 30
        while True:  # until the port is open (a bare TCP probe would hold the one slot)
            first = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
            if first.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert first.is_established
        try:
            second = dcmtk("echoscu", "-aet", "SECOND", "-aec", "DICOMHUB", "127.0.0.1", str(port))
            assert second.returncode != 0 and "reject" in second.stderr.lower(), second.stderr
        finally:
            first.release()
        third = dcmtk("echoscu", "-aet", "THIRD", "-aec", "DICOMHUB", "127.0.0.1", str(port))
        assert third.returncode == 0, third.stderr
        deadline = time.monotonic() + 10
        while True:
            entries = httpx.get(base + "/v2/audit", params={"principal": "SECOND"}).json()
            if entries or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [e["method"] for e in entries] == ["A-ASSOCIATE-RJ"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            time.sleep(0.5)
            held = dcmtk("echoscu", "-aet", "THIRD", "-aec", "DICOMHUB", "127.0.0.1", str(port))
            assert held.returncode != 0, "the idle connection holds the one slot"
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server
            assert time.monotonic() - started < 15
        time.sleep(0.5)
        after = dcmtk("echoscu", "-aet", "THIRD", "-aec", "DICOMHUB", "127.0.0.1", str(port))
        assert after.returncode == 0, after.stderr
