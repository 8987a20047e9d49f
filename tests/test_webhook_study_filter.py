"""A subscription's QIDO-style study filter (``filter.study``, conformance 7.9), against
`dicomhub serve` (SQLite and PostgreSQL) and a real receiver: only the events of studies a
QIDO-RS study search with the filter's parameters finds are delivered (wildcards, names, a
modality in the study, date ranges, UID lists); a bad filter is 400 with a clear message."""

from __future__ import annotations

import time

import httpx

from tests.synthetic import instance, uid
from tests.test_webhooks import (  # noqa: F401
    CREATED,
    DELETED,
    STABLE,
    receiver,
    server,
    server_index,
    stow,
    subscribe,
)

CHEST = {
    "StudyDescription": "*CHEST*",
    "ReferringPhysicianName": "SMITH^*",
    "ModalitiesInStudy": "CT",
    "StudyDate": "20240101-20241231",
}


def study(n: int, **attributes) -> bytes:
    fields = {
        "StudyDescription": "CT CHEST W CONTRAST",
        "ReferringPhysicianName": "Smith^John",
        "StudyDate": "20240615",
        **attributes,
    }
    return instance(uid(n), uid(n, 1), uid(n, 1, 0), **fields)


def test_only_the_studies_the_qido_filter_finds_are_delivered(
    tmp_path,
    server_index,  # noqa: F811
    receiver,  # noqa: F811
):
    with server(tmp_path, server_index, webhook_study_stable_after="1") as (url, _):
        sub = subscribe(
            url, receiver, eventTypes=[CREATED, DELETED, STABLE], filter={"study": CHEST}
        )
        assert sub["filter"] == {"study": CHEST}
        assert httpx.get(f"{url}/v2/subscriptions/{sub['id']}").json()["filter"] == sub["filter"]
        stow(
            url,
            study(241),  # matches
            study(242, Modality="MR"),
            study(243, StudyDescription="HEAD"),
            study(244, ReferringPhysicianName="Jones^Ann"),
            study(245, StudyDate="20230615"),
            study(246, StudyDescription="XR CHEST PA"),  # matches too
        )
        events = receiver.wait_for(4)
        time.sleep(2)
        events = receiver.events()
        assert sorted((e["type"], e["data"]["imageStudyInstanceUid"]) for e in events) == [
            (CREATED, uid(241)),
            (CREATED, uid(246)),
            (STABLE, uid(241)),
            (STABLE, uid(246)),
        ]
        # a UID list; the deletion of a whole study passes any filter (its attributes are
        # gone: a receiver hears of the deletion of anything it may have been told of)
        r = httpx.patch(
            f"{url}/v2/subscriptions/{sub['id']}",
            json={"filter": {"study": {"StudyInstanceUID": f"{uid(242)},{uid(243)}"}}},
        )
        assert r.status_code == 200, r.text
        stow(
            url,
            study(242, SOPInstanceUID=uid(242, 1, 1)),
            study(244, SOPInstanceUID=uid(244, 1, 1)),
        )
        assert httpx.delete(f"{url}/v2/studies/{uid(245)}").status_code == 204
        receiver.wait_for(7)
        time.sleep(2)
        assert sorted(
            (e["type"], e["data"]["imageStudyInstanceUid"]) for e in receiver.events()[4:]
        ) == [(CREATED, uid(242)), (DELETED, uid(245)), (STABLE, uid(242))]


def test_bad_study_filters_are_400_and_make_nothing(tmp_path, server_index):  # noqa: F811
    with server(tmp_path, server_index) as (url, _):
        for bad, says in (
            ({"study": "CT"}, "filter study is an object"),
            ({"study": {}}, "filter study is an object"),
            ({"study": {"Colour": "red"}}, "Colour"),
            ({"study": {"SOPInstanceUID": "1.2.3"}}, "not a matching key at this level"),
            ({"study": {"StudyDate": "2024-13-01"}}, "is not a date"),
            ({"study": {"StudyInstanceUID": "not-a-uid"}}, "is not a UID"),
            ({"study": {"StudyDescription": 3}}, "a non-empty QIDO value"),
            ({"study": {"limit": "1"}}, "no matching attribute"),
            ({"series": {"Modality": "CT"}}, "unknown filter"),
        ):
            r = httpx.post(
                f"{url}/v2/subscriptions", json={"url": "http://127.0.0.1:9/x", "filter": bad}
            )
            assert r.status_code == 400, (bad, r.text)
            assert says in r.json()["detail"], (bad, r.text)
        assert httpx.get(f"{url}/v2/subscriptions").json() == []
