"""The SQL of one registration batch (to be run inside one transaction).

Unlike the reference (check-then-insert, no ``ON CONFLICT``), duplicates are resolved by the
unique index itself: ``ON CONFLICT (fname) DO NOTHING`` never fails, whether the duplicate
is already committed, in the same statement, or being inserted by a concurrent transaction
(which then makes us wait for its outcome). Callers pass rows sorted by ``fname`` and
without duplicate fnames, so concurrent batches take their index locks in the same order.

The rows go in as one ``INSERT ... SELECT ... FROM unnest(<15 arrays>)`` with the arrays
bound in binary format: against COPY into a temp table + ``INSERT ... SELECT`` and against a
pipelined ``executemany`` it was faster for small batches and equal for large ones (session 1's
measurement; ``bench/`` is where such figures belong).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import psycopg

from oxidicom_py.registry.fitting import DbRow
from oxidicom_py.registry.schema import PACS_TABLE, PACSFILE_TABLE

# (column, element type of the bound array), in DbRow order except pacs_identifier -> pacs_id
_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("fname", "text"),
    ('"PatientID"', "text"),
    ('"PatientName"', "text"),
    ('"StudyInstanceUID"', "text"),
    ('"StudyDescription"', "text"),
    ('"SeriesInstanceUID"', "text"),
    ('"SeriesDescription"', "text"),
    ('"PatientAge"', "integer"),
    ('"PatientBirthDate"', "date"),
    ('"PatientSex"', "text"),
    ('"Modality"', "text"),
    ('"ProtocolName"', "text"),
    ('"StudyDate"', "date"),
    ('"AccessionNumber"', "text"),
    ("pacs_id", "bigint"),
)


def insert_select(where: str = "") -> str:
    """The batch's ``INSERT ... SELECT ... FROM unnest(...) ON CONFLICT (fname) DO NOTHING``
    (no RETURNING), its parameters made by :func:`insert_params`; ``where``: a condition on the
    SELECT (e.g. one that makes locks be taken before the first row)."""
    return (
        f"INSERT INTO {PACSFILE_TABLE} (creation_date, {', '.join(name for name, _ in _COLUMNS)})"
        f" SELECT %b::timestamptz, * FROM unnest({', '.join(f'%b::{kind}[]' for _, kind in _COLUMNS)})"
        + (f" WHERE {where}" if where else "")
        + " ON CONFLICT (fname) DO NOTHING"
    )


INSERT_ROWS: Final = insert_select() + " RETURNING fname"

UPSERT_PACS: Final = (
    f"INSERT INTO {PACS_TABLE} (identifier) SELECT unnest(%b::text[]) ON CONFLICT (identifier) DO NOTHING"
)
SELECT_PACS: Final = f"SELECT identifier, id FROM {PACS_TABLE} WHERE identifier = ANY(%b::text[])"

SELECT_OURS: Final = (
    f"SELECT fname FROM {PACSFILE_TABLE} WHERE fname = ANY(%b::text[]) AND creation_date = ANY(%b::timestamptz[])"
)


async def upsert_pacs(conn: psycopg.AsyncConnection, identifiers: Iterable[str]) -> dict[str, int]:
    """Ensure the PACS rows exist; return ``identifier -> id`` for all of them."""
    wanted = sorted(set(identifiers))  # sorted: concurrent batches lock in the same order
    if not wanted:
        return {}
    await conn.execute(UPSERT_PACS, (wanted,))
    cursor = await conn.execute(SELECT_PACS, (wanted,))
    return {identifier: pacs_id for identifier, pacs_id in await cursor.fetchall()}


async def insert_rows(
    conn: psycopg.AsyncConnection,
    rows: Sequence[DbRow],
    pacs_ids: Mapping[str, int],
    creation_date: dt.datetime,
) -> set[str]:
    """Insert ``rows`` (distinct fnames, sorted); return the fnames actually inserted."""
    if not rows:
        return set()
    cursor = await conn.execute(INSERT_ROWS, insert_params(rows, pacs_ids, creation_date))
    return {fname for (fname,) in await cursor.fetchall()}


def insert_params(rows: Sequence[DbRow], pacs_ids: Mapping[str, int], creation_date: dt.datetime) -> list[object]:
    """The parameters of :func:`insert_select`: the creation date, then one array per column."""
    *columns, identifiers = (list(column) for column in zip(*rows, strict=True))
    return [creation_date, *columns, [pacs_ids[identifier] for identifier in identifiers]]


async def inserted_by_attempts(
    conn: psycopg.AsyncConnection, fnames: Sequence[str], creation_dates: Sequence[dt.datetime]
) -> set[str]:
    """Among ``fnames``, those stored with one of ``creation_dates``.

    Used after an attempt whose COMMIT outcome is unknown (connection lost while committing):
    a row that conflicts now but carries that attempt's creation_date was inserted by us.
    """
    if not fnames or not creation_dates:
        return set()
    cursor = await conn.execute(SELECT_OURS, (list(fnames), list(creation_dates)))
    return {fname for (fname,) in await cursor.fetchall()}
