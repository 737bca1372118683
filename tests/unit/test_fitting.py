"""fit_row's fast path (a row already acceptable) must give exactly what the careful path gives."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.fitting import _fit_row_slowly, fit_row

LOG = logging.getLogger("tests.fitting")
FULLWIDTH_DATE = "".join(chr(0xFF10 + int(d)) for d in "20090701")

_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
texts = st.one_of(  # mostly acceptable values, so that the fast path is taken often
    _ascii,
    _ascii,
    _ascii,
    _ascii,
    st.none(),
    st.text(max_size=12),  # any character: NUL, surrogates, non-ASCII
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=60, max_size=500),  # too long
)
birth_dates = st.one_of(
    st.none(),
    st.none(),
    st.from_regex(r"[0-9]{8}", fullmatch=True),
    # fullwidth digits: str.isdigit() says yes, the careful path's ASCII pattern says no
    st.sampled_from(["2009-07-01", "20090231", " 20090701", "2009070", "", "19000101\x00", FULLWIDTH_DATE]),
)


@settings(max_examples=300)
@given(
    fname=st.one_of(_ascii.filter(bool), st.text(min_size=1, max_size=600)),
    patient=texts,
    name=texts,
    study=texts,
    series=texts,
    description=texts,
    sex=texts,
    age=st.one_of(st.none(), st.integers(-(2**40), 2**40), st.integers(0, 150)),
    birth=birth_dates,
    pacs=st.sampled_from(["ORTHANC", "org.fnndsc.oxidicom", "A" * 30, "BAD\x00AE", "ÜBER"]),
    when=st.sampled_from([dt.date(2013, 3, 8), dt.datetime(2013, 3, 8, 12, 0)]),
)
def test_the_fast_path_is_the_careful_one(
    fname: str,
    patient: str | None,
    name: str | None,
    study: str | None,
    series: str | None,
    description: str | None,
    sex: str | None,
    age: int | None,
    birth: str | None,
    pacs: str,
    when: dt.date,
) -> None:
    row = PacsFileRow(
        fname=fname,
        pacs_identifier=pacs,
        PatientID=patient or "",
        StudyDate=when,
        StudyInstanceUID=study or "",
        SeriesInstanceUID=series or "",
        PatientName=name,  # type: ignore[arg-type]
        PatientBirthDate=birth,
        PatientAge=age,
        PatientSex=sex,  # type: ignore[arg-type]
        SeriesDescription=description,  # type: ignore[arg-type]
    )
    assert fit_row(row, LOG) == _fit_row_slowly(row, LOG)


def test_a_typical_row_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from oxidicom_py.registry import fitting

    def slow(row: PacsFileRow, logger: logging.Logger) -> None:
        raise AssertionError("the careful path ran for an acceptable row")

    monkeypatch.setattr(fitting, "_fit_row_slowly", slow)
    row = PacsFileRow(
        fname="SERVICES/PACS/ORTHANC/a/b/c/0001-1.2.3.dcm",
        pacs_identifier="ORTHANC",
        PatientID="1449c1d",
        StudyDate=dt.date(2013, 3, 8),
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4",
        PatientName="anonymized",
        PatientBirthDate="20090701",
        PatientAge=5000,
        PatientSex="M",
        Modality="MR",
    )
    fitted = fitting.fit_row(row, LOG)
    assert fitted.PatientBirthDate == dt.date(2009, 7, 1) and fitted.fname == row.fname


def test_fullwidth_digits_are_not_a_birth_date() -> None:
    """str.isdigit() accepts them; the careful path's ASCII pattern does not (NULL, with a warning)."""
    row = PacsFileRow(
        fname="f.dcm",
        pacs_identifier="ORTHANC",
        PatientID="P",
        StudyDate=dt.date(2013, 3, 8),
        StudyInstanceUID="1.2",
        SeriesInstanceUID="1.2.3",
        PatientBirthDate=FULLWIDTH_DATE,
    )
    assert fit_row(row, LOG).PatientBirthDate is None
