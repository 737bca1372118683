"""Register files that are in storage but missing from the database.

A Success answer means the file is in place; its row follows within milliseconds, from the
memory of the worker that received it. If that worker dies in between (kill -9, OOM, power
loss), the file is there and the row is not. Reconciliation walks the instance folders,
asks the database which files it lacks, reads those files' headers and registers them
through the normal registrar (so duplicates are skipped and series progress is counted).
It runs at start-up and after a worker died, in the background: reception never waits for it.

The calling AE title comes from the file meta's SourceApplicationEntityTitle, which the
receiver writes into every file (the path only holds its sanitised form). Marker files of
the series completion (under ``org.fnndsc.oxidicom``) are not reconstructed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from oxidicom_py.dicom.contexts import dataset_encoding
from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import PACSFILE_TABLE
from oxidicom_py.storage import header
from oxidicom_py.storage.ingest import check_required, make_row, values_with_pydicom
from oxidicom_py.storage.naming import first_value

log = logging.getLogger("oxidicom_py.registry.reconcile")

_HEAD = 1 << 20
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_EXISTING = f"SELECT fname FROM {PACSFILE_TABLE} WHERE fname = ANY(%s)"


@dataclass
class Reconciled:
    checked: int = 0
    missing: int = 0
    registered: int = 0
    unreadable: int = 0


def _file_meta(head: bytes) -> tuple[dict[int, bytes], int] | None:
    """Group 0002 values of a Part 10 file and the offset where its dataset starts."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    values: dict[int, bytes] = {}
    pos = 132
    end = len(head)
    dataset_start = None
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            dataset_start = pos
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        values[elem] = head[start : start + length]
        pos = start + length
    if dataset_start is None:
        dataset_start = pos
    return values, dataset_start


def _text(raw: bytes | None) -> str:
    return (raw or b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()


def row_of_stored_file(root: Path, relative: str) -> PacsFileRow | None:
    """The registry row of a file we stored, read back from its header (None if unreadable)."""
    path = root / relative
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    meta = _file_meta(head)
    if meta is None:
        return None
    values_meta, start = meta
    implicit, little = dataset_encoding(_text(values_meta.get(0x0010)))
    try:
        try:
            raw = header.walk(head[start:], implicit=implicit, little=little, complete=len(head) < _HEAD)
        except header.NeedMore:
            raw = header.walk(path.read_bytes()[start:], implicit=implicit, little=little, complete=True)
        decoded = header.decode_values(raw)
    except header.HeaderError:
        decoded = values_with_pydicom(str(path))
    values = {k: first_value(v) for k, v in decoded.items()}
    problem, study_date = check_required(values)
    if problem is not None or study_date is None:
        return None
    aet = _text(values_meta.get(0x0016)) or relative.split("/")[2]
    return make_row(relative, aet, values, study_date, "reconciliation")


def _series_folders(root: Path) -> Iterator[str]:
    """Relative paths of the folders that hold instances (four levels below SERVICES/PACS)."""
    base = root / "SERVICES" / "PACS"
    if not base.is_dir():
        return
    for aet in sorted(os.scandir(base), key=lambda e: e.name):
        if not aet.is_dir() or aet.name == MARKER_PACS:
            continue
        for patient in os.scandir(aet.path):
            if not patient.is_dir():
                continue
            for study in os.scandir(patient.path):
                if not study.is_dir():
                    continue
                for series in os.scandir(study.path):
                    if series.is_dir():
                        yield f"SERVICES/PACS/{aet.name}/{patient.name}/{study.name}/{series.name}"


def _instance_files(root: Path, folder: str) -> list[str]:
    return sorted(f"{folder}/{e.name}" for e in os.scandir(root / folder) if e.name.endswith(".dcm") and e.is_file())


async def reconcile(root: Path, pool: AsyncConnectionPool, registrar: Registrar) -> Reconciled:
    """Register every instance file under ``root`` that has no row; return what was done."""
    result = Reconciled()
    folders = await asyncio.to_thread(lambda: list(_series_folders(root)))
    for folder in folders:
        files = await asyncio.to_thread(_instance_files, root, folder)
        if not files:
            continue
        result.checked += len(files)
        async with pool.connection() as conn:
            cursor = await conn.execute(_EXISTING, (files,))
            existing = {fname for (fname,) in await cursor.fetchall()}
        missing = [f for f in files if f not in existing]
        if not missing:
            continue
        result.missing += len(missing)
        rows = await asyncio.to_thread(lambda missing=missing: [row_of_stored_file(root, f) for f in missing])
        futures = []
        for relative, row in zip(missing, rows, strict=True):
            if row is None:
                result.unreadable += 1
                log.warning(
                    "stored file cannot be read back for registration", extra={"file": os.path.basename(relative)}
                )
                continue
            futures.append(registrar.submit(row))
        registrar.flush()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        result.registered += sum(1 for o in outcomes if o is True)
    level = logging.WARNING if result.missing else logging.INFO
    log.log(
        level,
        "reconciliation done: %d files checked, %d were not registered, %d registered now",
        result.checked,
        result.missing,
        result.registered,
        extra={
            "checked": result.checked,
            "missing": result.missing,
            "registered": result.registered,
            "unreadable": result.unreadable,
        },
    )
    return result


class Reconciler:
    """Runs :func:`reconcile` in the background on request; a request during a run queues one more."""

    def __init__(self, root: Path, pool: AsyncConnectionPool, registrar: Registrar) -> None:
        self.root = root
        self.pool = pool
        self.registrar = registrar
        self.runs = 0
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self._again = False
            try:
                await reconcile(self.root, self.pool, self.registrar)
            except Exception as e:  # the database may be down: the next request tries again
                log.warning("reconciliation failed: %s", e)
            self.runs += 1
            if not self._again:
                return

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
