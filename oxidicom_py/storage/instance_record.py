"""What the receiver reads from an instance and makes of it: the header values (the tag walker's,
or pydicom's when it could not), the checks a dataset must pass before it is stored, and its
row. The one way from a header to a record, for the receive path and for files read back alike.
"""

from __future__ import annotations

import datetime as dt
import logging

import pydicom

from oxidicom_py.dicom import dimse
from oxidicom_py.dicom.negotiation import AcceptedContext
from oxidicom_py.record import COLUMN_LIMITS, PacsFileRow, fit_text
from oxidicom_py.storage import header
from oxidicom_py.storage.dates import parse_study_date
from oxidicom_py.storage.naming import first_value, tts
from oxidicom_py.storage.patient_age import parse_patient_age

log = logging.getLogger("oxidicom_py.storage")

REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "StudyDate")
FNAME_MAX = COLUMN_LIMITS["fname"]


def check_required(values: dict[str, str | None]) -> tuple[str | None, dt.date | None]:
    """A reason to refuse the instance (or None) and its StudyDate."""
    for keyword in REQUIRED:
        if not tts(values.get(keyword)):
            return f"missing required tag {keyword}", None
    raw_date = tts(values["StudyDate"])
    study_date = parse_study_date(raw_date)
    if study_date is None:
        return f"invalid StudyDate {raw_date!r}", None
    return None, study_date


def command_refusal(command: dimse.Command, context: AcceptedContext) -> tuple[str, int] | None:
    """Why a C-STORE-RQ must be refused before its dataset is looked at (PS3.7 9.3.1.1: its
    Affected SOP Class UID is the abstract syntax of the presentation context it came on)."""
    if not command.affected_sop_instance:
        return "C-STORE-RQ without Affected SOP Instance UID", dimse.CANNOT_UNDERSTAND
    if command.affected_sop_class != context.abstract_syntax:
        return "Affected SOP Class UID is not the context's", dimse.CANNOT_UNDERSTAND
    return None


def dataset_mismatch(command: dimse.Command, values: dict[str, str | None]) -> tuple[str, int] | None:
    """Why the dataset is not the instance its C-STORE-RQ announced (PS3.4 B.2.3), or None.

    The file meta is built from the command's UIDs, so after this check it always agrees with
    the dataset. A dataset without SOPClassUID is taken as of the announced class."""
    sop_class = tts(values.get("SOPClassUID"))
    if sop_class and sop_class != command.affected_sop_class:
        return "Data Set does not match SOP Class", dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    if tts(values.get("SOPInstanceUID")) != command.affected_sop_instance:
        return "Affected SOP Instance UID is not the dataset's", dimse.CANNOT_UNDERSTAND
    return None


def make_row(path: str, aet: str, v: dict[str, str | None], study_date: dt.date, ulid: str) -> PacsFileRow:
    """The row of a stored instance. PatientID and the two UIDs are fitted to their columns here
    already, not only by the registry: series bookkeeping keys its progress rows (columns of the
    same sizes) by them, with SQL of its own. The other values are fitted by the registry."""

    def text(keyword: str) -> str:
        return tts(v.get(keyword)) or ""

    def key(keyword: str) -> str:
        raw = text(keyword)
        fitted = fit_text(raw, COLUMN_LIMITS[keyword])
        if fitted != raw:
            log.warning(
                "value truncated to column length",
                extra={
                    "association": ulid,
                    "file": path.rsplit("/", 1)[-1],  # not the folders: they hold patient values
                    "column": keyword,
                    "original_length": len(raw),
                },
            )
        return fitted

    return PacsFileRow(
        fname=path,
        pacs_identifier=aet,
        PatientID=key("PatientID"),
        StudyDate=study_date,
        StudyInstanceUID=key("StudyInstanceUID"),
        SeriesInstanceUID=key("SeriesInstanceUID"),
        PatientName=text("PatientName"),
        PatientBirthDate=tts(v.get("PatientBirthDate")),
        PatientAge=parse_patient_age(v.get("PatientAge")),
        PatientSex=text("PatientSex"),
        AccessionNumber=text("AccessionNumber"),
        Modality=text("Modality"),
        ProtocolName=text("ProtocolName"),
        StudyDescription=text("StudyDescription"),
        SeriesDescription=text("SeriesDescription"),
        association=ulid,
    )


def values_of(raw: dict[str, bytes] | None, path: str | None) -> dict[str, str | None]:
    """The header values the receiver reads (first value, trimmed), from the tag walker's raw
    elements, or from pydicom reading ``path`` when the walker could not: the one way from a
    header to a record, for the receive path and for files read back alike."""
    decoded = header.decode_values(raw) if raw is not None else values_with_pydicom(path)
    for keyword, value in decoded.items():  # both give None for absent or empty values
        if value is not None:
            decoded[keyword] = first_value(value)
    return decoded


def values_with_pydicom(path: str | None) -> dict[str, str | None]:
    """Slow path for headers the walker could not read: let pydicom parse the staged file."""
    out: dict[str, str | None] = dict.fromkeys(header.KEYWORDS)
    if path is None:
        return out
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as e:  # any parse failure means: the tags are not there
        log.warning("pydicom could not read a staged header either: %s", e)
        return out
    for keyword in header.KEYWORDS:
        if keyword not in ds:
            continue
        try:  # a value pydicom cannot convert (a VR it does not know, ...) raises here
            value = ds[keyword].value
            if isinstance(value, pydicom.multival.MultiValue):
                value = "\\".join(str(x) for x in value)
            text = None if value is None else str(value)
        except Exception as e:
            log.warning("pydicom could not read %s from a staged header (%s)", keyword, type(e).__name__)
            continue
        if text:
            out[keyword] = text
    return out
