"""What the console reads: one SQL statement per view, over the tables the receiver and the
processing workers write (series progress, file rows, jobs, deliveries, instances). Read-only."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.registry.associations import ASSOCIATIONS_TABLE
from oxidicom_py.registry.jobs_schema import DELIVERIES_TABLE, JOBS_TABLE
from oxidicom_py.registry.schema import INSTANCES_TABLE, PACS_TABLE, PACSFILE_TABLE, PROGRESS_TABLE

MAX_PAGE: Final = 500


def mask_patient(patient_id: str | None, show_phi: bool) -> str | None:
    """The PatientID as shown: itself with ``OXIDICOM_CONSOLE_SHOW_PHI``, else a stable short hash."""
    if patient_id is None or show_phi:
        return patient_id
    return "sha256:" + hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:10]


_SERIES_COLUMNS: Final = f"""
    p.pacs_identifier AS pacs, p."SeriesInstanceUID" AS series_uid, p."StudyInstanceUID" AS study_uid,
    p."PatientID" AS patient_id, p.state, p.end_reason, p.expected, p.received, p.first_received,
    p.last_received, p.completed, p.updated, cardinality(p.open_associations) AS open_associations,
    d."Modality" AS modality, d."StudyDescription" AS study_description,
    d."SeriesDescription" AS series_description
