"""One statement per registration batch: the series locks, the insert and the progress count.

The registrar's batch used to be five round trips (BEGIN, the series' advisory locks, the
INSERT, the progress upsert from its result, COMMIT), and per-statement overhead, not rows,
was most of PostgreSQL's cost per instance (``../shared/reference/performance-profile.md``).
Here the three statements are data-modifying CTEs of one: the locks are an InitPlan that runs
before the first row is inserted, the rows go in as ``unnest`` arrays, and the progress upsert
counts exactly what the INSERT returned (duplicates add nothing). Run alone in autocommit, that
statement is its own transaction: one round trip per batch.

What stays true (CUSTOM_SPEC.md): the series' locks are taken first, in one global order,
before any row lock, so batches of different workers sharing series run one after the other
instead of deadlocking; a file row and its series' count commit together; ``received`` only
counts rows inserted by this statement. Progress upserts for the same (PACS, series) are grouped
into one (``ON CONFLICT DO UPDATE`` may not touch a row twice in one statement).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Final

import psycopg

from oxidicom_py.completion import progress
from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry import batch_sql
from oxidicom_py.registry.fitting import DbRow
from oxidicom_py.registry.schema import PACS_TABLE, PROGRESS_TABLE

_INSERT_COUNTED: Final = f"""
WITH locks AS (
    SELECT count(*) AS n FROM (
        SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY i
    ) AS taken
),
ins AS (
    {batch_sql.insert_select(where="(SELECT n FROM locks) >= 0")}
    RETURNING fname, pacs_id, "SeriesInstanceUID", "StudyInstanceUID", "PatientID"
),
counted AS (
    INSERT INTO {PROGRESS_TABLE} AS p
        (pacs_identifier, "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
         received, first_received, last_received, updated)
    SELECT pacs.identifier, ins."SeriesInstanceUID", min(ins."StudyInstanceUID"), min(ins."PatientID"),
           count(*), now(), now(), now()
    FROM ins JOIN {PACS_TABLE} AS pacs ON pacs.id = ins.pacs_id
    WHERE pacs.identifier <> %b
    GROUP BY pacs.identifier, ins."SeriesInstanceUID"
    ORDER BY pacs.identifier, ins."SeriesInstanceUID"
    {progress.COUNT_ON_CONFLICT}
)
SELECT fname FROM ins
"""


async def insert_counted(
    conn: psycopg.AsyncConnection,
    rows: Sequence[DbRow],
    pacs_ids: Mapping[str, int],
    creation_date: dt.datetime,
) -> set[str]:
    """The registrar's ``insert``: lock the batch's series, insert ``rows`` (distinct fnames,
    sorted) and count the new ones in their series, in one statement; the fnames inserted."""
    progress.forget_transaction(conn)  # a rolled-back attempt on this connection leaves nothing behind
    if not rows:
        return set()
    keys = sorted({progress.series_lock_key(row.SeriesInstanceUID) for row in rows})
    cursor = await conn.execute(
        _INSERT_COUNTED, (keys, *batch_sql.insert_params(rows, pacs_ids, creation_date), MARKER_PACS)
    )
    return {fname for (fname,) in await cursor.fetchall()}
