"""The Modality Worklist mapping (dicom/worklist.py) as pure functions: the workitem search of a
worklist identifier (dates, times, time zones), and the worklist item of a workitem."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomhub.dicom import worklist
from dicomhub.dicom.workitem_query import parse
from dicomhub.errors import InvalidRequest

START = "ScheduledProcedureStepStartDateTime"


def identifier(offset: str | None = None, **step) -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    if offset:
        ds.TimezoneOffsetFromUTC = offset
    item = Dataset()
    for keyword, value in step.items():
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def start_of(query: worklist.WorklistQuery) -> str | None:
    return dict(query.params).get(START)


@pytest.mark.parametrize(
    "step, offset, start, times",
    [
        ({"ScheduledProcedureStepStartDate": "20300301"}, None, "20300301", None),
        ({"ScheduledProcedureStepStartDate": "20300301"}, "+0100", "20300301+0100", None),
        (
            {"ScheduledProcedureStepStartDate": "20300301-20300302"},
            "-0500",
            "20300301-0500-20300302-0500",
            None,
        ),
        ({"ScheduledProcedureStepStartDate": "-20300301"}, None, "-20300301", None),
        ({"ScheduledProcedureStepStartDate": "20300301-"}, None, "20300301-", None),
        (
            {
                "ScheduledProcedureStepStartDate": "20300301",
                "ScheduledProcedureStepStartTime": "08",
            },
            None,
            "2030030108-2030030108",
            None,
        ),
        (
            {
                "ScheduledProcedureStepStartDate": "20300301",
                "ScheduledProcedureStepStartTime": "-1200",
            },
            None,
            "20300301-203003011200",
            None,
        ),
        (
            {"ScheduledProcedureStepStartTime": "0800-1000"},
            None,
            None,
            ("080000.000000", "100059.999999"),
        ),
        (
            {
                "ScheduledProcedureStepStartDate": "20300301-20300302",
                "ScheduledProcedureStepStartTime": "12",
            },
            None,
            "20300301-20300302",
            ("120000.000000", "125959.999999"),
        ),
    ],
)
def test_dates_and_times(step, offset, start, times):
    query = worklist.query(identifier(offset, **step))
    assert (start_of(query), query.times) == (start, times)
    parse(query.params)  # the workitem search takes it


@pytest.mark.parametrize(
    "step",
    [
        {"ScheduledProcedureStepStartDate": "2030*"},
        {"ScheduledProcedureStepStartTime": "08-09-10"},
        {"ScheduledProcedureStepStartTime": "8"},
    ],
)
def test_malformed_dates_and_times_are_refused(step):
    with pytest.raises(InvalidRequest):
        worklist.query(identifier(**step))


def test_one_step_item_at_most():
    ds = identifier()
    ds.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(InvalidRequest):
        worklist.query(ds)


def test_time_of_day_is_the_wall_clock():
    item = {"00404005": {"vr": "DT", "Value": ["20300301233000-0500"]}}
    assert worklist.in_times(item, ("230000.000000", "235959.999999"))
    assert not worklist.in_times(item, ("040000.000000", "045959.999999"))
    assert not worklist.in_times({}, ("000000.000000", "235959.999999"))


def _workitem(**extra) -> dict:
    return {
        "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
        "0040A370": {
            "vr": "SQ",
            "Value": [
                {"00080050": {"vr": "SH", "Value": ["ACC-1"]}},
                {
                    "00080050": {"vr": "SH", "Value": ["ACC-2"]},
                    "00321060": {"vr": "LO", "Value": ["Second"]},
                },
            ],
        },
        **extra,
    }


def test_the_request_item_reported_is_the_one_matched():
    ds = Dataset()
    ds.AccessionNumber = "ACC-2"
    ds.RequestedProcedureDescription = ""
    found = worklist.response(ds, _workitem())
    assert (found.AccessionNumber, found.RequestedProcedureDescription) == ("ACC-2", "Second")
    ds.AccessionNumber = ""
    assert worklist.response(ds, _workitem()).AccessionNumber == "ACC-1"


def test_scheduled_procedure_step_id():
    ds = identifier(ScheduledProcedureStepID="")
    made = worklist.response(ds, _workitem()).ScheduledProcedureStepSequence[0]
    assert made.ScheduledProcedureStepID == worklist.step_id("1.2.3.4")
    assert len(made.ScheduledProcedureStepID) == 16
    own = _workitem(**{"00400009": {"vr": "SH", "Value": ["SPS-7"]}})
    step = worklist.response(ds, own).ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepID == "SPS-7"


def test_keys_that_do_not_filter():
    ds = identifier(ScheduledProcedureStepLocation="ROOM 1")
    ds.PatientBirthDate = "19700101"
    assert worklist.query(ds).unsupported == (
        "PatientBirthDate",
        "ScheduledProcedureStepSequence.ScheduledProcedureStepLocation",
    )
