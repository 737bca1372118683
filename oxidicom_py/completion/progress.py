"""Series progress: the SQL that keeps ``oxidicom_series_progress`` exact.

Every change runs inside a registration transaction (see :class:`Registrar`'s ``extra`` and
``on_inserted``), so a progress row never disagrees with the file rows a client can see:

* instances newly inserted by a batch add to ``received`` (duplicates add nothing);
* the first instance of a series in an association adds the association to
  ``open_associations`` (and reopens a finished series: more is arriving);
* the ``NumberOfSeriesRelatedInstances`` marker sets ``expected``;
* the ``OxidicomAttemptedPushCount`` marker removes the association; when none is left open
  the series ends: ``complete`` if ``received >= expected`` (or, with no count, if the
  association was released normally), ``incomplete`` otherwise;
* ``received == expected`` completes a series at once; a quiescence sweep ends series that
  stopped receiving (a PACS that never releases, or a receiver that crashed): ``complete``
  only when the PACS' count was reached, ``incomplete`` otherwise (a later release of the
  association may still complete it).

Every statement is idempotent except the ``received`` increment, which only ever counts rows
its own transaction inserted. State changes are announced by the table's NOTIFY trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.completion.events import OnEndInTransaction, OnSeriesEnded, SeriesEnded
from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry.fitting import DbRow
from oxidicom_py.registry.schema import PROGRESS_TABLE
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.completion")

_KEY_COLUMNS = 'pacs_identifier, "SeriesInstanceUID", "StudyInstanceUID", "PatientID"'

COUNT_ON_CONFLICT: Final = """
ON CONFLICT (pacs_identifier, "SeriesInstanceUID") DO UPDATE SET
    received = p.received + EXCLUDED.received,
    first_received = coalesce(p.first_received, EXCLUDED.first_received),
    last_received = EXCLUDED.last_received,
    state = 'receiving',
    completed = NULL,
    end_reason = NULL,
    updated = now()
"""
"""How newly inserted instances count in their series' row (``p``), whichever statement inserts
them. Instances arriving keep (or put back) their series in ``receiving``: a series only ends
when its last open association ends, or by quiescence. Reaching ``expected`` mid-way does not
end it: a PACS that is still receiving the series answers a count that grows (CUSTOM_SPEC.md)."""

_COUNT_INSERTED: Final = f"""
INSERT INTO {PROGRESS_TABLE} AS p ({_KEY_COLUMNS}, received, first_received, last_received, updated)
SELECT u.pacs, u.series, u.study, u.patient, u.n, now(), now(), now()
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::int[]) AS u(pacs, series, study, patient, n)
ORDER BY u.pacs, u.series
{COUNT_ON_CONFLICT}"""

_ASSOCIATION_STARTED: Final = f"""
INSERT INTO {PROGRESS_TABLE} AS p ({_KEY_COLUMNS}, open_associations, called_ae)
VALUES (%(pacs)s, %(series)s, %(study)s, %(patient)s, ARRAY[%(ulid)s]::text[], %(called)s)
ON CONFLICT (pacs_identifier, "SeriesInstanceUID") DO UPDATE SET
    called_ae = EXCLUDED.called_ae,
    open_associations = CASE WHEN %(ulid)s = ANY(p.open_associations) THEN p.open_associations
                             ELSE array_append(p.open_associations, %(ulid)s) END,
    state = CASE WHEN %(ulid)s = ANY(p.open_associations) THEN p.state ELSE 'receiving' END,
    completed = CASE WHEN %(ulid)s = ANY(p.open_associations) THEN p.completed END,
    end_reason = CASE WHEN %(ulid)s = ANY(p.open_associations) THEN p.end_reason END,
    updated = CASE WHEN %(ulid)s = ANY(p.open_associations) THEN p.updated ELSE now() END
"""

_SET_EXPECTED: Final = f"""
WITH old AS (
    SELECT state FROM {PROGRESS_TABLE} WHERE pacs_identifier = %(pacs)s AND "SeriesInstanceUID" = %(series)s
)
INSERT INTO {PROGRESS_TABLE} AS p ({_KEY_COLUMNS}, expected, count_queries, count_asked)
VALUES (%(pacs)s, %(series)s, %(study)s, %(patient)s, %(expected)s, 1, now())
ON CONFLICT (pacs_identifier, "SeriesInstanceUID") DO UPDATE SET
    expected = EXCLUDED.expected,
    state = CASE WHEN p.received = EXCLUDED.expected AND cardinality(p.open_associations) = 0
                 THEN 'complete' ELSE p.state END,
    completed = CASE WHEN p.received = EXCLUDED.expected AND cardinality(p.open_associations) = 0
                     THEN coalesce(p.completed, now()) ELSE p.completed END,
    end_reason = CASE WHEN p.received = EXCLUDED.expected AND cardinality(p.open_associations) = 0
                      AND p.state = 'receiving' THEN 'count' ELSE p.end_reason END,
    count_queries = p.count_queries + 1,
    count_asked = now(),
    updated = now()
