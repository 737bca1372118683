"""What the registrar queues and batches: a submitted row with its future, a statement riding
along, a batch entry (one distinct fname and every submission of it), an attempt's commit
state, and the hooks a registration transaction runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import psycopg

from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.fitting import DbRow

InTransaction = Callable[[psycopg.AsyncConnection], Awaitable[None]]
"""More SQL to run in the transaction that registers a row (must be idempotent: it runs again
if the row's batch is retried after a COMMIT whose outcome was unknown)."""

InsertRows = Callable[[psycopg.AsyncConnection, Sequence[DbRow], Mapping[str, int], dt.datetime], Awaitable[set[str]]]
"""Inserts a batch's rows (distinct fnames, sorted) given the PACS ids and the batch's creation
date; returns the fnames it inserted (e.g. :func:`oxidicom_py.registry.batch_sql.insert_rows`)."""

OnInserted = Callable[[psycopg.AsyncConnection, Sequence[DbRow]], Awaitable[Callable[[], None] | None]]
"""Called in each batch's transaction with the rows that this transaction newly inserted; may
return an action to run once that transaction has committed (never if it rolled back)."""


@dataclass(slots=True)
class Item:
    row: PacsFileRow
    future: asyncio.Future[bool]
    enqueued: float
    resolved: bool = False
    extra: InTransaction | None = None
    outcome: int = 0  # _INSERTED, _ALREADY or _REJECTED once settled


@dataclass(slots=True)
class Entry:
    """One distinct fname of a batch and every submission carrying it (first one wins)."""

    values: DbRow
    items: list[Item] = field(default_factory=list)


@dataclass(slots=True)
class Statement:
    """SQL of its own (not a row) that rides in the next batch's transaction."""

    run: InTransaction
    future: asyncio.Future[None]
    enqueued: float
    resolved: bool = False


class Attempt:
    """Tracks whether COMMIT was sent, to tell an unknown outcome from a sure rollback, and
    which statements the database refused (dropped from this attempt, logged)."""

    __slots__ = ("commit_sent", "dropped")

    def __init__(self) -> None:
        self.commit_sent = False
        self.dropped: list[tuple[Statement, BaseException]] = []


def has_extras(entries: Sequence[Entry]) -> bool:
    """Whether a row of the batch brings SQL of its own (then the batch needs a transaction)."""
    return any(item.extra is not None for entry in entries for item in entry.items)


class CreationDates:
    """UTC now, strictly increasing per registrar (so a batch's rows are identifiable)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = dt.datetime.min.replace(tzinfo=dt.UTC)

    def next(self) -> dt.datetime:
        now = dt.datetime.now(dt.UTC)
        if now <= self.last:
            now = self.last + dt.timedelta(microseconds=1)
        self.last = now
        return now


LOAD_ROWS: Final = 4
"""A partial batch holding this many rows is filling under load, not a trickle."""
LOAD_LINGER: Final = 5
"""Under load, a partial batch waits up to this many times the linger for more rows."""


def due_at(oldest: float, buffered: int, linger: float) -> float:
    """When a partial batch is cut: ``linger`` after its oldest row for a trickle (the latency a
    lone instance's row gets); once it holds :data:`LOAD_ROWS` rows, up to :data:`LOAD_LINGER`
    times later, so that batches fill under load (PostgreSQL's cost per row falls with the
    batch's size) instead of committing ~15 rows each."""
    return oldest + (linger * LOAD_LINGER if buffered >= LOAD_ROWS else linger)
