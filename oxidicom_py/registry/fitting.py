"""Fit a :class:`PacsFileRow` to the CUBE v5 column types so that PostgreSQL cannot reject it.

The reference bound raw values and let one odd value (``PatientSex='MALE'``, an unparsable
birth date, an over-long description) fail the whole batch. Here every value is made
acceptable before any SQL is sent, and every change other than NUL removal is logged:

* text: NUL removed; surrogate pairs joined, lone surrogates dropped (they cannot be encoded
  to UTF-8); values longer than their ``varchar(n)`` truncated to ``n`` characters;
* ``PatientBirthDate``: ``YYYYMMDD`` or ``YYYY-MM-DD``, anything else becomes NULL;
* ``PatientAge``: clamped to the ``integer`` range;
* optional text columns are ``''`` when absent, never NULL.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Final, NamedTuple

from oxidicom_py.record import COLUMN_LIMITS, PacsFileRow, clean_text, log_fields
from oxidicom_py.registry.schema import INT4_MAX, INT4_MIN, PACS_IDENTIFIER_MAX

_DATE_RE: Final = re.compile(r"(\d{4})(\d{2})(\d{2})|(\d{4})-(\d{2})-(\d{2})", re.ASCII)


class DbRow(NamedTuple):
    """Values of one ``pacsfiles_pacsfile`` row, ready to bind (column order of the INSERT)."""

    fname: str
    PatientID: str
    PatientName: str
    StudyInstanceUID: str
    StudyDescription: str
    SeriesInstanceUID: str
    SeriesDescription: str
    PatientAge: int | None
    PatientBirthDate: dt.date | None
    PatientSex: str
    Modality: str
    ProtocolName: str
    StudyDate: dt.date
    AccessionNumber: str
    pacs_identifier: str


TEXT_COLUMNS: Final = tuple(name for name in DbRow._fields if name in COLUMN_LIMITS)


def parse_birth_date(raw: str | None) -> tuple[dt.date | None, bool]:
    """Parse ``YYYYMMDD`` / ``YYYY-MM-DD``; return ``(date or None, value_was_invalid)``."""
    if raw is None:
        return None, False
    text = str(raw).replace("\x00", "").strip()
    if not text:
        return None, False
    match = _DATE_RE.fullmatch(text)
    if match is None:
        return None, True
    year, month, day = (int(part) for part in match.groups() if part is not None)
    try:
        return dt.date(year, month, day), False
    except ValueError:
        return None, True


_TEXT_LIMITS: Final = tuple((name, COLUMN_LIMITS[name]) for name in TEXT_COLUMNS)


def fit_row(row: PacsFileRow, logger: logging.Logger) -> DbRow:
    """Make every value of ``row`` acceptable to its column, logging each change.

    Nearly every row is already acceptable (the receive path fits its key columns, and most
    values are short ASCII): that is checked first, once per value, without building anything."""
    values = [getattr(row, name) for name, _ in _TEXT_LIMITS]
    age, birth = row.PatientAge, row.PatientBirthDate
    if (
        all(
            type(v) is str and v.isascii() and "\x00" not in v and len(v) <= limit
            for v, (_, limit) in zip(values, _TEXT_LIMITS, strict=True)
        )
        and (age is None or INT4_MIN <= age <= INT4_MAX)
        and (birth is None or (type(birth) is str and len(birth) == 8 and birth.isascii() and birth.isdigit()))
        and type(row.StudyDate) is dt.date
        and row.pacs_identifier.isascii()
        and "\x00" not in row.pacs_identifier
        and len(row.pacs_identifier) <= PACS_IDENTIFIER_MAX
    ):
        birth_date = None
        if birth is not None:
            try:
                birth_date = dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
            except ValueError:
                return _fit_row_slowly(row, logger)
        return DbRow(
            *values[:7],  # fname .. SeriesDescription, in DbRow's order
            PatientAge=age,
            PatientBirthDate=birth_date,
            PatientSex=values[7],
            Modality=values[8],
            ProtocolName=values[9],
            StudyDate=row.StudyDate,
            AccessionNumber=values[10],
            pacs_identifier=row.pacs_identifier,
        )
    return _fit_row_slowly(row, logger)


def _fit_row_slowly(row: PacsFileRow, logger: logging.Logger) -> DbRow:

    def warn(message: str, **fields: object) -> None:
        logger.warning(message, extra={**log_fields(row), **fields})

    def text(column: str, value: str | None, limit: int) -> str:
        cleaned, had_surrogates = clean_text(value)
        if had_surrogates:
            warn("invalid characters removed", column=column)
        if len(cleaned) > limit:
            warn("value truncated to column length", column=column, original_length=len(cleaned), limit=limit)
            cleaned = cleaned[:limit]
        return cleaned

    birth_date, invalid = parse_birth_date(row.PatientBirthDate)
    if invalid:
        warn("invalid PatientBirthDate stored as NULL", column="PatientBirthDate", value=row.PatientBirthDate)

    age = row.PatientAge
    if age is not None and not INT4_MIN <= age <= INT4_MAX:
        warn("PatientAge out of integer range, clamped", column="PatientAge", value=age)
        age = max(INT4_MIN, min(INT4_MAX, age))

    study_date = row.StudyDate
    if isinstance(study_date, dt.datetime):
        study_date = study_date.date()

    values = {name: text(name, getattr(row, name), COLUMN_LIMITS[name]) for name in TEXT_COLUMNS}
    return DbRow(
        **values,
        PatientAge=age,
        PatientBirthDate=birth_date,
        StudyDate=study_date,
        pacs_identifier=text("pacs_identifier", row.pacs_identifier, PACS_IDENTIFIER_MAX),
    )
