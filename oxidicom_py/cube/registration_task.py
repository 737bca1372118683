"""The ``pacsfiles.tasks.register_pacs_series`` task CUBE's worker runs: its name, its keyword
arguments (what CUBE's ``PACSSeriesSerializer`` requires and accepts) and CUBE's limits.

Facts from CUBE (``pacsfiles/tasks.py``, ``serializers.py``) and oxidicom (``registration_task.rs``,
``types.rs``): the task takes PatientID, StudyDate (``YYYY-MM-DD``), StudyInstanceUID,
SeriesInstanceUID, pacs_name (at most 20 characters, no ``/`` or ``,``), path (the series folder,
under ``SERVICES/PACS/{pacs_name}/``, no ``,``) and ndicom (at least 1; CUBE waits up to 30 s for
that many ``.dcm`` files in the folder), plus optional descriptive values, None when the
instance lacks them (CUBE leaves those out). The values are those of the first instance of the
series in the association, as oxidicom takes them.
"""

from __future__ import annotations

from typing import Any, Final

from oxidicom_py.record import PacsFileRow
from oxidicom_py.storage.naming import sanitize

TASK_NAME: Final = "pacsfiles.tasks.register_pacs_series"
PACS_NAME_MAX: Final = 20
"""CUBE's serializer limit on pacs_name (its model allows 100)."""

_OPTIONAL: Final = (
    "PatientName",
    "PatientBirthDate",
    "PatientAge",
    "PatientSex",
    "AccessionNumber",
    "Modality",
    "ProtocolName",
    "StudyDescription",
    "SeriesDescription",
)


def pacs_name_problem(calling_ae: str) -> str | None:
    """Why CUBE would refuse to register series from this calling AE title, or None."""
    if len(calling_ae) > PACS_NAME_MAX:
        return f"CUBE accepts at most {PACS_NAME_MAX} characters as pacs_name"
    if "/" in calling_ae or "," in calling_ae:
        return "CUBE refuses '/' and ',' in pacs_name"
    folder = sanitize(calling_ae)
    if folder != calling_ae:
        return (
            f"its files go to SERVICES/PACS/{folder}/, and CUBE registers a series only under "
            f"SERVICES/PACS/<pacs_name>/ (use letters, digits, '.', '-' or '_' in the PACS' AE title)"
        )
    return None


def task_kwargs(first: PacsFileRow, folder: str, ndicom: int) -> dict[str, Any]:
    """The task's keyword arguments for a series whose first instance in the association was
    ``first``, stored in ``folder`` (relative to the files root), ``ndicom`` files of it stored."""
    kwargs: dict[str, Any] = {
        "PatientID": first.PatientID,
        "StudyDate": first.StudyDate.isoformat(),
        "StudyInstanceUID": first.StudyInstanceUID,
        "SeriesInstanceUID": first.SeriesInstanceUID,
        "pacs_name": first.pacs_identifier,
        "path": folder,
        "ndicom": ndicom,
    }
    for name in _OPTIONAL:
        value = getattr(first, name)
        kwargs[name] = None if value in ("", None) else value
    return kwargs


def path_problem(folder: str, pacs_name: str) -> str | None:
    """Why CUBE would refuse ``folder`` as the series' path, or None."""
    if "," in folder:
        return "CUBE refuses ',' in the path"
    if not folder.startswith(f"SERVICES/PACS/{pacs_name}/"):
        return f"CUBE requires the path to start with SERVICES/PACS/{pacs_name}/"
    return None
