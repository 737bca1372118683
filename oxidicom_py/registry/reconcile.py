"""Register files that are in storage but missing from the database.

A Success answer means the file is in place; its row follows within milliseconds, from the
memory of the worker that received it. If that worker dies in between (kill -9, OOM, power
loss), the file is there and the row is not. Reconciliation walks the instance folders,
asks the database which files it lacks, reads those files' headers and registers them
through the normal registrar (so duplicates are skipped and series progress is counted).
It runs at start-up and after a worker died, in the background: reception never waits for it.

A file is read back by :mod:`oxidicom_py.storage.readback`, with the receive path's own header
walker and row builder. Marker files of the series completion (under ``org.fnndsc.oxidicom``)
are not reconstructed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import PACSFILE_TABLE
from oxidicom_py.storage.readback import row_of_stored_file

log = logging.getLogger("oxidicom_py.registry.reconcile")

_EXISTING = f"SELECT fname FROM {PACSFILE_TABLE} WHERE fname = ANY(%s)"


@dataclass
class Reconciled:
    checked: int = 0
    missing: int = 0
    registered: int = 0
    unreadable: int = 0


def _folders_with_instances(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, its instance files), relative to ``root``, for every folder under
    ``SERVICES/PACS`` that holds ``.dcm`` files, markers excluded; whatever the layout."""
    base = root / "SERVICES" / "PACS"
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == str(base):
            dirnames[:] = sorted(d for d in dirnames if d != MARKER_PACS)
        else:
            dirnames.sort()
        files = sorted(name for name in filenames if name.endswith(".dcm"))
        if files:
            folder = os.path.relpath(dirpath, root)
            yield folder, [f"{folder}/{name}" for name in files]


async def reconcile(root: Path, pool: AsyncConnectionPool, registrar: Registrar) -> Reconciled:
    """Register every instance file under ``root`` that has no row; return what was done."""
    result = Reconciled()
    folders = await asyncio.to_thread(lambda: list(_folders_with_instances(root)))
    for _folder, files in folders:
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
