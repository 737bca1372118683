"""What rules match on: a received series' tags (from its first stored instance), its sender
(``calling_ae``) and receiver (``called_ae``) AE titles, and its progress (counts, state).

Read from the database (one row of ``oxidicom_series_progress`` and one file name) and from
one stored file's header; no rule ever reads pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import pydicom

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry.schema import PACS_TABLE, PACSFILE_TABLE, PROGRESS_TABLE

_SKIPPED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def header_facts(path: Path) -> dict[str, Any]:
    """Keyword -> value (str, or list of str for multi-valued tags) of one file's header."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    facts: dict[str, Any] = {}
    for element in ds:
        if element.keyword and element.VR not in _SKIPPED_VRS:
            value = element.value
            if isinstance(value, list | pydicom.multival.MultiValue):
                facts[element.keyword] = [str(v) for v in value]
            elif value is not None:
                facts[element.keyword] = str(value)
    return facts


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    pacs: str
    series_uid: str
    study_uid: str
    state: str
    end_reason: str | None
    received: int
    expected: int | None
    called_ae: str | None
    first_file: str | None
    """A stored instance of the series (relative to the files root), None if none is registered."""
    tags: Mapping[str, Any]

    @property
    def trustworthy(self) -> bool:
        """Complete by the PACS' own count, or released with no usable count (then a settle
        window applies): the ends a job may be created for without ``on_incomplete: run``."""
        if self.state != "complete":
            return False
        if self.end_reason in ("count", "released"):
            return True
        return self.expected is not None and self.received >= self.expected

    @property
    def counted(self) -> bool:
        """Complete with the count the PACS gave: no settle window is needed."""
        return self.state == "complete" and self.expected is not None and self.received == self.expected

    def for_rules(self) -> dict[str, Any]:
        return {**self.tags, "calling_ae": self.pacs, "called_ae": self.called_ae or ""}


_PROGRESS: Final = f"""
SELECT p.pacs_identifier, p."SeriesInstanceUID", p."StudyInstanceUID", p.state, p.end_reason, p.received,
       p.expected, p.called_ae,
       (SELECT f.fname FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} k ON k.id = f.pacs_id
        WHERE f."SeriesInstanceUID" = p."SeriesInstanceUID" AND k.identifier = p.pacs_identifier LIMIT 1)
FROM {PROGRESS_TABLE} p
WHERE p.pacs_identifier <> %(marker)s AND {{where}}
ORDER BY p."SeriesInstanceUID", p.pacs_identifier
"""

SERIES_PROGRESS: Final = _PROGRESS.format(where='p.pacs_identifier = %(pacs)s AND p."SeriesInstanceUID" = %(series)s')
STUDY_PROGRESS: Final = _PROGRESS.format(where='p."StudyInstanceUID" = %(study)s')


def _facts(row: tuple[Any, ...], files_root: Path) -> SeriesFacts:
    pacs, series, study, state, reason, received, expected, called, fname = row
    tags: Mapping[str, Any] = {}
    if fname is not None:
        try:
            tags = header_facts(files_root / fname)
        except (OSError, pydicom.errors.InvalidDicomError):
            tags = {}  # no tags: rules that name one do not match (never an error)
    return SeriesFacts(pacs, series, study, state, reason, received, expected, called, fname, tags)


async def series_facts(
    conn: psycopg.AsyncConnection, files_root: Path, pacs: str, series_uid: str
) -> SeriesFacts | None:
    cursor = await conn.execute(SERIES_PROGRESS, {"pacs": pacs, "series": series_uid, "marker": MARKER_PACS})
    row = await cursor.fetchone()
    return None if row is None else _facts(row, files_root)


async def study_facts(conn: psycopg.AsyncConnection, files_root: Path, study_uid: str) -> list[SeriesFacts]:
    """Every series of the study seen so far (from any sender)."""
    cursor = await conn.execute(STUDY_PROGRESS, {"study": study_uid, "marker": MARKER_PACS})
    return [_facts(row, files_root) for row in await cursor.fetchall()]
