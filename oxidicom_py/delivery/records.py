"""The SQL of ``oxidicom_deliveries``: one row per (job, destination, instance).

``pending`` → ``sent`` (acknowledged with a success or warning status: never sent to that
destination again) or ``failed`` (after ``max_attempts`` attempts, or past ``deadline``: the
dead letter, retried by ``oxidicom-py deliveries retry``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from oxidicom_py.registry.jobs_schema import DELIVERIES_TABLE

DEFAULT_RETRIES: Final = 5
DEFAULT_BACKOFF: Final = 10.0
DEFAULT_MAX_AGE: Final = 24 * 3600.0


async def create(
    conn: psycopg.AsyncConnection,
    job_id: int,
    destination: Mapping[str, Any],
    files: Sequence[tuple[str, str, str]],
) -> int:
    """Pending rows for ``files`` ((SOP Instance UID, SOP Class UID, absolute path)); how many are new."""
    if not files:
        return 0
    retries = int(destination.get("delivery_retries", DEFAULT_RETRIES))
    cursor = await conn.execute(
        f"""INSERT INTO {DELIVERIES_TABLE} (job_id, destination, ae_title, host, port, calling_ae, tls,
                sop_instance_uid, sop_class_uid, path, max_attempts, backoff, deadline, state, last_error)
            SELECT %(job)s, %(name)s, %(ae)s, %(host)s, %(port)s, %(calling)s, %(tls)s, u.sop, u.cls, u.path, %(max)s,
                %(backoff)s, now() + make_interval(secs => %(age)s),
                CASE WHEN %(error)s::text IS NULL THEN 'pending' ELSE 'failed' END, %(error)s
            FROM unnest(%(sops)s::text[], %(classes)s::text[], %(paths)s::text[]) AS u(sop, cls, path)
            ON CONFLICT (job_id, destination, sop_instance_uid) DO NOTHING""",
        {
            "job": job_id,
            "name": destination["name"],
            "ae": destination.get("ae_title"),
            "host": destination.get("host"),
            "port": destination.get("port"),
            "calling": destination.get("calling_ae"),
            "tls": None if destination.get("tls") is None else psycopg.types.json.Jsonb(destination["tls"]),
            "max": 1 + retries,
            "backoff": float(destination.get("delivery_backoff", DEFAULT_BACKOFF)),
            "age": float(destination.get("delivery_max_age", DEFAULT_MAX_AGE)),
            "error": destination.get("error"),
            "sops": [f[0] for f in files],
            "classes": [f[1] for f in files],
            "paths": [f[2] for f in files],
        },
    )
    return cursor.rowcount


async def pending(conn: psycopg.AsyncConnection, job_id: int, destination: str) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT * FROM {DELIVERIES_TABLE} WHERE job_id = %s AND destination = %s AND state = 'pending'
                ORDER BY id FOR UPDATE SKIP LOCKED""",
            (job_id, destination),
        )
        return list(await cur.fetchall())


def mark_sent_sync(conn: psycopg.Connection, job_id: int, destination: str, sop: str, status: int) -> None:
    conn.execute(
        f"""UPDATE {DELIVERIES_TABLE} SET state = 'sent', last_status = %s, attempts = attempts + 1,
                sent_at = now(), updated = now(), last_error = NULL
            WHERE job_id = %s AND destination = %s AND sop_instance_uid = %s""",
        (status, job_id, destination, sop),
    )


async def attempt_failed(
    conn: psycopg.AsyncConnection,
    job_id: int,
    destination: str,
    failures: Mapping[str, tuple[int | None, str]],
    error: str | None,
) -> tuple[int, float | None]:
    """Count a failed attempt on every row still pending (``failures`` per instance, else
    ``error`` for all); rows out of attempts or time become ``failed``. Returns (rows still
    pending, seconds until the next attempt or None)."""
    await conn.execute(
        f"""UPDATE {DELIVERIES_TABLE} AS d SET attempts = attempts + 1, updated = now(),
                last_status = coalesce((%(statuses)s::jsonb ->> d.sop_instance_uid)::int, d.last_status),
                last_error = coalesce(%(errors)s::jsonb ->> d.sop_instance_uid, %(error)s, d.last_error),
                state = CASE WHEN attempts + 1 >= max_attempts OR now() >= deadline THEN 'failed' ELSE state END
            WHERE job_id = %(job)s AND destination = %(dest)s AND state = 'pending'""",
        {
            "statuses": psycopg.types.json.Jsonb({k: v[0] for k, v in failures.items() if v[0] is not None}),
            "errors": psycopg.types.json.Jsonb({k: v[1] for k, v in failures.items()}),
            "error": error,
            "job": job_id,
            "dest": destination,
        },
    )
    cursor = await conn.execute(
        f"""SELECT count(*), max(backoff * power(2, greatest(attempts - 1, 0))) FROM {DELIVERIES_TABLE}
            WHERE job_id = %s AND destination = %s AND state = 'pending'""",
        (job_id, destination),
    )
    row = await cursor.fetchone()
    left = int(row[0]) if row else 0
    return left, (float(row[1]) if left and row and row[1] is not None else None)


async def select(
    conn: psycopg.AsyncConnection, *, job_id: int | None = None, state: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT * FROM {DELIVERIES_TABLE}
                WHERE (%(job)s::bigint IS NULL OR job_id = %(job)s) AND (%(state)s::text IS NULL OR state = %(state)s)
                ORDER BY id LIMIT %(limit)s""",
            {"job": job_id, "state": state, "limit": limit},
        )
        return list(await cur.fetchall())


async def reopen_failed(conn: psycopg.AsyncConnection, job_id: int) -> list[str]:
    """Failed rows of a job back to pending with a fresh budget; the destinations concerned."""
    cursor = await conn.execute(
        f"""UPDATE {DELIVERIES_TABLE} SET state = 'pending', max_attempts = attempts + max_attempts,
                deadline = now() + (deadline - created_at), updated = now()
            WHERE job_id = %s AND state = 'failed' RETURNING destination""",
        (job_id,),
    )
    return sorted({row[0] for row in await cursor.fetchall()})
