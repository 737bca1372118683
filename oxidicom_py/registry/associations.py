"""Association records: one row of ``oxidicom_associations`` per association, written in a
registration batch's transaction (:meth:`~oxidicom_py.registry.registrar.Registrar.submit_statement`,
no transaction of its own), kept ``OXIDICOM_HISTORY_DAYS`` and pruned.

The row is written once, when the association is over and every instance it acknowledged has
been registered (so the duplicate count is known). The insert is idempotent (``ON CONFLICT
(ulid) DO NOTHING``): a batch retried after a COMMIT of unknown outcome writes it once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.record import clean_text

ASSOCIATIONS_TABLE: Final = "oxidicom_associations"

ERROR_MAX: Final = 1000
"""``first_error`` is cut to this many characters."""

ASSOCIATIONS_DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {ASSOCIATIONS_TABLE} (
    ulid text PRIMARY KEY,
    calling_ae text NOT NULL,
    called_ae text NOT NULL,
    peer_address text NOT NULL,
    peer_port integer NOT NULL,
    tls_subject text NULL,
    started timestamptz NOT NULL,
    ended timestamptz NOT NULL,
    received integer NOT NULL,
    stored integer NOT NULL,
    rejected integer NOT NULL,
    failed integer NOT NULL,
    duplicate integer NOT NULL,
    unregistered integer NOT NULL,
    bytes bigint NOT NULL,
    outcome text NOT NULL,
    first_error text NULL,
    series_uids text[] NOT NULL DEFAULT '{{}}'
)
"""

ASSOCIATIONS_INDEXES: Final = {
    "oxidicom_associations_ended": f"{ASSOCIATIONS_TABLE} (ended)",
    "oxidicom_associations_calling": f"{ASSOCIATIONS_TABLE} (calling_ae, ended)",
    "oxidicom_associations_series": f"{ASSOCIATIONS_TABLE} USING gin (series_uids)",
}

_INSERT: Final = f"""
INSERT INTO {ASSOCIATIONS_TABLE} (
    ulid, calling_ae, called_ae, peer_address, peer_port, tls_subject, started, ended,
    received, stored, rejected, failed, duplicate, unregistered, bytes, outcome, first_error, series_uids
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (ulid) DO NOTHING
"""

_PRUNE: Final = f"DELETE FROM {ASSOCIATIONS_TABLE} WHERE ended < now() - make_interval(days => %s)"

PRUNE_INTERVAL: Final = 3600.0
"""Seconds between two prunings of old records (the first runs a minute after start)."""

log = logging.getLogger("oxidicom_py.registry")


@dataclass(slots=True)
class AssociationRecord:
    """What one association did, as its row stores it."""

    ulid: str
    calling_ae: str
    called_ae: str
    peer: tuple[str, int]
    started: dt.datetime
    tls_subject: str = ""
    ended: dt.datetime | None = None
    received: int = 0
    stored: int = 0
    rejected: int = 0
    failed: int = 0
    duplicate: int = 0
    unregistered: int = 0
    """Acknowledged instances whose row could not be registered (reconciliation adds them)."""
    bytes: int = 0
    outcome: str = ""
    first_error: str = ""
    series_uids: list[str] = field(default_factory=list)

    def params(self) -> tuple[object, ...]:
        def text(value: str) -> str:
            return clean_text(value)[0]

        return (
            text(self.ulid),
            text(self.calling_ae),
            text(self.called_ae),
            text(self.peer[0]),
            int(self.peer[1]),
            text(self.tls_subject) or None,
            self.started,
            self.ended or dt.datetime.now(dt.UTC),
            self.received,
            self.stored,
            self.rejected,
            self.failed,
            self.duplicate,
            self.unregistered,
            self.bytes,
            text(self.outcome),
            text(self.first_error)[:ERROR_MAX] or None,
            [text(uid) for uid in self.series_uids],
        )


async def write(conn: psycopg.AsyncConnection, record: AssociationRecord) -> None:
    """Insert ``record`` (idempotent: a second write of the same ULID does nothing)."""
    await conn.execute(_INSERT, record.params())


async def prune(conn: psycopg.AsyncConnection, days: int) -> int:
    """Delete the records of associations that ended more than ``days`` days ago; how many."""
    cursor = await conn.execute(_PRUNE, (days,))
    return cursor.rowcount


async def prune_forever(pool: AsyncConnectionPool, days: int, interval: float = PRUNE_INTERVAL) -> None:
    """:func:`prune` a minute after start, then every ``interval`` seconds (every receiver does
    it: the DELETE is idempotent and cheap on the ``ended`` index)."""
    delay = min(60.0, interval)
    while True:
        await asyncio.sleep(delay)
        delay = interval
        try:
            async with pool.connection() as conn:  # commits when the block ends
                removed = await prune(conn, days)
            if removed:
                log.info("association records pruned", extra={"count": removed, "history_days": days})
        except Exception as e:  # the database may be down; the next round tries again
            log.warning("pruning association records failed: %s", e)
