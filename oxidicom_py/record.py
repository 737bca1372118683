"""The record the receive path hands down: one row of ``pacsfiles_pacsfile`` and the column
limits beside it. Storage makes these, the registry stores them; neither imports the other.

Values are what the instance carried (after the reference's read rules: first value,
trimmed, NUL removed); the registry fits them to CUBE v5's column limits (truncation, date
parsing) so that one odd value never fails a batch. PatientID and the two UIDs are fitted
by storage already, because series bookkeeping keys its progress rows by them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

COLUMN_LIMITS: Final[dict[str, int]] = {
    "fname": 512,
    "PatientID": 100,
    "PatientName": 150,
    "PatientSex": 1,
    "AccessionNumber": 100,
    "Modality": 15,
    "ProtocolName": 64,
    "StudyInstanceUID": 100,
    "StudyDescription": 400,
    "SeriesInstanceUID": 100,
    "SeriesDescription": 400,
}
"""Maximum length (characters) of every ``varchar`` column of ``pacsfiles_pacsfile``."""


def clean_text(value: str | None) -> tuple[str, bool]:
    """Return ``value`` without NUL and lone surrogates, and whether surrogates were dropped."""
    if value is None:
        return "", False
    text = str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 round trip: a high+low surrogate pair becomes the real character, lone ones go.
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "ignore")
        return fixed, True
    return text, False


def fit_text(value: str | None, limit: int) -> str:
    """``value`` as a ``varchar(limit)`` column stores it: :func:`clean_text`, then cut to ``limit``."""
    return clean_text(value)[0][:limit]


@dataclass(frozen=True, slots=True)
class PacsFileRow:
    fname: str
    """Path relative to the files root (``SERVICES/PACS/...``); unique in the table."""
    pacs_identifier: str
    """Raw calling AE title of the association (``pacsfiles_pacs.identifier``)."""
    PatientID: str
    StudyDate: dt.date
    StudyInstanceUID: str
    SeriesInstanceUID: str
    PatientName: str = ""
    PatientBirthDate: str | None = None
    """Raw string as received; the registry parses it (invalid -> NULL with a warning)."""
    PatientAge: int | None = None
    """Days, already computed by :mod:`oxidicom_py.storage.patient_age`."""
    PatientSex: str = ""
    AccessionNumber: str = ""
    Modality: str = ""
    ProtocolName: str = ""
    StudyDescription: str = ""
    SeriesDescription: str = ""
    association: str = ""
    """Association ULID, for log lines only (not a column)."""


def log_fields(row: PacsFileRow) -> dict[str, str]:
    """What a log line may say about a row: UIDs and the file name, never the patient folder
    (``fname`` starts with PatientID, PatientName and PatientBirthDate)."""
    return {
        "association": row.association,
        "SeriesInstanceUID": row.SeriesInstanceUID,
        "file": row.fname.rsplit("/", 1)[-1],
    }
