"""Storage Commitment Push Model (PS3.4 J.3) on a running server, with pynetdicom as the
requesting SCU: the report on the request's association, on a new association to the
requester's peer entry, or not delivered; every refusal status; the audit entries. Orthanc as
the requester is in test_dimse.py."""

from __future__ import annotations

import queue

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from tests.conftest import free_port, running_server
from tests.helpers import MULTIPART, multipart
from tests.synthetic import instance, uid

STUDY, SERIES = uid(70, 1), uid(70, 2)
SOPS = [uid(70, 3, n) for n in range(3)]
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


@pytest.fixture(scope="module")
def reports():
    """The requester MODALITY's own SCP, where reports on a new association arrive:
    (calling AE title, Event Type ID, Event Information) in a queue."""
    arrived: queue.Queue = queue.Queue()

    def on_report(event):
        arrived.put((event.assoc.requestor.ae_title, event.event_type, event.event_information))
        return 0x0000, None

    ae = AE(ae_title="MODALITY")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    scp = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    yield port, arrived
    scp.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, reports):
    port = free_port()
    data = tmp_path_factory.mktemp("commitment")
    with running_server(
        data,
        dimse_port=str(port),
        dimse_callers="MODALITY=store,KEEPER=store,VIEWER=find+retrieve",
        dimse_peers=f"MODALITY=127.0.0.1:{reports[0]}",
    ) as (base, _):
        body = multipart(*(instance(STUDY, SERIES, sop) for sop in SOPS))
        stored = httpx.post(base + "/v2/studies", content=body, headers={"Content-Type": MULTIPART})
        assert stored.status_code == 200, stored.text
        yield base, port


def request(transaction: str, references: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    info.ReferencedSOPSequence = []
    for sop_class, sop in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop
        info.ReferencedSOPSequence.append(item)
    return info


def ask(
    port: int,
    calling: str,
    info,
    action: int = 1,
    instance_uid: str = WELL_KNOWN,
    wait_for_report: bool = False,
):
    """Send the N-ACTION; its status, and the report when it came on the same association."""
    arrived: queue.Queue = queue.Queue()

    def on_report(event):
        arrived.put((event.event_type, event.event_information))
        return 0x0000, None

    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="DICOMHUB", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action, StorageCommitmentPushModel, instance_uid)
        report = arrived.get(timeout=30) if wait_for_report else None
    finally:
        assoc.release()
    return status.Status, report


def audit(base: str, principal: str, method: str) -> list[dict]:
    entries = httpx.get(base + "/v2/audit", params={"principal": principal}).json()
    return [e for e in entries if e["method"] == method]


def references(info: Dataset, keyword: str) -> list[tuple[str, str, int | None]]:
    return [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.get("FailureReason"))
        for i in info.get(keyword, [])
    ]


def test_the_report_comes_on_the_open_association(server):
    base, port = server
    asked = [(CT, SOPS[0]), (CT, SOPS[1]), (CT, uid(70, 9)), (MR, SOPS[2])]
    status, report = ask(port, "KEEPER", request(uid(70, 100), asked), wait_for_report=True)
    assert status == 0x0000
    event_type, info = report
    assert event_type == 2  # failures exist
    assert info.TransactionUID == uid(70, 100) and info.RetrieveAETitle == "DICOMHUB"
    assert references(info, "ReferencedSOPSequence") == [(CT, SOPS[0], None), (CT, SOPS[1], None)]
    assert references(info, "FailedSOPSequence") == [
        (CT, uid(70, 9), 0x0112),  # no such object instance
        (MR, SOPS[2], 0x0119),  # stored as CT: class/instance conflict
    ]
    [action] = audit(base, "KEEPER", "N-ACTION")
    assert action["status"] == 0 and action["action"] == "write"
    assert action["detail"] == {"transaction": uid(70, 100), "instances": 4}
    [sent] = audit(base, "KEEPER", "N-EVENT-REPORT")
    assert sent["status"] == 0
    assert sent["detail"]["committed"] == 2 and sent["detail"]["failed"] == 2
    assert sent["detail"]["via"] == "the request's association"


def test_the_report_comes_on_a_new_association_to_the_peer(server, reports):
    base, port = server
    _, arrived = reports
    asked = [(CT, sop) for sop in SOPS]
    assert ask(port, "MODALITY", request(uid(70, 101), asked))[0] == 0x0000
    caller, event_type, info = arrived.get(timeout=30)
    assert caller == "DICOMHUB" and event_type == 1  # all committed
    assert references(info, "ReferencedSOPSequence") == [(CT, sop, None) for sop in SOPS]
    assert "FailedSOPSequence" not in info and info.TransactionUID == uid(70, 101)
    [sent] = _eventually(lambda: audit(base, "MODALITY", "N-EVENT-REPORT"))
    assert sent["status"] == 0 and sent["detail"]["via"].startswith("a new association to")


