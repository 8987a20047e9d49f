"""End to end: `dicomhub serve` as a process, driven by dicomweb-client over a real socket.

Every storable file among pydicom's bundled test data is stored, retrieved byte-equal, its
metadata compared with pydicom's own DICOM JSON (BulkDataURIs resolved and compared with the
inline value), its frames compared with pydicom's frame extraction; then deleted, with the
change feed checked after each step.
"""

from __future__ import annotations

import base64
import warnings

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length
from requests.exceptions import HTTPError

from tests.dicomfiles import read, storable_files

FILES = storable_files()


@pytest.fixture(scope="module")
def dw(server):
    return DICOMwebClient(server["url"] + "/v2")


@pytest.fixture(scope="module")
def stored(dw, server):
    """Store every file; returns {sop: (TestFile, warnings)}."""
    out = {}
    for f in FILES:
        r = httpx.post(
            server["url"] + "/v2/studies",
            content=f.data,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
            timeout=60,
        )
        assert r.status_code in (200, 202), (f.name, r.status_code, r.text)
        item = r.json()["00081199"]["Value"][0]
        assert item["00081155"]["Value"] == [f.sop]
        dropped = [c["00000902"]["Value"][0] for c in item.get("00741048", {}).get("Value", [])]
        # Values are dropped for being invalid, never because the encoder tripped on them.
        assert not [d for d in dropped if "Error)" in d], (f.name, dropped)
        out[f.sop] = (f, dropped)
    return out


def test_store_through_dicomweb_client(dw):
    f = FILES[0]
    ds = f.dataset()
    ds.SOPInstanceUID = ds.SOPInstanceUID[:50] + ".77"
    result = dw.store_instances([ds])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(HTTPError) as err:  # stored already: 409 with FailureReason 45070
        dw.store_instances([ds])
    assert err.value.response.status_code == 409
    assert err.value.response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [45070]


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_round_trip(dw, server, stored, f):
    # Retrieved byte for byte, as single part and as multipart (dicomweb-client).
    url = f"{server['url']}/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}"
    single = httpx.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 200
    assert single.content == f.data
    ds = dw.retrieve_instance(f.study, f.series, f.sop)
    assert ds.SOPInstanceUID == f.sop

    # Metadata equals pydicom's DICOM JSON, apart from BulkDataURIs (resolved and compared).
    ours = dw.retrieve_instance_metadata(f.study, f.series, f.sop)
    theirs = _pydicom_json(f.data)
    dropped = stored[f.sop][1]
    _compare(dw, ours, theirs, "", dropped)

    # Frames equal pydicom's own frame extraction.
    expected = _pydicom_frames(f.data)
    if expected:
        numbers = sorted({1, len(expected)})
        frames = dw.retrieve_instance_frames(f.study, f.series, f.sop, frame_numbers=numbers)
        assert [bytes(x) for x in frames] == [expected[n - 1] for n in numbers]


def _pydicom_json(data: bytes) -> dict:
    ds = read(data)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in ds.keys():
            try:  # an element pydicom cannot encode must be one we report as dropped
                out[f"{tag:08X}"] = ds[tag].to_json_dict(None, 1 << 40)
            except ValueError:
                pass
    return out


def _compare(dw, ours: dict, theirs: dict, prefix: str, dropped: list[str]) -> None:
    for key in sorted(set(ours) | set(theirs)):
        if key.endswith("0000"):  # group lengths are not part of the JSON model
            continue
        path = prefix + key
        where = f"({path[:4]},{path[4:8]}){path[8:]}"
        if key not in ours:
            assert any(where in d for d in dropped), f"{path} missing and not reported"
            continue
        mine, other = ours[key], theirs[key]
        assert mine["vr"] == other["vr"] or "UN" in (mine["vr"], other["vr"]), path
        if "BulkDataURI" in mine:
            if key == "7FE00010" and prefix == "" and "InlineBinary" in other:
                value = base64.b64decode(other["InlineBinary"])
                if value[:4] == b"\xfe\xff\x00\xe0":  # encapsulated: compared as frames
                    continue
            parts = list(dw.retrieve_bulkdata(mine["BulkDataURI"]))
            assert b"".join(parts) == base64.b64decode(other["InlineBinary"]), path
        elif mine["vr"] == "SQ":
            items, other_items = mine.get("Value", []), other.get("Value", [])
            assert len(items) == len(other_items), path
            for i, (a, b) in enumerate(zip(items, other_items, strict=True)):
                _compare(dw, a, b, f"{path}/{i}/", dropped)
        else:
            assert mine == other, path


def _pydicom_frames(data: bytes) -> list[bytes]:
    ds = read(data)
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99":
        return []
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except ValueError:  # badVR.dcm: an unreadable NumberOfFrames counts as one frame
        count = 1
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    try:
        size = get_expected_length(ds, unit="bytes") // count
    except (TypeError, ValueError):  # pydicom cannot size frames with unreadable attributes
        return []
    if ds.get("BitsAllocated") == 1:
        return []  # covered by the unit test of bit-packed frames
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


def test_delete_and_change_feed(dw, server, stored):
    base = server["url"] + "/v2"
    f = FILES[-1]
    latest = httpx.get(base + "/changefeed/latest").json()
    assert latest["action"] == "create"
    dw.delete_instance(f.study, f.series, f.sop)
    with pytest.raises(HTTPError) as err:
        dw.retrieve_instance(f.study, f.series, f.sop)
    assert err.value.response.status_code == 404
    entry = httpx.get(base + "/changefeed/latest").json()
    assert (entry["action"], entry["state"], entry["sopInstanceUid"]) == (
        "delete",
        "deleted",
        f.sop,
    )
    assert entry["metadata"] is None
    assert entry["sequence"] == latest["sequence"] + 1
    # the create entry of that instance now says deleted
    v1, offset = [], 0
    while True:  # v1 pages by sequence: offset is the last sequence seen
        page = httpx.get(
            server["url"] + "/v1/changefeed",
            params={"offset": offset, "limit": 100, "includeMetadata": "false"},
        ).json()
        if not page:
            break
        assert all("metadata" not in e for e in page)
        v1 += page
        offset = page[-1]["sequence"]
    assert [e["sequence"] for e in v1] == list(range(1, len(v1) + 1))
    created = {e["sopInstanceUid"] for e in v1 if e["action"] == "create"}
    assert {f.sop for f in FILES} <= created  # every store left its entry
    assert len([e for e in v1 if e["action"] == "create"]) == len(FILES) + 1
    creates = [e for e in v1 if e["sopInstanceUid"] == f.sop and e["action"] == "create"]
    assert creates and all(e["state"] == "deleted" for e in creates)
    # stored again: the old entries become replaced, the new one current
    r = httpx.post(base + "/studies", content=f.data, headers={"Content-Type": "application/dicom"})
    assert r.status_code in (200, 202)
    feed = httpx.get(base + "/changefeed", params={"offset": 0, "limit": 200}).json()
    mine = [e["state"] for e in feed if e["sopInstanceUid"] == f.sop]
    assert mine[-3:] == ["replaced", "replaced", "current"]
