"""Register files that are in storage but missing from the database.

A Success answer means the file is in place; its row follows within milliseconds, from the
memory of the worker that received it. If that worker dies in between (kill -9, OOM, power
loss), the file is there and the row is not. Reconciliation walks the instance folders,
asks the database which files it lacks, reads those files' headers and registers them
through the normal registrar (so duplicates are skipped and series progress is counted).
It runs at start-up and after a worker died, and periodically (``OXIDICOM_RECONCILE_INTERVAL``)
as cluster work, in the background: reception never waits for it.

Several receivers sharing the database and files root: one pass runs at a time, cluster-wide
(a session advisory lock on a connection of its own; a periodic pass that finds it taken skips
its turn, a start-up pass waits). A periodic pass is incremental: it lists only the series
folders whose mtime (a rename into a folder sets it) is newer than the watermark the previous
pass stored (``oxidicom_reconcile_state``) less the grace; files are taken only once their
ctime is older than the grace (``OXIDICOM_RECONCILE_GRACE``), so a row another live receiver is
about to commit is never raced, and the new watermark is the pass's start less the grace, so a
file skipped as too young is seen by the next pass.

A file is read back by :mod:`oxidicom_py.storage.readback`, with the receive path's own header
walker and row builder. Marker files of the series completion (under ``org.fnndsc.oxidicom``)
are not reconstructed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import ADVISORY_LOCK_KEY, PACSFILE_TABLE, RECONCILE_TABLE
from oxidicom_py.storage.readback import row_of_stored_file

log = logging.getLogger("oxidicom_py.registry.reconcile")

_EXISTING = f"SELECT fname FROM {PACSFILE_TABLE} WHERE fname = ANY(%s)"


@dataclass
class Reconciled:
    checked: int = 0
    missing: int = 0
    registered: int = 0
    unreadable: int = 0


SERIES_DEPTH: Final = 4
"""Series folders are ``SERVICES/PACS/{pacs}/{patient}/{study}/{series}``: 4 levels down."""

RECONCILE_LOCK_KEY: Final = ADVISORY_LOCK_KEY + 1
"""The session advisory lock one reconciliation pass holds, cluster-wide."""


def _folders_with_instances(
    root: Path, since: float | None = None, older_than: float | None = None
) -> Iterator[tuple[str, list[str]]]:
    """(folder, its instance files), relative to ``root``, for every folder under
    ``SERVICES/PACS`` that holds ``.dcm`` files, markers excluded; whatever the layout.
    ``since``: skip series-level folders (and deeper) not modified since then, without listing
    them; ``older_than``: only files whose ctime is not after it."""
    yield from _walk(root, root / "SERVICES" / "PACS", 0, since, older_than)


def _walk(
    root: Path, folder: Path, depth: int, since: float | None, older_than: float | None
) -> Iterator[tuple[str, list[str]]]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    files = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth == 0 and entry.name == MARKER_PACS:
                    continue
                if since is not None and depth + 1 >= SERIES_DEPTH and entry.stat().st_mtime < since:
                    continue  # nothing renamed into it since the last pass
                yield from _walk(root, Path(entry.path), depth + 1, since, older_than)
            elif entry.name.endswith(".dcm") and (
                older_than is None or entry.stat(follow_symlinks=False).st_ctime <= older_than
            ):
                files.append(entry.name)
        except FileNotFoundError:  # removed meanwhile
            continue
    if files:
        relative = os.path.relpath(folder, root)
        yield relative, [f"{relative}/{name}" for name in files]


async def reconcile(
    root: Path,
    pool: AsyncConnectionPool,
    registrar: Registrar,
    *,
    since: float | None = None,
    older_than: float | None = None,
    quiet: bool = False,
) -> Reconciled:
    """Register every instance file under ``root`` that has no row (``since``/``older_than``: see
    :func:`_folders_with_instances`); return what was done. ``quiet``: a pass that found
    nothing missing logs at debug level (the periodic ones)."""
    result = Reconciled()
    folders = await asyncio.to_thread(lambda: list(_folders_with_instances(root, since, older_than)))
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
    level = logging.WARNING if result.missing else logging.DEBUG if quiet else logging.INFO
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


_WATERMARK: Final = f"SELECT watermark FROM {RECONCILE_TABLE} WHERE id = 1"
_SET_WATERMARK: Final = f"""
INSERT INTO {RECONCILE_TABLE} (id, watermark, passed) VALUES (1, %s, now())
ON CONFLICT (id) DO UPDATE SET watermark = EXCLUDED.watermark, passed = now()
"""


class Reconciler:
    """Runs reconciliation passes in the background: on request (a full pass: start-up, after
    a worker died; a request during a run queues one more) and every ``interval`` seconds (an
    incremental pass); one at a time over every instance sharing the database."""

    def __init__(
        self, root: Path, pool: AsyncConnectionPool, registrar: Registrar, *, interval: float = 0, grace: float = 0
    ) -> None:
        self.root = root
        self.pool = pool
        self.registrar = registrar
        self.interval = interval
        self.grace = grace
        self.runs = 0
        self._again = False
        self._full = False
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        if interval > 0:
            self._ticker = asyncio.create_task(self._tick())

    def request(self, *, full: bool = True) -> None:
        self._full = self._full or full
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._loop())

    def request_after_grace(self) -> None:
        """A full pass now, and an incremental one once files of this moment are past the grace
        (a worker's last acknowledged files are that young)."""
        self.request()
        if self.grace > 0:
            if self._later is not None:
                self._later.cancel()
            self._later = asyncio.get_running_loop().call_later(self.grace + 1, self.request)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.request(full=False)

    async def _loop(self) -> None:
        while True:
            self._again = False
            full, self._full = self._full, False
            try:
                await self._pass(full)
            except Exception as e:  # the database may be down: the next request tries again
                log.warning("reconciliation failed: %s", e)
            self.runs += 1
            if not self._again:
                return

    async def _pass(self, full: bool) -> Reconciled | None:
        """One pass under the cluster-wide lock (waited for when ``full``, else tried); None when
        another instance's pass held it."""
        async with await psycopg.AsyncConnection.connect(self.pool.conninfo, autocommit=True) as lock:
            if full:
                await lock.execute("SELECT pg_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))
            else:
                got = await (await lock.execute("SELECT pg_try_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))).fetchone()
                if not (got and got[0]):
                    return None  # another instance is reconciling: it covers the same files
            started = time.time()
            row = await (await lock.execute(_WATERMARK)).fetchone()
            watermark = float(row[0]) if row is not None and row[0] is not None else None
            since = None if full or watermark is None else watermark - self.grace
            older_than = started - self.grace if self.grace > 0 else None
            result = await reconcile(
                self.root, self.pool, self.registrar, since=since, older_than=older_than, quiet=not full
            )
            await lock.execute(_SET_WATERMARK, (started - self.grace,))
            return result  # closing the connection releases the lock

    async def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
        for task in (self._ticker, self._task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
