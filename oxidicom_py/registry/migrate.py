"""The schema as a migration: ``oxidicom-py migrate`` creates or upgrades every table, index and
the job engine's schema, once per cluster (a Kubernetes Job or an init step); ``serve`` only
checks it when ``OXIDICOM_DB_MIGRATE=off``.

On a ``pacsfiles_pacsfile`` table that already exists (CUBE's, possibly millions of rows) a
missing secondary index is built ``CONCURRENTLY`` before the schema transaction, so inserts
are never blocked behind the build; an invalid index a failed concurrent build left is dropped
and built again. Everything else is :func:`~oxidicom_py.registry.schema.ensure_schema`.
"""

from __future__ import annotations

from typing import Final

import psycopg

from oxidicom_py.registry.associations import ASSOCIATIONS_INDEXES, ASSOCIATIONS_TABLE
from oxidicom_py.registry.jobs_schema import (
    DELIVERIES_TABLE,
    JOB_OUTPUTS_TABLE,
    JOBS_INDEXES,
    JOBS_TABLE,
    PROCRASTINATE_PRESENT,
)
from oxidicom_py.registry.schema import (
    ADVISORY_LOCK_KEY,
    INDEXES,
    INSTANCES_TABLE,
    PACS_TABLE,
    PACSFILE_TABLE,
    PROGRESS_INDEXES,
    PROGRESS_TABLE,
    RECONCILE_TABLE,
    ensure_schema,
)

TABLES: Final = (
    PACS_TABLE,
    PACSFILE_TABLE,
    PROGRESS_TABLE,
    INSTANCES_TABLE,
    RECONCILE_TABLE,
    JOBS_TABLE,
    JOB_OUTPUTS_TABLE,
    DELIVERIES_TABLE,
    ASSOCIATIONS_TABLE,
)
COLUMNS: Final = (
    (PROGRESS_TABLE, "end_reason"),
    (PROGRESS_TABLE, "count_queries"),
    (PROGRESS_TABLE, "count_asked"),
    (PROGRESS_TABLE, "called_ae"),
    (JOBS_TABLE, "send_to"),
    (DELIVERIES_TABLE, "tls"),
)
"""Columns later versions added to existing tables."""

_BUILD_LOCK_KEY: Final = ADVISORY_LOCK_KEY + 2

_INDEX_STATE: Final = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace
"""


async def problems(conn: psycopg.AsyncConnection) -> list[str]:
    """What is missing from the schema ``serve`` needs (empty: all in place)."""
    missing = []
    for table in TABLES:
        row = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))).fetchone()
        if not (row and row[0]):
            missing.append(f"table {table}")
    for table, column in COLUMNS:
        if f"table {table}" in missing:
            continue
        row = await (
            await conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s "
                "AND column_name = %s",
                (table, column),
            )
        ).fetchone()
        if row is None:
            missing.append(f"column {table}.{column}")
    for name in (*INDEXES, *PROGRESS_INDEXES, *JOBS_INDEXES, *ASSOCIATIONS_INDEXES):
        state = await (await conn.execute(_INDEX_STATE, (name,))).fetchone()
        if state is None or not state[0]:
            missing.append(f"index {name}" if state is None else f"index {name} (invalid)")
    present = await (await conn.execute(PROCRASTINATE_PRESENT)).fetchone()
    if not (present and present[0]):
        missing.append("the job engine's schema (procrastinate)")
    return missing


async def migrate(conn: psycopg.AsyncConnection) -> list[str]:
    """Create or upgrade the whole schema; the indexes built concurrently (``conn`` must not
    be inside a transaction)."""
    built: list[str] = []
    await conn.set_autocommit(True)
    exists = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (PACSFILE_TABLE,))).fetchone()
    if exists and exists[0]:
        # one concurrent build at a time (several receivers migrating at once, OXIDICOM_DB_MIGRATE=auto)
        await conn.execute("SELECT pg_advisory_lock(%s)", (_BUILD_LOCK_KEY,))
        try:
            built = await _build_missing_indexes(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_BUILD_LOCK_KEY,))
    await conn.set_autocommit(False)
    await ensure_schema(conn)
    await conn.commit()
    return built


async def _build_missing_indexes(conn: psycopg.AsyncConnection) -> list[str]:
    built = []
    for name, target in INDEXES.items():
        state = await (await conn.execute(_INDEX_STATE, (name,))).fetchone()
        if state is not None and state[0]:
            continue
        if state is not None:  # a concurrent build that failed: invalid, never used, still maintained
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        await conn.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON {target}')
        built.append(name)
    return built
