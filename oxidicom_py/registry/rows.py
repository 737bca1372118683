"""One row of ``pacsfiles_pacsfile``, as the receive path hands it to the registry.

Values are what the instance carried (after the reference's read rules: first value,
trimmed, NUL removed); the registry, not the receive path, fits them to the CUBE v5
column limits (truncation, date parsing) so that one odd value never fails a batch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


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
