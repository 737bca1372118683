"""One registration batch, committed: fit and merge its rows, then one transaction (or one
autocommitted statement), retried on operational errors and bisected on data errors; how each
row and statement ended goes back to :class:`Outcomes` (the registrar, which owns the futures)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.record import log_fields
from oxidicom_py.registry import batch_sql
from oxidicom_py.registry.batch_items import (
    Attempt,
    CreationDates,
    Entry,
    InsertRows,
    InTransaction,
    Item,
    OnInserted,
    Statement,
    has_extras,
)
from oxidicom_py.registry.errors import RowRejectedError, describe, is_data_error
from oxidicom_py.registry.fitting import DbRow, fit_row


class Outcomes(Protocol):
    """Where a batch's results go."""

    def resolve(self, item: Item, inserted: bool) -> None: ...

    def fail(self, item: Item, error: BaseException) -> None: ...

    def settle_statement(self, statement: Statement, error: BaseException | None = None) -> None: ...


class BatchCommit:
    """Commits batches for one registrar (its hooks, its cache of PACS ids, its creation dates)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        outcomes: Outcomes,
        log: logging.Logger,
        *,
        acquire_timeout: float | None,
        backoff_initial: float,
        backoff_max: float,
        on_inserted: OnInserted | None,
        on_begin: Callable[[psycopg.AsyncConnection, Sequence[DbRow]], Awaitable[None]] | None,
        before_commit: InTransaction | None,
        insert: InsertRows,
    ) -> None:
        self._pool = pool
        self._outcomes = outcomes
        self._log = log
        self._acquire_timeout = acquire_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_inserted = on_inserted
        self._before_commit = before_commit
        self._on_begin = on_begin
        self._insert = insert
        self._pacs_ids: dict[str, int] = {}
        self._creation_dates = CreationDates()

    def prepare(self, items: list[Item]) -> list[Entry]:
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

    async def commit(
        self, entries: list[Entry], in_doubt: Sequence[dt.datetime] = (), statements: Sequence[Statement] = ()
    ) -> None:
        """Commit ``entries`` and ``statements``: retry on operational errors, bisect on data errors.

        ``in_doubt`` holds the creation dates of earlier attempts on these rows whose COMMIT
        outcome is unknown; rows found stored with one of them count as inserted by us.
        """
        if not entries and not statements:
            return
        in_doubt = list(in_doubt)
        attempt = 0
        pacs_refreshed = False
        while True:
            attempt += 1
            creation_date = self._creation_dates.next()
            state = Attempt()
            try:
                inserted = await self._transaction(entries, creation_date, in_doubt, state, statements)
            except psycopg.errors.ForeignKeyViolation as exc:
                if pacs_refreshed:  # the refreshed ids failed too: treat as a data error
                    await self._split(entries, exc, in_doubt, statements)
                    return
                pacs_refreshed = True  # a cached pacs id vanished (row deleted): look them up again
                self._pacs_ids.clear()
                continue
            except Exception as exc:
                if is_data_error(exc):
                    await self._split(entries, exc, in_doubt, statements)
                    return
                if state.commit_sent:
                    in_doubt.append(creation_date)
                await self._backoff(entries, attempt, exc)
                continue
            for entry in entries:
                first, *others = entry.items
                self._outcomes.resolve(first, entry.values.fname in inserted)
                for item in others:
                    self._outcomes.resolve(item, False)
            dropped = {id(statement): error for statement, error in state.dropped}
            for statement in statements:
                self._outcomes.settle_statement(statement, dropped.get(id(statement)))
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
        statements: Sequence[Statement] = (),
    ) -> set[str]:
        rows = [entry.values for entry in entries]
        missing = {row.pacs_identifier for row in rows} - self._pacs_ids.keys()
        hooks = self._on_begin is not None or self._on_inserted is not None
        if not missing and not in_doubt and not hooks and not statements and not has_extras(entries):
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
            # called with no rows too (a batch of statements): it resets the hooks' per-transaction state
            inserted = await self._insert(conn, rows, pacs_ids, creation_date)
            if self._on_inserted is not None and inserted:
                after = await self._on_inserted(conn, [row for row in rows if row.fname in inserted])
            for entry in entries:
                for item in entry.items:
                    if item.extra is not None:
                        await item.extra(conn)
            for statement in statements:
                await self._run_statement(conn, statement, state)
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

    async def _run_statement(self, conn: psycopg.AsyncConnection, statement: Statement, state: Attempt) -> None:
        try:
            async with conn.transaction():  # a savepoint: a refused statement takes nothing else with it
                await statement.run(conn)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            self._log.error("a statement of a registration batch was refused: dropped", extra={"error": describe(exc)})
            state.dropped.append((statement, RowRejectedError(describe(exc))))

    async def _split(
        self,
        entries: list[Entry],
        error: BaseException,
        in_doubt: Sequence[dt.datetime],
        statements: Sequence[Statement] = (),
    ) -> None:
        """Bisect ``entries`` (the statements go with the first half, or alone)."""
        if len(entries) <= 1:
            for entry in entries:
                for item in entry.items:
                    self._reject(item, error)
            await self.commit([], in_doubt, statements)
            return
        self._log.warning(
            "batch rejected by the database, splitting it",
            extra={"count": len(entries), "error": describe(error)},
        )
        middle = len(entries) // 2
        await self.commit(entries[:middle], in_doubt, statements)
        await self.commit(entries[middle:], in_doubt)

    def _reject(self, item: Item, error: BaseException) -> None:
        self._log.error(
            "row could not be registered",
            extra={**log_fields(item.row), "error": describe(error)},
        )
        rejected = RowRejectedError(f"{item.row.fname}: {describe(error)}")
        rejected.__cause__ = error
        self._outcomes.fail(item, rejected)

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
                "file": entries[0].values.fname.rsplit("/", 1)[-1] if entries else "",
            },
        )
        await asyncio.sleep(delay)
