"""StudyDate / PatientBirthDate parsing (spec section 2.5)."""

import datetime
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxidicom_py.storage.dates import parse_optional_date, parse_study_date

PARSERS = [parse_study_date, parse_optional_date]
Parser = Callable[[str | None], datetime.date | None]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20130308", datetime.date(2013, 3, 8)),
        ("2013-03-08", datetime.date(2013, 3, 8)),
        ("20090701", datetime.date(2009, 7, 1)),
        ("19660101", datetime.date(1966, 1, 1)),
        ("1966-01-01", datetime.date(1966, 1, 1)),
        ("20000229", datetime.date(2000, 2, 29)),
        ("2024-02-29", datetime.date(2024, 2, 29)),
        ("00010101", datetime.date(1, 1, 1)),
        ("99991231", datetime.date(9999, 12, 31)),
    ],
)
def test_valid_dates(parse: Parser, value: str, expected: datetime.date) -> None:
    assert parse(value) == expected


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " ",
        "2013030",
        "201303080",
        "2013-0308",
        "201303-08",
        "2013-3-8",
        "2013/03/08",
        "2013.03.08",
        "20130230",
        "19000229",
        "20131301",
        "20130001",
        "20130100",
        "00000101",
        " 20130308",
        "20130308 ",
        "20130308\0",
        "2013-03-08\n",
        "20130308T",
        "+20130308",
        "-2013-03-08",
        "\uff12\uff10\uff11\uff13\uff10\uff13\uff10\uff18",  # fullwidth digits
        "\u0662\u0660\u0661\u0663\u0660\u0663\u0660\u0668",  # Arabic-Indic digits
        "2013030808",
        "20130308\\20130309",
        "2013-03-08T00:00",
        "Mar 8 2013",
    ],
)
def test_invalid_dates(parse: Parser, value: str | None) -> None:
    assert parse(value) is None


@given(st.dates(min_value=datetime.date(1, 1, 1)))
def test_round_trip(date: datetime.date) -> None:
    for parse in PARSERS:
        assert parse(f"{date.year:04d}{date.month:02d}{date.day:02d}") == date
        assert parse(f"{date.year:04d}-{date.month:02d}-{date.day:02d}") == date


@given(st.text(max_size=12))
def test_never_raises(value: str) -> None:
    for parse in PARSERS:
        result = parse(value)
        assert result is None or isinstance(result, datetime.date)
