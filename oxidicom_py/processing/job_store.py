"""The SQL of ``oxidicom_jobs``: the record of every job, what users and tools read.

States: ``queued`` (waiting: its settle window, a worker, or a retry's backoff) → ``running``
→ ``succeeded`` | ``failed`` (with ``reason`` and ``last_error``); ``cancelled`` from queued or
running (by ``oxidicom-py jobs cancel``, or because its series reopened before it ran). Every
transition appends to ``history`` (attempt, state, time, error).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from oxidicom_py.registry.jobs_schema import JOB_OUTPUTS_TABLE, JOBS_TABLE


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    rule: str
    level: str
    job_key: str
    pacs_identifier: str | None
    study_uid: str
    series_uids: list[str]
    roles: dict[str, str]
    state: str
    reason: str | None
    attempts: int
    max_attempts: int
    created_at: dt.datetime
    armed_at: dt.datetime
    run_after: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration: float | None
    last_error: str | None
    exit_code: int | None
    outputs: list[dict[str, Any]]
    result: Any
    log_excerpt: str | None
    history: list[dict[str, Any]]
    run: dict[str, Any]
    settings: dict[str, Any]
    worker: str | None
    folder: str | None
    procrastinate_job_id: int | None
    updated: dt.datetime
    send_to: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def _row(record: Mapping[str, Any] | None) -> JobRow | None:
    return None if record is None else JobRow(**record)


_COLUMNS: Final = ", ".join(JobRow.__slots__)  # type: ignore[attr-defined]


def _event(state: str, attempt: int, **more: Any) -> Jsonb:
    return Jsonb([{"state": state, "attempt": attempt, "at": dt.datetime.now(dt.UTC).isoformat(), **more}])


async def latest(conn: psycopg.AsyncConnection, rule: str, key: str) -> JobRow | None:
    """The newest job of ``rule`` for ``key`` (a series or study UID), locked for this transaction."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM {JOBS_TABLE} WHERE rule = %s AND job_key = %s ORDER BY id DESC LIMIT 1 FOR UPDATE",
            (rule, key),
        )
        return _row(await cur.fetchone())