def test_an_undeliverable_report_is_audited(server):
    """KEEPER is no peer, and releases its association at once."""
    base, port = server
    assert ask(port, "KEEPER", request(uid(70, 102), [(CT, SOPS[0])]))[0] == 0x0000
    lost = _eventually(
        lambda: [
            e
            for e in audit(base, "KEEPER", "N-EVENT-REPORT")
            if e["detail"]["transaction"] == uid(70, 102)
        ]
    )
    assert lost[0]["status"] == 0x0110 and lost[0]["detail"]["failed"] == 0
    assert lost[0]["detail"]["message"] == "the report was not delivered"


@pytest.mark.parametrize(
    ("calling", "info", "action", "instance_uid", "expected"),
    [
        ("VIEWER", "good", 1, WELL_KNOWN, 0x0124),  # without the store permission
        ("KEEPER", "good", 2, WELL_KNOWN, 0x0123),  # no such action type
        ("KEEPER", "good", 1, "1.2.3.4", 0x0117),  # not the well-known instance
        ("KEEPER", "no transaction", 1, WELL_KNOWN, 0x0115),
        ("KEEPER", "no references", 1, WELL_KNOWN, 0x0115),
        ("KEEPER", "bad uid", 1, WELL_KNOWN, 0x0115),
        ("KEEPER", None, 1, WELL_KNOWN, 0x0115),  # no Action Information at all
    ],
)
def test_refusals(server, calling, info, action, instance_uid, expected):
    base, port = server
    datasets = {
        "good": request(uid(70, 200), [(CT, SOPS[0])]),
        "no transaction": request("", [(CT, SOPS[0])]),
        "no references": request(uid(70, 201), []),
        "bad uid": request(uid(70, 202), [(CT, "1.2.abc")]),
        None: None,
    }
    before = len(audit(base, calling, "N-EVENT-REPORT"))
    assert ask(port, calling, datasets[info], action, instance_uid)[0] == expected
    assert audit(base, calling, "N-ACTION")[-1]["status"] == expected
    assert len(audit(base, calling, "N-EVENT-REPORT")) == before  # nothing follows a refusal


def _eventually(probe, timeout: float = 30):
    import time

    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)
    return found


def test_a_transaction_uid_is_never_reused(server):
    """PS3.4 J.3.2: a Transaction UID shall not be reused; the second request is refused
    (0x0110) and gets no report, on this node or any other (the record is in the index)."""
    base, port = server
    asked = request(uid(70, 300), [(CT, SOPS[0])])
    assert ask(port, "KEEPER", asked, wait_for_report=True)[0] == 0x0000
    status, report = ask(port, "KEEPER", asked)
    assert status == 0x0110 and report is None
    refused = [a for a in audit(base, "KEEPER", "N-ACTION") if a["status"] == 0x0110]
    assert refused[-1]["detail"]["message"] == "the Transaction UID was used before (PS3.4 J.3.2)"
    reports = audit(base, "KEEPER", "N-EVENT-REPORT")
    assert len([r for r in reports if r["detail"]["transaction"] == uid(70, 300)]) == 1


def test_a_pending_report_survives_a_killed_server(tmp_path):
    """The report to a peer is a job in the index: the server is killed before it could deliver
    (the peer was down); started again, with the peer up, it delivers the report."""
    port, peer_port = free_port(), free_port()
    settings = dict(
        dimse_port=str(port),
        dimse_callers="MODALITY=store",
        job_lease="2",
        dimse_peers=f"MODALITY=127.0.0.1:{peer_port}",
    )
    with running_server(tmp_path, **settings) as (base, proc):
        body = multipart(instance(STUDY, SERIES, SOPS[0]))
        stored = httpx.post(base + "/v2/studies", content=body, headers={"Content-Type": MULTIPART})
        assert stored.status_code == 200
        asked = request(uid(70, 400), [(CT, SOPS[0]), (CT, uid(70, 9))])
        assert ask(port, "MODALITY", asked)[0] == 0x0000
        _eventually(lambda: audit(base, "MODALITY", "N-EVENT-REPORT"))  # one failed attempt
        proc.kill()
        proc.wait(10)
    arrived: queue.Queue = queue.Queue()
    ae = AE(ae_title="MODALITY")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    handler = (evt.EVT_N_EVENT_REPORT, lambda e: arrived.put(e.event_information) or (0, None))
    scp = ae.start_server(("127.0.0.1", peer_port), block=False, evt_handlers=[handler])
    try:
        with running_server(tmp_path, **settings) as (base, _):
            info = arrived.get(timeout=60)
            assert info.TransactionUID == uid(70, 400)
            assert references(info, "ReferencedSOPSequence") == [(CT, SOPS[0], None)]
            assert references(info, "FailedSOPSequence") == [(CT, uid(70, 9), 0x0112)]
            delivered = _eventually(
                lambda: [e for e in audit(base, "MODALITY", "N-EVENT-REPORT") if e["status"] == 0]
            )
            assert delivered[0]["detail"]["transaction"] == uid(70, 400)
    finally:
        scp.shutdown()
