"""One delivery attempt: send a job's pending instances to one destination.

Run by processing workers as procrastinate's ``oxidicom.deliver`` task (one waiting per job and
destination: its queueing lock). Each acknowledgement is committed as it arrives (a separate
connection, autocommit), so a worker that dies mid-delivery never sends an acknowledged
instance again. What is not acknowledged counts an attempt; while attempts and time remain
(``delivery_retries``, ``delivery_max_age``), :class:`DeliveryRetry` asks for another after
``delivery_backoff`` doubling per attempt; then the rows are ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.delivery import records
from oxidicom_py.delivery.store_scu import Outcome, Outgoing, Target, client_context, send
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.delivery")


class DeliveryRetry(Exception):
    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.retry_in = retry_in


def _send_recording(
    db_uri: str, job_id: int, destination: str, target: Target, files: list[Outgoing], stop: threading.Event
) -> Outcome:
    with psycopg.connect(db_uri, autocommit=True, connect_timeout=10) as conn:

        def acknowledged(sop: str, status: int) -> None:
            records.mark_sent_sync(conn, job_id, destination, sop, status)

        return send(target, files, acknowledged, stop)


async def deliver(pool: AsyncConnectionPool, db_uri: str, our_aet: str, job_id: int, destination: str) -> None:
    async with pool.connection() as conn:
        rows = await records.pending(conn, job_id, destination)
    if not rows:
        return
    first = rows[0]
    try:
        tls = client_context(first["tls"]) if first["tls"] else None
    except (OSError, ssl.SSLError, ValueError) as e:  # a CA or certificate file missing or bad
        tls, bad_tls = None, f"destination tls: {e}"
    else:
        bad_tls = None
    target = Target(first["ae_title"], first["host"], int(first["port"]), first["calling_ae"] or our_aet, tls=tls)
    files = [Outgoing(r["sop_instance_uid"], r["sop_class_uid"], Path(r["path"])) for r in rows]
    fields = {"job": job_id, "destination": destination, "ae_title": target.ae_title, "instances": len(files)}
    if bad_tls is not None:
        async with pool.connection() as conn, conn.transaction():
            left, delay = await records.attempt_failed(conn, job_id, destination, {}, bad_tls)
        log.error("delivery impossible: %s", bad_tls, extra=fields)
        if left and delay is not None:
            raise DeliveryRetry(bad_tls, delay)
        return
    stop = threading.Event()
    try:
        outcome = await asyncio.to_thread(_send_recording, db_uri, job_id, destination, target, files, stop)
    except asyncio.CancelledError:
        stop.set()  # the thread ends after the C-STORE under way; what it acknowledged is recorded
        raise
    metrics.DELIVERED.labels(destination, "sent").inc(outcome.sent)
    failed = outcome.failed or {}
    if not failed and not outcome.error and outcome.sent == len(files):
        log.info("delivered", extra=fields)
        return
    async with pool.connection() as conn, conn.transaction():
        left, delay = await records.attempt_failed(conn, job_id, destination, failed, outcome.error)
    reason = outcome.error or next(iter(failed.values()))[1]
    if left and delay is not None:
        log.warning(
            "delivery incomplete: retried", extra={**fields, "sent": outcome.sent, "error": reason, "retry_in": delay}
        )
        raise DeliveryRetry(reason, delay)
    metrics.DELIVERED.labels(destination, "failed").inc(len(files) - outcome.sent)
    log.error("delivery failed: no attempt left", extra={**fields, "sent": outcome.sent, "error": reason})
