"""Batching registrar: rows in, one transaction per batch, a future per row.

Scheduling (all on the event loop thread):

* submitted rows wait in a buffer; a batch of up to ``batch_size`` rows is cut when the
  buffer holds a full batch, when its oldest row has waited ``linger`` seconds (a few times
  longer once it holds several rows: :func:`~oxidicom_py.registry.batch_items.due_at`), or
  when closing or flushed -- and only when fewer than ``max_concurrent_batches`` are in flight;
* each batch is a task: fit values to the columns, merge duplicate fnames, sort by fname, then
  one transaction (PACS upsert, one multi-row ``INSERT ... ON CONFLICT (fname) DO NOTHING``, the
  rows' extra SQL); with nothing but the insert to do, one autocommitted statement;
* data errors (``DataError``, ``IntegrityError``, or a value psycopg cannot dump) split the
  batch in halves until the offending row is alone; that row's future gets
  :class:`RowRejectedError`, all the others are registered;
* any other database failure (connection lost, server down, pool timeout, ...) retries the
  same rows with exponential backoff, forever, until they commit or :meth:`Registrar.close`
  runs out of its deadline;
* a row's future resolves after its batch COMMITs: ``True`` if inserted, ``False`` if the
  fname was already registered (earlier, concurrently, or in the same batch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.record import PacsFileRow, log_fields
from oxidicom_py.registry import batch_sql
from oxidicom_py.registry.batch_items import (
    Attempt,
    CreationDates,
    Entry,
    InsertRows,
    InTransaction,
    Item,
    OnInserted,
    due_at,
    has_extras,
)
from oxidicom_py.registry.batch_metrics import ALREADY as _ALREADY
from oxidicom_py.registry.batch_metrics import INSERTED as _INSERTED
from oxidicom_py.registry.batch_metrics import REJECTED as _REJECTED
from oxidicom_py.registry.batch_metrics import observe_batch
from oxidicom_py.registry.errors import RegistrarClosedError, RegistrarError, RowRejectedError, describe, is_data_error
from oxidicom_py.registry.fitting import DbRow, fit_row
from oxidicom_py.telemetry import tracing

__all__ = ["Registrar", "RegistrarClosedError", "RegistrarError", "RowRejectedError"]

_LINGER_TOLERANCE: Final = 0.001
"""A timer may fire up to the loop's clock resolution early; accept that much."""

_module_logger = logging.getLogger(__name__)


