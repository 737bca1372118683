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
  fname was already registered (earlier, concurrently, or in the same batch);
* statements (:meth:`Registrar.submit_statement`, e.g. an association's record) wait like rows
  and ride in the next batch's transaction, each in a savepoint: one the database refuses is
  dropped (logged, its future fails) without failing the rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry import batch_sql
from oxidicom_py.registry.batch_commit import BatchCommit
from oxidicom_py.registry.batch_items import InsertRows, InTransaction, Item, OnInserted, Statement, due_at
from oxidicom_py.registry.batch_metrics import ALREADY as _ALREADY
from oxidicom_py.registry.batch_metrics import INSERTED as _INSERTED
from oxidicom_py.registry.batch_metrics import REJECTED as _REJECTED
from oxidicom_py.registry.batch_metrics import observe_batch
from oxidicom_py.registry.errors import RegistrarClosedError, RegistrarError, RowRejectedError
from oxidicom_py.registry.fitting import DbRow
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
        self._batch_size = batch_size
        self._linger = linger
        self._max_batches = max(1, min(max_concurrent_batches, pool.max_size))
        self._log = logger or _module_logger
        self._batches = BatchCommit(
            pool,
            self,
            self._log,
            acquire_timeout=acquire_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            on_inserted=on_inserted,
            on_begin=on_begin,
            before_commit=before_commit,
            insert=insert,
        )

        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: deque[Item] = deque()
        self._statements: deque[Statement] = deque()
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

    def submit_statement(self, run: InTransaction) -> asyncio.Future[None]:
        """Queue SQL of its own to run in the next batch's transaction (it lingers as rows do;
        with no row to ride with, it is a batch of its own). It runs in a savepoint: a data
        error drops it (its future gets :class:`RowRejectedError`) and the rows still commit;
        other errors retry the batch, so ``run`` must be idempotent. The future resolves once
        the transaction committed."""
        loop = self._require_loop()
        if self._closing:
            raise RuntimeError("registrar is closed")
        future: asyncio.Future[None] = loop.create_future()
        self._statements.append(Statement(run, future, loop.time()))
        self._pending += 1
        self._idle.clear()
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
                self.fail(self._buffer.popleft(), RegistrarClosedError("registrar closed"))
            while self._statements:
                self.settle_statement(self._statements.popleft(), RegistrarClosedError("registrar closed"))
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
        while (self._buffer or self._statements) and len(self._in_flight) < self._max_batches:
            due = self._due() - _LINGER_TOLERANCE
            urgent = self._closing or self._flush_pending > 0
            if len(self._buffer) < self._batch_size and not urgent and loop.time() < due:
                break
            count = min(self._batch_size, len(self._buffer))
            items = [self._buffer.popleft() for _ in range(count)]
            self._flush_pending = max(0, self._flush_pending - count)
            statements = list(self._statements)
            self._statements.clear()
            task = loop.create_task(self._run_batch(items, statements))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)
        self._arm_timer()

    def _due(self) -> float:
        """When the buffered rows and statements are due as a batch (some must be buffered)."""
        oldest = min(queue[0].enqueued for queue in (self._buffer, self._statements) if queue)
        return due_at(oldest, len(self._buffer), self._linger)

    def _arm_timer(self) -> None:
        loop = self._require_loop()
        want = bool(self._buffer or self._statements) and len(self._in_flight) < self._max_batches
        deadline = self._due() if want else 0.0
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

    def _settle(self, item: Item | Statement) -> bool:
        if item.resolved:
            return False
        item.resolved = True
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
        return not item.future.done()  # the caller may have cancelled it

    def resolve(self, item: Item, inserted: bool) -> None:
        item.outcome = _INSERTED if inserted else _ALREADY
        if self._settle(item):
            item.future.set_result(inserted)

    def fail(self, item: Item, error: BaseException) -> None:
        item.outcome = _REJECTED
        if self._settle(item):
            item.future.set_exception(error)
            item.future.exception()  # mark retrieved: callers may legitimately ignore futures

    def settle_statement(self, statement: Statement, error: BaseException | None = None) -> None:
        if not self._settle(statement):
            return
        if error is None:
            statement.future.set_result(None)
        else:
            statement.future.set_exception(error)
            statement.future.exception()

    # -- one batch -----------------------------------------------------------------------------

    async def _run_batch(self, items: list[Item], statements: list[Statement]) -> None:
        started = time.monotonic()
        span = tracing.start_span(tracing.REGISTRATION_BATCH, {"oxidicom.batch.rows": len(items)})
        try:
            entries = self._batches.prepare(items)
            await self._batches.commit(entries, statements=statements)
            observe_batch(items, time.monotonic() - started, span)
        except asyncio.CancelledError:
            closed = RegistrarClosedError("registrar closed before the batch committed")
            for item in items:
                self.fail(item, closed)
            for statement in statements:
                self.settle_statement(statement, closed)
            observe_batch(items, time.monotonic() - started, span)
            raise
        except Exception as exc:  # a bug: do not leave callers waiting forever
            for item in items:
                self.fail(item, exc)
            for statement in statements:
                self.settle_statement(statement, exc)
            observe_batch(items, time.monotonic() - started, span)
            raise