FROM {PROGRESS_TABLE} p
LEFT JOIN LATERAL (
    SELECT f."Modality", f."StudyDescription", f."SeriesDescription"
    FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} a ON a.id = f.pacs_id
    WHERE f."SeriesInstanceUID" = p."SeriesInstanceUID" AND a.identifier = p.pacs_identifier
    LIMIT 1
) d ON true
"""


async def series_page(
    conn: psycopg.AsyncConnection, *, state: str | None, pacs: str | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    where = (
        "WHERE (%(state)s::text IS NULL OR p.state = %(state)s) "
        "AND (%(pacs)s::text IS NULL OR p.pacs_identifier = %(pacs)s)"
    )
    params = {"state": state, "pacs": pacs, "limit": limit, "offset": offset}
    order = "p.updated DESC, p.id DESC"
    return await _page(conn, f"{PROGRESS_TABLE} p", f"SELECT {_SERIES_COLUMNS}", where, order, params)


async def _page(
    conn: psycopg.AsyncConnection, source: str, select: str, where: str, order: str, params: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """How many rows of ``source`` match ``where``, and the page of them ``select`` gives
    (``params`` holds ``limit`` and ``offset``)."""
    cur = conn.cursor(row_factory=dict_row)
    total = await (await cur.execute(f"SELECT count(*) AS n FROM {source} {where}", params)).fetchone()
    page = f"{select} {where} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
    rows = await (await cur.execute(page, params)).fetchall()
    return int(total["n"] if total else 0), rows


async def series_detail(conn: psycopg.AsyncConnection, series_uid: str) -> list[dict[str, Any]]:
    """The series (one row per PACS that sent it), with its files count and its jobs."""
    cur = conn.cursor(row_factory=dict_row)
    rows = await (
        await cur.execute(f'SELECT {_SERIES_COLUMNS} WHERE p."SeriesInstanceUID" = %s ORDER BY p.id', (series_uid,))
    ).fetchall()
    for row in rows:
        files = await (
            await cur.execute(
                f"SELECT count(*) AS n FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} a ON a.id = f.pacs_id "
                'WHERE f."SeriesInstanceUID" = %s AND a.identifier = %s',
                (series_uid, row["pacs"]),
            )
        ).fetchone()
        markers = await (
            await cur.execute(
                f'SELECT f."ProtocolName" AS key, f."SeriesDescription" AS value, f.creation_date '
                f"FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} a ON a.id = f.pacs_id "
                'WHERE f."SeriesInstanceUID" = %s AND a.identifier = %s AND f.fname LIKE %s ORDER BY f.id',
                (series_uid, MARKER_PACS, f"SERVICES/PACS/{MARKER_PACS}/%"),
            )
        ).fetchall()
        row["files"] = int(files["n"] if files else 0)
        row["markers"] = markers
        row["associations"] = (
            await associations_page(conn, calling_ae=row["pacs"], series_uid=series_uid, limit=MAX_PAGE, offset=0)
        )[1]
        row["jobs"] = await (
            await cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM {JOBS_TABLE} WHERE series_uids @> ARRAY[%s]::text[] "
                "AND (pacs_identifier IS NULL OR pacs_identifier = %s) ORDER BY id DESC LIMIT %s",
                (series_uid, row["pacs"], MAX_PAGE),
            )
        ).fetchall()
        row["deliveries"] = await (
            await cur.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM {DELIVERIES_TABLE} WHERE job_id = ANY(%s) ORDER BY id DESC LIMIT %s",
                ([job["id"] for job in row["jobs"]], MAX_PAGE),
            )
        ).fetchall()
    return rows


_ASSOCIATION_COLUMNS: Final = (
    "ulid, calling_ae, called_ae, peer_address, peer_port, tls_subject, started, ended, received, stored, "
    "rejected, failed, duplicate, unregistered, bytes, outcome, first_error, series_uids"
)


async def associations_page(
    conn: psycopg.AsyncConnection,
    *,
    calling_ae: str | None = None,
    series_uid: str | None = None,
    problems: bool = False,
    limit: int,
    offset: int,
) -> tuple[int, list[dict[str, Any]]]:
    """Association records, newest first; ``problems``: only those that refused or lost something,
    or did not end with a release."""
    where = (
        "WHERE (%(ae)s::text IS NULL OR calling_ae = %(ae)s) "
        "AND (%(series)s::text IS NULL OR series_uids @> ARRAY[%(series)s::text]) "
        "AND (NOT %(problems)s OR rejected + failed + unregistered > 0 OR outcome <> 'released')"
    )
    params = {"ae": calling_ae, "series": series_uid, "problems": problems, "limit": limit, "offset": offset}
    select = f"SELECT {_ASSOCIATION_COLUMNS} FROM {ASSOCIATIONS_TABLE}"
    return await _page(conn, ASSOCIATIONS_TABLE, select, where, "ended DESC, ulid DESC", params)


_JOB_COLUMNS: Final = (
    "id, rule, level, pacs_identifier AS pacs, study_uid, series_uids, state, reason, attempts, max_attempts, "
    "created_at, started_at, finished_at, duration, last_error, exit_code, outputs, worker, log_excerpt"
)


async def jobs_page(
    conn: psycopg.AsyncConnection, *, state: str | None, rule: str | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    where = "WHERE (%(state)s::text IS NULL OR state = %(state)s) AND (%(rule)s::text IS NULL OR rule = %(rule)s)"
    params = {"state": state, "rule": rule, "limit": limit, "offset": offset}
    return await _page(conn, JOBS_TABLE, f"SELECT {_JOB_COLUMNS} FROM {JOBS_TABLE}", where, "id DESC", params)


async def job(conn: psycopg.AsyncConnection, job_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    row = await (
        await cur.execute(f"SELECT {_JOB_COLUMNS}, history FROM {JOBS_TABLE} WHERE id = %s", (job_id,))
    ).fetchone()
    if row is not None:
        row["deliveries"] = (await deliveries_page(conn, state=None, job_id=job_id, limit=MAX_PAGE, offset=0))[1]
    return row


_DELIVERY_COLUMNS: Final = (
    "id, job_id, destination, ae_title, host, port, sop_instance_uid, state, attempts, max_attempts, "
    "last_status, last_error, created_at, sent_at"
)


async def deliveries_page(
    conn: psycopg.AsyncConnection, *, state: str | None, job_id: int | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    where = "WHERE (%(state)s::text IS NULL OR state = %(state)s) AND (%(job)s::bigint IS NULL OR job_id = %(job)s)"
    params = {"state": state, "job": job_id, "limit": limit, "offset": offset}
    select = f"SELECT {_DELIVERY_COLUMNS} FROM {DELIVERIES_TABLE}"
    return await _page(conn, DELIVERIES_TABLE, select, where, "id DESC", params)


async def health(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    counts = await (
        await cur.execute(
            f"SELECT (SELECT count(*) FROM {PROGRESS_TABLE} WHERE state = 'receiving') AS series_receiving, "
            f"(SELECT count(*) FROM {JOBS_TABLE} WHERE state = 'queued') AS jobs_queued, "
            f"(SELECT count(*) FROM {JOBS_TABLE} WHERE state = 'running') AS jobs_running, "
            f"(SELECT count(*) FROM {DELIVERIES_TABLE} WHERE state = 'failed') AS deliveries_failed, "
            "(SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo') AS queue_depth, "
            "(SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - interval '1 minute') "
            "AS processing_workers, "
            f"(SELECT count(*) FROM {ASSOCIATIONS_TABLE} WHERE ended > now() - interval '1 day') AS associations_today"
        )
    ).fetchone()
    receivers = await (
        await cur.execute(
            f"SELECT instance_id, host, started, extract(epoch FROM now() - heartbeat) AS heartbeat_age "
            f"FROM {INSTANCES_TABLE} ORDER BY instance_id"
        )
    ).fetchall()
    return {**(counts or {}), "receivers": receivers}