RETURNING p.pacs_identifier, p."SeriesInstanceUID", p.state, p.end_reason, (SELECT state FROM old)
"""

_ASSOCIATION_ENDED: Final = f"""
WITH old AS (
    SELECT state FROM {PROGRESS_TABLE} WHERE pacs_identifier = %(pacs)s AND "SeriesInstanceUID" = %(series)s
)
UPDATE {PROGRESS_TABLE} AS p SET
    open_associations = array_remove(p.open_associations, %(ulid)s),
    state = CASE
        WHEN cardinality(array_remove(p.open_associations, %(ulid)s)) > 0 THEN p.state
        WHEN p.expected IS NOT NULL AND p.received = p.expected THEN 'complete'
        WHEN p.expected IS NOT NULL AND p.received < p.expected THEN 'incomplete'
        -- no count, or one below what arrived (not to be trusted): released means complete
        WHEN %(released)s THEN 'complete'
        ELSE 'incomplete' END,
    completed = CASE
        WHEN cardinality(array_remove(p.open_associations, %(ulid)s)) > 0 THEN p.completed
        ELSE coalesce(p.completed, now()) END,
    end_reason = CASE
        WHEN cardinality(array_remove(p.open_associations, %(ulid)s)) > 0 THEN p.end_reason
        WHEN p.expected IS NOT NULL AND p.received = p.expected THEN 'count'
        WHEN %(released)s THEN 'released'
        ELSE 'aborted' END,
    updated = now()
WHERE p.pacs_identifier = %(pacs)s AND p."SeriesInstanceUID" = %(series)s
RETURNING p.pacs_identifier, p."SeriesInstanceUID", p.state, p.end_reason, (SELECT state FROM old)
"""

_QUIESCENCE_SWEEP: Final = f"""
WITH quiet AS (
    SELECT pacs_identifier, "SeriesInstanceUID" FROM {PROGRESS_TABLE}
    WHERE state = 'receiving' AND coalesce(last_received, updated) < now() - make_interval(secs => %s)
    FOR UPDATE SKIP LOCKED  -- a row a registration holds is swept next round: never a lock cycle
)
UPDATE {PROGRESS_TABLE} AS p SET
    -- quiet with no count proves nothing (a receiver that crashed mid-push goes quiet too)
    state = CASE WHEN p.expected IS NOT NULL AND p.received >= p.expected THEN 'complete' ELSE 'incomplete' END,
    completed = now(),
    open_associations = '{{}}',
    end_reason = 'quiescence',
    updated = now()
