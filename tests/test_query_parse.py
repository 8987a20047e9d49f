"""The pure query model: parsing QIDO-RS parameters, normalising values, choosing result parts."""

from __future__ import annotations

import pytest

from dicomhub.dicom import qido_results
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import ALL, Match, parse_query
from dicomhub.errors import InvalidRequest


def only(params: str, level: Level = Level.INSTANCE, **kwargs):
    query = parse_query(_pairs(params), level, **kwargs)
    assert len(query.conditions) == 1, query.conditions
    return query.conditions[0]


def _pairs(params: str) -> list[tuple[str, str]]:
    return [tuple(p.split("=", 1)) for p in params.split("&") if p]  # type: ignore[misc]


# (parameter, expected alternatives): each matching kind for each kind of key
MATCHING = [
    ("PatientID=P1", [Match("eq", "P1")]),
    ("PatientID=P1\\P2", [Match("eq", "P1"), Match("eq", "P2")]),
    ("PatientID=P*", [Match("wildcard", "P*")]),
    ("PatientID=?1[x]", [Match("wildcard", "?1[[]x]")]),
    ("PatientID=a,b", [Match("eq", "a,b")]),  # commas are data outside UIDs and codes
    ("Modality=CT,MR", [Match("eq", "CT"), Match("eq", "MR")]),
    ("ModalitiesInStudy=C?", [Match("wildcard", "C?")]),
    ("StudyInstanceUID=1.2.3\\1.2.4", [Match("eq", "1.2.3"), Match("eq", "1.2.4")]),
    ("SOPClassUID=1.2.3,1.2.4", [Match("eq", "1.2.3"), Match("eq", "1.2.4")]),
    ("PatientName=Müller^JÜRGEN", [Match("eq", "muller^jurgen")]),
    ("PatientName=DOE*", [Match("wildcard", "doe*")]),
    ("PatientName=Doe^John^^^", [Match("eq", "doe^john")]),
    ("ReferringPhysicianName=Ñoño", [Match("eq", "nono")]),
    ("StudyDate=20200105", [Match("eq", "20200105")]),
    ("StudyDate=20200101-20201231", [Match("range", ("20200101", "20201231"))]),
    ("StudyDate=-20201231", [Match("range", (None, "20201231"))]),
    ("StudyDate=20200101-", [Match("range", ("20200101", None))]),
    ("PatientBirthDate=19800101\\19900101", [Match("eq", "19800101"), Match("eq", "19900101")]),
    ("StudyTime=10", [Match("range", ("100000.000000", "105959.999999"))]),
    ("StudyTime=101530.5", [Match("range", ("101530.500000", "101530.599999"))]),
    ("StudyTime=101530.123456", [Match("eq", "101530.123456")]),
    ("StudyTime=0800-1200", [Match("range", ("080000.000000", "120059.999999"))]),
    ("StudyTime=10:15:30", [Match("range", ("101530.000000", "101530.999999"))]),
    ("PerformedProcedureStepStartTime=-0930", [Match("range", (None, "093059.999999"))]),
    ("SeriesNumber=7", [Match("eq", 7)]),
    ("InstanceNumber=+3\\4", [Match("eq", 3), Match("eq", 4)]),
    (
        "AcquisitionDateTime=20200105101500+0100",
        [Match("range", ("20200105091500.000000", "20200105091500.999999"))],
    ),
    (
        "AcquisitionDateTime=2021",
        [Match("range", ("20210101000000.000000", "20211231235959.999999"))],
    ),
    (
        "AcquisitionDateTime=202001051000-0500-202001051200-0500",
        [Match("range", ("20200105150000.000000", "20200105170059.999999"))],
    ),
    ("AcquisitionDateTime=202002-", [Match("range", ("20200201000000.000000", None))]),
    ("RequestAttributesSequence.ScheduledProcedureStepID=S*", [Match("wildcard", "S*")]),
    ("00400275.00401001=R1", [Match("eq", "R1")]),
]


@pytest.mark.parametrize("param,expected", MATCHING)
def test_matching_kinds(param, expected):
    assert list(only(param).alternatives) == expected


def test_fuzzy_person_names_match_word_prefixes():
    condition = only("PatientName=Joh  DO&fuzzymatching=true")
    assert condition.alternatives == (Match("words", ("do", "joh")),)
    # a wildcard value keeps wildcard matching; other keys are not fuzzy
    assert only("PatientName=jo*&fuzzymatching=true").alternatives == (Match("wildcard", "jo*"),)
    assert only("PatientID=jo&fuzzymatching=true").alternatives == (Match("eq", "jo"),)