class Registrar:
    """Registers :class:`PacsFileRow` objects in ``pacsfiles_pacsfile``, in batches."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        batch_size: int = 100,
        linger: float = 0.05,
        max_concurrent_batches: int = 4,
        logger: logging.Logger | None = None,
        acquire_timeout: float | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        on_inserted: OnInserted | None = None,
        on_begin: Callable[[psycopg.AsyncConnection, Sequence[DbRow]], Awaitable[None]] | None = None,
        before_commit: InTransaction | None = None,
        insert: InsertRows = batch_sql.insert_rows,
    ) -> None:
        """``on_begin``: called first in each batch's transaction with all its rows (e.g. to take
        locks in one global order); ``insert``: the statement that inserts the rows (it may do
        more in the same statement, e.g. :func:`oxidicom_py.completion.counted_insert.insert_counted`);
        ``on_inserted``: after the insert, with the new rows; ``before_commit``: last, after
        every row's extra SQL, in the transactions that ran some (a batch without any is one
        autocommitted statement)."""
        if batch_size < 1 or max_concurrent_batches < 1 or linger < 0:
            raise ValueError("batch_size and max_concurrent_batches must be >= 1, linger >= 0")
        self._pool = pool
        self._batch_size = batch_size
        self._linger = linger
        self._max_batches = max(1, min(max_concurrent_batches, pool.max_size))
        self._log = logger or _module_logger
        self._acquire_timeout = acquire_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_inserted = on_inserted
        self._before_commit = before_commit
        self._on_begin = on_begin
        self._insert = insert

        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: deque[Item] = deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False  # no new rows; flush the buffer without lingering
        self._flush_pending = 0  # the first N buffered rows go out without lingering
        self._abandoned = False  # close() deadline passed: launch nothing more
        self._closed = False
        self._pacs_ids: dict[str, int] = {}
        self._creation_dates = CreationDates()

    # -- public API --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows submitted whose batch has not committed yet (buffered or in flight)."""
        return self._pending

    async def start(self) -> None:
        """Bind to the running event loop. Does not touch the database."""
        if self._loop is not None:
            raise RuntimeError("registrar already started")
        self._loop = asyncio.get_running_loop()

    def submit(
        self, row: PacsFileRow, extra: InTransaction | None = None, *, urgent: bool = False
    ) -> asyncio.Future[bool]:
        """Queue ``row``; the future resolves after its batch commits (``False``: duplicate).

        ``extra`` runs in the same transaction, after the insert, whether or not the row was
        new. ``urgent``: do not linger for more rows (someone waits for this one), as
        :meth:`flush` does. Must be called on the event loop thread; use
        :meth:`submit_threadsafe` elsewhere.
        """
        loop = self._require_loop()
        if self._closing:
            raise RuntimeError("registrar is closed")
        future: asyncio.Future[bool] = loop.create_future()
        self._buffer.append(Item(row, future, loop.time(), extra=extra))
        self._pending += 1
        self._idle.clear()
        if urgent:
            self._flush_pending = len(self._buffer)
        self._pump()
        return future

    def flush(self) -> None:
        """Send every row buffered now without waiting for the linger time (a client waits)."""
        self._flush_pending = len(self._buffer)
        if self._loop is not None:
            self._pump()

    def submit_threadsafe(self, row: PacsFileRow) -> concurrent.futures.Future[bool]:
        """Like :meth:`submit`, callable from any thread."""
        loop = self._require_loop()
        result: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def relay(source: asyncio.Future[bool]) -> None:
            if result.done():
                return
            if source.cancelled():
                result.cancel()
            elif (error := source.exception()) is not None:
                result.set_exception(error)
            else:
                result.set_result(source.result())

        def submit_on_loop() -> None:
            if not result.set_running_or_notify_cancel():
                return
            try:
                self.submit(row).add_done_callback(relay)
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(submit_on_loop)
        return result

    async def close(self, timeout: float | None = None) -> None:
        """Flush every queued row and wait until all batches committed.

        With a ``timeout`` (seconds), batches still retrying after it are abandoned: their
        rows' futures get :class:`RegistrarClosedError` and an error is logged. Without one,
        this waits as long as the database needs to come back.
        """
        if self._closed:
            return
        self._closing = True
        if self._loop is None:  # never started: nothing can be queued
            self._closed = True
            return
        self._pump()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            self._log.error(
                "registrar closed before every batch committed",
                extra={"count": self._pending},
            )
            self._abandoned = True
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            while self._buffer:
                self._fail(self._buffer.popleft(), RegistrarClosedError("registrar closed"))
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._closed = True

    # -- scheduling ----------------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("registrar not started")
        return self._loop

    def _pump(self) -> None:
        """Cut and launch batches while there is capacity and a batch is due."""
        loop = self._require_loop()
        if self._abandoned:
            return
        while self._buffer and len(self._in_flight) < self._max_batches:
            due = due_at(self._buffer[0].enqueued, len(self._buffer), self._linger) - _LINGER_TOLERANCE
            urgent = self._closing or self._flush_pending > 0
            if len(self._buffer) < self._batch_size and not urgent and loop.time() < due:
                break
            count = min(self._batch_size, len(self._buffer))
            items = [self._buffer.popleft() for _ in range(count)]
            self._flush_pending = max(0, self._flush_pending - count)
            task = loop.create_task(self._run_batch(items))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)
        self._arm_timer()

    def _arm_timer(self) -> None:
        loop = self._require_loop()
        want = bool(self._buffer) and len(self._in_flight) < self._max_batches
        deadline = due_at(self._buffer[0].enqueued, len(self._buffer), self._linger) if want else 0.0
        if self._timer is not None and (not want or deadline != self._timer_at):
            self._timer.cancel()
            self._timer = None
        if want and self._timer is None:
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._log.error("registration task failed", exc_info=error)
        self._pump()

    # -- resolving futures ---------------------------------------------------------------------

    def _settle(self, item: Item) -> bool:
        if item.resolved:
            return False
        item.resolved = True
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
        return not item.future.done()  # the caller may have cancelled it

    def _resolve(self, item: Item, inserted: bool) -> None:
        item.outcome = _INSERTED if inserted else _ALREADY
        if self._settle(item):
            item.future.set_result(inserted)

    def _fail(self, item: Item, error: BaseException) -> None:
        item.outcome = _REJECTED
        if self._settle(item):
            item.future.set_exception(error)
            item.future.exception()  # mark retrieved: callers may legitimately ignore futures

    # -- one batch -----------------------------------------------------------------------------

    async def _run_batch(self, items: list[Item]) -> None:
        started = time.monotonic()
        span = tracing.start_span(tracing.REGISTRATION_BATCH, {"oxidicom.batch.rows": len(items)})
        try:
            entries = self._prepare(items)
            await self._commit(entries)
            observe_batch(items, time.monotonic() - started, span)
        except asyncio.CancelledError:
            for item in items:
                self._fail(item, RegistrarClosedError("registrar closed before the batch committed"))
            observe_batch(items, time.monotonic() - started, span)
            raise
        except Exception as exc:  # a bug: do not leave callers waiting forever
            for item in items:
                self._fail(item, exc)
            observe_batch(items, time.monotonic() - started, span)
            raise

    def _prepare(self, items: list[Item]) -> list[Entry]:
        """Fit values, merge submissions with the same fname, sort by fname."""
        entries: dict[str, Entry] = {}
        for item in items:
            try:
                values = fit_row(item.row, self._log)
            except Exception as exc:
                self._reject(item, exc)
                continue
            entries.setdefault(values.fname, Entry(values)).items.append(item)
        return [entries[fname] for fname in sorted(entries)]

    async def _commit(self, entries: list[Entry], in_doubt: Sequence[dt.datetime] = ()) -> None:
        """Commit ``entries``: retry on operational errors, bisect on data errors.

        ``in_doubt`` holds the creation dates of earlier attempts on these rows whose COMMIT
        outcome is unknown; rows found stored with one of them count as inserted by us.
        """
        if not entries:
            return
        in_doubt = list(in_doubt)
        attempt = 0
        pacs_refreshed = False
        while True:
            attempt += 1
            creation_date = self._creation_dates.next()
            state = Attempt()
            try:
                inserted = await self._transaction(entries, creation_date, in_doubt, state)
            except psycopg.errors.ForeignKeyViolation as exc:
                if pacs_refreshed:  # the refreshed ids failed too: treat as a data error
                    await self._split(entries, exc, in_doubt)
                    return
                pacs_refreshed = True  # a cached pacs id vanished (row deleted): look them up again
                self._pacs_ids.clear()
                continue
            except Exception as exc:
                if is_data_error(exc):
                    await self._split(entries, exc, in_doubt)
                    return
                if state.commit_sent:
                    in_doubt.append(creation_date)
                await self._backoff(entries, attempt, exc)
                continue
            for entry in entries:
                first, *others = entry.items
                self._resolve(first, entry.values.fname in inserted)
                for item in others:
                    self._resolve(item, False)
            self._log.debug(
                "batch committed",
                extra={"count": len(entries), "inserted": len(inserted), "attempt": attempt},
            )
            return

    async def _transaction(
        self,
        entries: Sequence[Entry],
        creation_date: dt.datetime,
        in_doubt: Sequence[dt.datetime],
        state: Attempt,
    ) -> set[str]:
        rows = [entry.values for entry in entries]
        missing = {row.pacs_identifier for row in rows} - self._pacs_ids.keys()
        hooks = self._on_begin is not None or self._on_inserted is not None
        if not missing and not in_doubt and not hooks and not has_extras(entries):
            async with self._pool.connection(timeout=self._acquire_timeout) as conn:
                await conn.set_autocommit(True)
                try:
                    state.commit_sent = True  # from here on, a lost connection leaves the outcome unknown
                    return await self._insert(conn, rows, self._pacs_ids, creation_date)
                finally:
                    with contextlib.suppress(psycopg.Error):  # a broken connection is discarded anyway
                        await conn.set_autocommit(False)
        after: Callable[[], None] | None = None
        async with self._pool.connection(timeout=self._acquire_timeout) as conn, conn.transaction():
            if self._on_begin is not None:
                await self._on_begin(conn, rows)
            new_ids = await batch_sql.upsert_pacs(conn, missing)
            pacs_ids = {**self._pacs_ids, **new_ids}
            inserted = await self._insert(conn, rows, pacs_ids, creation_date)
            if self._on_inserted is not None and inserted:
                after = await self._on_inserted(conn, [row for row in rows if row.fname in inserted])
            for entry in entries:
                for item in entry.items:
                    if item.extra is not None:
                        await item.extra(conn)
            if in_doubt and len(inserted) < len(rows):
                others = [row.fname for row in rows if row.fname not in inserted]
                inserted |= await batch_sql.inserted_by_attempts(conn, others, in_doubt)
            if self._before_commit is not None:
                await self._before_commit(conn)
            state.commit_sent = True
        self._pacs_ids.update(new_ids)  # only ids of committed rows are cached
        if after is not None:
            try:
                after()
            except Exception:  # what follows a commit must not make it look failed (and retried)
                self._log.exception("an after-commit action failed")
        return inserted

    async def _split(self, entries: list[Entry], error: BaseException, in_doubt: Sequence[dt.datetime]) -> None:
        if len(entries) == 1:
            for item in entries[0].items:
                self._reject(item, error)
            return
        self._log.warning(
            "batch rejected by the database, splitting it",
            extra={"count": len(entries), "error": describe(error)},
        )
        middle = len(entries) // 2
        await self._commit(entries[:middle], in_doubt)
        await self._commit(entries[middle:], in_doubt)

    def _reject(self, item: Item, error: BaseException) -> None:
        self._log.error(
            "row could not be registered",
            extra={**log_fields(item.row), "error": describe(error)},
        )
        rejected = RowRejectedError(f"{item.row.fname}: {describe(error)}")
        rejected.__cause__ = error
        self._fail(item, rejected)

    async def _backoff(self, entries: Sequence[Entry], attempt: int, error: BaseException) -> None:
        delay = min(self._backoff_max, self._backoff_initial * 2 ** min(attempt - 1, 30))
        level = logging.WARNING if isinstance(error, psycopg.OperationalError | OSError) else logging.ERROR
        self._log.log(
            level,
            "registration failed, retrying the batch",
            extra={
                "count": len(entries),
                "attempt": attempt,
                "retry_in": delay,
                "error": describe(error),
                "file": entries[0].values.fname.rsplit("/", 1)[-1],
            },
        )
        await asyncio.sleep(delay)