async def create(
    conn: psycopg.AsyncConnection,
    *,
    rule: str,
    level: str,
    key: str,
    pacs: str | None,
    study_uid: str,
    series_uids: Sequence[str],
    roles: Mapping[str, str],
    max_attempts: int,
    run: Mapping[str, Any],
    settings: Mapping[str, Any],
    delay: float,
    why: str,
    send_to: Sequence[Mapping[str, Any]] = (),
) -> int:
    cursor = await conn.execute(
        f"""INSERT INTO {JOBS_TABLE} (rule, level, job_key, pacs_identifier, study_uid, series_uids, roles,
                max_attempts, run, settings, run_after, history, send_to)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s, %s)
            RETURNING id""",
        (
            rule,
            level,
            key,
            pacs,
            study_uid,
            list(series_uids),
            Jsonb(dict(roles)),
            max_attempts,
            Jsonb(dict(run)),
            Jsonb(dict(settings)),
            delay,
            _event("queued", 0, why=why),
            Jsonb([dict(d) for d in send_to]),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def set_procrastinate_id(conn: psycopg.AsyncConnection, job_id: int, procrastinate_id: int) -> None:
    await conn.execute(f"UPDATE {JOBS_TABLE} SET procrastinate_job_id = %s WHERE id = %s", (procrastinate_id, job_id))


async def rearm(
    conn: psycopg.AsyncConnection, job_id: int, delay: float, series_uids: Sequence[str], roles: Mapping[str, str]
) -> None:
    await conn.execute(
        f"""UPDATE {JOBS_TABLE} SET armed_at = now(), run_after = now() + make_interval(secs => %s),
                series_uids = %s, roles = %s, history = history || %s, updated = now()
            WHERE id = %s""",
        (
            delay,
            list(series_uids),
            Jsonb(dict(roles)),
            _event("queued", 0, why="re-armed: the series ended again"),
            job_id,
        ),
    )


async def get(conn: psycopg.AsyncConnection, job_id: int, *, lock: bool = False) -> JobRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM {JOBS_TABLE} WHERE id = %s" + (" FOR UPDATE" if lock else ""), (job_id,)
        )
        return _row(await cur.fetchone())


async def start(conn: psycopg.AsyncConnection, job_id: int, worker: str, folder: str) -> JobRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""UPDATE {JOBS_TABLE} SET state = 'running', attempts = attempts + 1, started_at = now(),
                    finished_at = NULL, worker = %s, folder = %s, updated = now(),
                    history = history || jsonb_build_array(jsonb_build_object(
                        'state', 'running', 'attempt', attempts + 1, 'at', now(), 'worker', %s::text))
                WHERE id = %s AND state = 'queued'
                RETURNING {_COLUMNS}""",
            (worker, folder, worker, job_id),
        )
        return _row(await cur.fetchone())


async def finish(
    conn: psycopg.AsyncConnection,
    job: JobRow,
    *,
    state: str,
    reason: str | None = None,
    error: str | None = None,
    exit_code: int | None = None,
    duration: float | None = None,
    log_excerpt: str | None = None,
    outputs: Sequence[Mapping[str, Any]] | None = None,
    result: Any = None,
    delay: float | None = None,
    attempts: int | None = None,
) -> None:
    """Record the end of an attempt: ``state`` is the job's state after it (``queued`` again
    when it will be retried, after ``delay`` seconds)."""
    await conn.execute(
        f"""UPDATE {JOBS_TABLE} SET state = %s, reason = %s, last_error = coalesce(%s, last_error),
                exit_code = %s, duration = %s, log_excerpt = coalesce(%s, log_excerpt),
                outputs = coalesce(%s, outputs), result = coalesce(%s, result),
                finished_at = CASE WHEN %s IN ('succeeded', 'failed', 'cancelled') THEN now() END,
                run_after = CASE WHEN %s::float8 IS NULL THEN run_after ELSE now() + make_interval(secs => %s) END,
                attempts = coalesce(%s, attempts),
                history = history || %s, updated = now()
            WHERE id = %s""",
        (
            state,
            reason,
            error,
            exit_code,
            duration,
            log_excerpt,
            None if outputs is None else Jsonb(list(map(dict, outputs))),
            None if result is None else Jsonb(result),
            state,
            delay,
            delay or 0.0,
            attempts,
            _event(state, job.attempts if attempts is None else attempts, reason=reason, error=error),
            job.id,
        ),
    )


async def record_outputs(conn: psycopg.AsyncConnection, job_id: int, outputs: Sequence[tuple[str, str, str]]) -> None:
    """Remember our outputs' (SOP Instance, Series, Study) UIDs: they never trigger a rule."""
    if outputs:
        await conn.execute(
            f"""INSERT INTO {JOB_OUTPUTS_TABLE} (sop_instance_uid, series_uid, study_uid, job_id)
                SELECT u.sop, u.series, u.study, %s
                FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(sop, series, study)
                ON CONFLICT (sop_instance_uid) DO NOTHING""",
            (job_id, [o[0] for o in outputs], [o[1] for o in outputs], [o[2] for o in outputs]),
        )


async def output_of(conn: psycopg.AsyncConnection, series_uid: str) -> int | None:
    """The job whose outputs include series ``series_uid``, if one does."""
    cursor = await conn.execute(f"SELECT job_id FROM {JOB_OUTPUTS_TABLE} WHERE series_uid = %s LIMIT 1", (series_uid,))
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def known_outputs(conn: psycopg.AsyncConnection, sop_uids: Sequence[str]) -> set[str]:
    cursor = await conn.execute(
        f"SELECT sop_instance_uid FROM {JOB_OUTPUTS_TABLE} WHERE sop_instance_uid = ANY(%s)", (list(sop_uids),)
    )
    return {row[0] for row in await cursor.fetchall()}


async def select(
    conn: psycopg.AsyncConnection,
    *,
    state: str | None = None,
    rule: str | None = None,
    series: str | None = None,
    limit: int = 100,
) -> list[JobRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM {JOBS_TABLE}
                WHERE (%(state)s::text IS NULL OR state = %(state)s) AND (%(rule)s::text IS NULL OR rule = %(rule)s)
                  AND (%(series)s::text IS NULL OR %(series)s = ANY(series_uids) OR study_uid = %(series)s)
                ORDER BY id DESC LIMIT %(limit)s""",
            {"state": state, "rule": rule, "series": series, "limit": limit},
        )
        return [JobRow(**r) for r in await cur.fetchall()]


async def queued_count(conn: psycopg.AsyncConnection) -> int:
    cursor = await conn.execute(f"SELECT count(*) FROM {JOBS_TABLE} WHERE state = 'queued'")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