@pytest.mark.parametrize(
    "params,tag",
    [
        ("PatientName=", 0x00100010),
        ("PatientName=*", 0x00100010),
        ("StudyDate=", 0x00080020),
        ("RequestAttributesSequence.RequestedProcedureID=", 0x00400275),
    ],
)
def test_universal_matching_filters_nothing_but_returns_the_attribute(params, tag):
    query = parse_query(_pairs(params), Level.SERIES)
    assert query.conditions == []
    assert query.includes == {tag}


@pytest.mark.parametrize(
    "params,named",
    [
        ("StudyDate=2020", "StudyDate"),
        ("StudyDate=20201301", "StudyDate"),
        ("StudyDate=20210101-20200101", "StudyDate"),
        ("StudyDate=-", "StudyDate"),
        ("StudyTime=25", "StudyTime"),
        ("StudyTime=1261", "StudyTime"),
        ("AcquisitionDateTime=2020-13", "AcquisitionDateTime"),
        ("SeriesNumber=one", "SeriesNumber"),
        ("StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("SOPInstanceUID=1..2", "SOPInstanceUID"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("orderby=PatientSex", "orderby"),
        ("orderby=ModalitiesInStudy", "orderby"),
        ("PatientID=1&00100020=2", "00100020"),
    ],
)
def test_malformed_values_are_rejected_naming_the_parameter(params, named):
    with pytest.raises(InvalidRequest) as info:
        parse_query(_pairs(params), Level.INSTANCE)
    assert named in str(info.value)


def test_unknown_and_unsupported_keys_are_ignored_or_strict():
    params = _pairs("foo=1&_=123&SeriesDescription=x&Modality=CT&PatientID=P1&includefield=Nope")
    query = parse_query(params, Level.STUDY)
    assert sorted(query.ignored) == sorted(
        ["foo", "_", "SeriesDescription", "Modality", "includefield=Nope"]
    )
    assert [c.key.keyword for c in query.conditions] == ["PatientID"]
    with pytest.raises(InvalidRequest, match="foo"):
        parse_query(params, Level.STUDY, strict=True)


def test_keys_by_keyword_in_any_case_or_by_tag():
    for name in ("patientid", "PATIENTID", "00100020", "0010002o".replace("o", "0")):
        assert only(f"{name}=X").key.keyword == "PatientID"


def test_includefield_paging_and_order():
    query = parse_query(
        _pairs("includefield=00081030,Modality&includefield=patientage&limit=5&offset=10"),
        Level.STUDY,
    )
    assert query.includes == {0x00081030, 0x00080060, 0x00101010}
    assert (query.limit, query.offset, query.capped) == (5, 10, False)
    assert parse_query(_pairs("includefield=all&includefield=Rows"), Level.STUDY).includes == ALL
    capped = parse_query(_pairs("limit=5000"), Level.STUDY, max_limit=1000)
    assert (capped.limit, capped.capped) == (1000, True)
    assert parse_query([], Level.STUDY).limit == 100
    order = parse_query(_pairs("orderby=-StudyDate,PatientName"), Level.SERIES).order
    assert [(k.keyword, desc) for k, desc in order] == [("StudyDate", True), ("PatientName", False)]


def test_person_name_normalisation_and_words():
    assert sk.person_name("Müller^Jürgen^^^=ミュラー") == "muller^jurgen"
    assert sk.person_name("=山田^太郎") == "山田^太郎"
    assert sk.name_words("O'Brien^Mary Ann") == {"o'brien", "mary", "ann"}


@pytest.mark.parametrize(
    "value,offset,expected",
    [
        ("20200105101500", None, ("20200105101500.000000", "20200105101500.999999")),
        ("20200105101500", "+0100", ("20200105091500.000000", "20200105091500.999999")),
        ("20200105101500-0000", "+0100", ("20200105101500.000000", "20200105101500.999999")),
        ("202002", None, ("20200201000000.000000", "20200229235959.999999")),
        ("20201231233000-0100", None, ("20210101003000.000000", "20210101003000.999999")),
        ("2020023", None, None),
        ("20200230", None, None),
    ],
)
def test_datetime_bounds(value, offset, expected):
    assert sk.datetime_bounds(value, offset) == expected


def test_result_parts_follow_the_request():
    def needs(params, level, **scope):
        return qido_results.needs(parse_query(_pairs(params), level, **scope))

    assert needs("", Level.STUDY) == {"modalities"}
    assert needs("includefield=SOPClassesInStudy", Level.STUDY) == {"modalities", "sop_classes"}
    assert needs("includefield=SeriesDescription", Level.STUDY) == {"modalities", "series_doc"}
    assert needs("includefield=ImageType", Level.SERIES, study="1.2") == {"metadata"}
    assert needs("", Level.INSTANCE, study="1.2", series="1.3") == set()
    assert needs("includefield=all", Level.INSTANCE, study="1.2") == {"metadata"}
