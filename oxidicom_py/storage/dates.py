"""StudyDate and PatientBirthDate parsing (spec section 2.5).

Both accept exactly ``YYYYMMDD`` or ``YYYY-MM-DD``: ASCII digits, a valid
Gregorian date representable by :class:`datetime.date` (year 1 to 9999),
nothing before or after. Callers pass the already trimmed (``tts``) value.

The reference v2 accepts only ``YYYYMMDD`` for StudyDate (``YYYY-MM-DD`` came
in v3) and leaves PatientBirthDate to PostgreSQL's ``::date`` cast, where an
invalid value fails the whole batch; here both forms are accepted and
anything else becomes ``None`` instead.
"""

import datetime
import re

__all__ = ["parse_optional_date", "parse_study_date"]

_DATE = re.compile(r"([0-9]{4})(-?)([0-9]{2})\2([0-9]{2})")


def _parse_date(value: str | None) -> datetime.date | None:
    if value is None:
        return None
    match = _DATE.fullmatch(value)
    if match is None:
        return None
    year, _, month, day = match.groups()
    try:
        return datetime.date(int(year), int(month), int(day))
    except ValueError:  # month 13, 30 February, year 0, ...
        return None


def parse_study_date(value: str | None) -> datetime.date | None:
    """StudyDate (required tag): the date, or ``None`` if the instance must be rejected."""
    return _parse_date(value)


def parse_optional_date(value: str | None) -> datetime.date | None:
    """PatientBirthDate (optional): the date, or ``None`` for absent or unparsable values."""
    return _parse_date(value)