FROM quiet
WHERE p.pacs_identifier = quiet.pacs_identifier AND p."SeriesInstanceUID" = quiet."SeriesInstanceUID"
RETURNING p.pacs_identifier, p."SeriesInstanceUID", p.state, p.end_reason, 'receiving'
"""


_LOCK_SERIES: Final = """
SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY i
"""


def series_lock_key(series_uid: str) -> int:
    """A stable signed 64-bit key for a series' advisory lock (the same in every process)."""
    digest = hashlib.blake2b(series_uid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_in_transaction: weakref.WeakKeyDictionary[psycopg.AsyncConnection, list[SeriesEnded]] = weakref.WeakKeyDictionary()
"""The series each open registration transaction has ended so far (for :func:`before_commit`)."""

_end_hooks: list[OnEndInTransaction] = []


def on_end_in_transaction(hook: OnEndInTransaction) -> None:
    """Run ``hook`` in every transaction of this process that ends series, just before it
    commits (processing defers its jobs there: no job without its end, no end without its job)."""
    _end_hooks.append(hook)


def remove_end_hook(hook: OnEndInTransaction) -> None:
    with contextlib.suppress(ValueError):
        _end_hooks.remove(hook)


def _record(conn: psycopg.AsyncConnection, events: list[SeriesEnded], ended: list[SeriesEnded] | None) -> None:
    if ended is not None:
        ended[:] = events
    if events:
        _in_transaction.setdefault(conn, []).extend(events)


def forget_transaction(conn: psycopg.AsyncConnection) -> None:
    """Called first in each registration transaction: a rolled-back attempt on this connection
    leaves no ended series behind."""
    _in_transaction.pop(conn, None)


async def before_commit(conn: psycopg.AsyncConnection) -> None:
    """``before_commit`` hook of the registrar: hand the series this transaction ended to the
    end hooks, inside it."""
    events = _in_transaction.pop(conn, None)
    if events:
        for hook in list(_end_hooks):
            await hook(conn, events)


async def lock_series(conn: psycopg.AsyncConnection, rows: Sequence[DbRow]) -> None:
    """``on_begin`` hook of the registrar: lock every series a batch touches, in one global order.

    A batch's transaction updates progress rows in ``count_inserted`` (sorted) and then in the
    rows' extras (in submission order); two batches of different workers that share series could
    take those row locks in opposite orders and deadlock. Every progress row a batch touches
    belongs to the SeriesInstanceUID of one of its rows (marker rows carry it too), so taking a
    transaction-level advisory lock per series, sorted by key, first, serialises exactly the
    batches that could collide, always in the same order.
    """
    forget_transaction(conn)
    keys = sorted({series_lock_key(row.SeriesInstanceUID) for row in rows})
    if keys:
        await conn.execute(_LOCK_SERIES, (keys,))


def _ended(rows: Sequence[tuple[str, str, str, str | None, str | None]]) -> list[SeriesEnded]:
    """The series these statement results ended: left ``receiving`` in this statement, or
    turned from ``incomplete`` to ``complete`` (a quiescence end with no count, then the
    release of the association that was still delivering it)."""
    return [
        SeriesEnded(pacs, series, state, reason or "released")
        for pacs, series, state, reason, before in rows
        if (state in ("complete", "incomplete") and before in ("receiving", None))
        or (state == "complete" and before == "incomplete")
    ]


async def count_inserted(conn: psycopg.AsyncConnection, rows: Sequence[DbRow]) -> AfterCommit | None:
    """``on_inserted`` hook of the registrar: add newly registered instances to their series
    (nothing ends here, so there is nothing to announce after the commit)."""
    counts: Counter[tuple[str, str, str, str]] = Counter(
        (row.pacs_identifier, row.SeriesInstanceUID, row.StudyInstanceUID, row.PatientID)
        for row in rows
        if row.pacs_identifier != MARKER_PACS
    )
    if not counts:
        return None
    keys = sorted(counts)
    await conn.execute(
        _COUNT_INSERTED,
        (
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            [counts[k] for k in keys],
        ),
    )
    return None


def _key(pacs: str, series: str, study: str, patient: str) -> dict[str, object]:
    return {"pacs": pacs, "series": series, "study": study, "patient": patient}


async def association_started(
    conn: psycopg.AsyncConnection, *, pacs: str, series: str, study: str, patient: str, ulid: str, called: str = ""
) -> None:
    await conn.execute(
        _ASSOCIATION_STARTED, {**_key(pacs, series, study, patient), "ulid": ulid, "called": called or None}
    )


async def set_expected(
    conn: psycopg.AsyncConnection,
    *,
    pacs: str,
    series: str,
    study: str,
    patient: str,
    expected: int,
    ended: list[SeriesEnded] | None = None,
) -> None:
    """``ended`` receives the series if the count ends it (read it after the commit: the
    transaction may run again on a retry)."""
    cursor = await conn.execute(_SET_EXPECTED, {**_key(pacs, series, study, patient), "expected": expected})
    _record(conn, _ended(await cursor.fetchall()), ended)


async def association_ended(
    conn: psycopg.AsyncConnection,
    *,
    pacs: str,
    series: str,
    ulid: str,
    released: bool,
    ended: list[SeriesEnded] | None = None,
) -> None:
    """``ended`` receives the series if this, its last open association, ended it (read it
    after the commit: the transaction may run again on a retry)."""
    cursor = await conn.execute(
        _ASSOCIATION_ENDED, {"pacs": pacs, "series": series, "ulid": ulid, "released": released}
    )
    _record(conn, _ended(await cursor.fetchall()), ended)


async def quiescence_sweep(conn: psycopg.AsyncConnection, quiet_seconds: float) -> list[SeriesEnded]:
    """End series that received nothing for ``quiet_seconds``, in one transaction with the end
    hooks; the series ended (to announce after the commit)."""
    async with conn.transaction():
        cursor = await conn.execute(_QUIESCENCE_SWEEP, (quiet_seconds,))
        ended = _ended(await cursor.fetchall())
        if ended:
            for hook in list(_end_hooks):
                await hook(conn, ended)
    return ended


async def sweep_quiet_series(pool: AsyncConnectionPool, quiet_seconds: float) -> None:
    """End series that stopped receiving (see :func:`quiescence_sweep`), forever."""
    interval = min(max(quiet_seconds / 4, 0.05), 5.0)
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.connection() as conn:  # commits when the block ends
                ended = await quiescence_sweep(conn, quiet_seconds)
            announce(ended)
        except Exception as e:  # the database may be down; the next round tries again
            log.warning("quiescence sweep failed: %s", e)


AfterCommit = Callable[[], None]

_listeners: list[OnSeriesEnded] = []


def on_series_ended(listener: OnSeriesEnded) -> None:
    """Be told of every :class:`SeriesEnded` this process commits (after the commit)."""
    _listeners.append(listener)


def announce(ended: Sequence[SeriesEnded]) -> None:
    """Tell the listeners (and the metrics, and the log) that these series ended."""
    for event in ended:
        metrics.SERIES_ENDED.labels(event.state).inc()
        log.info(
            "series ended",
            extra={
                "pacs": event.pacs,
                "SeriesInstanceUID": event.series_uid,
                "state": event.state,
                "reason": event.reason,
            },
        )
        for listener in list(_listeners):
            try:
                listener(event)
            except Exception:  # a listener's failure must not undo a committed end
                log.exception("a series-ended listener failed")
