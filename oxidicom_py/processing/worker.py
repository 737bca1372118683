"""A processing worker: procrastinate's worker running our one task, plus the recovery of
jobs whose worker died.

Run by ``oxidicom-py process`` (on any machine that reaches the database and sees the files
root at ``OXIDICOM_FILES_ROOT``), or inside ``serve`` (``OXIDICOM_PROCESS_IN_SERVE``).

* Heartbeats every third of ``OXIDICOM_JOBS_STALLED_AFTER``; every half of it, each worker
  looks for jobs whose worker has not beaten for that long (procrastinate's stalled-job API)
  and puts them back in the queue: the lost attempt counts, and a job with no attempt left
  is ``failed`` (reason ``worker died``). A job is recovered within 1.5 x that setting.
* SIGTERM (or the end of ``serve``): no new job is taken; running ones may finish for
  ``OXIDICOM_PROCESS_GRACE`` seconds, then their modules are killed and the jobs return to
  the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Sequence

import procrastinate
from psycopg_pool import AsyncConnectionPool

from oxidicom_py import runtime
from oxidicom_py.delivery.deliver import deliver
from oxidicom_py.processing import job_store, queue
from oxidicom_py.processing.attempt import Attempt, Context
from oxidicom_py.settings import Settings
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.processing")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def recover_stalled(app: procrastinate.App, pool: AsyncConnectionPool, stalled_after: float) -> int:
    """Put the jobs of dead workers back in the queue (or fail them: no attempt left); how many."""
    deliveries = await app.job_manager.get_stalled_jobs(
        task_name=queue.DELIVER_TASK, seconds_since_heartbeat=stalled_after
    )
    for pj in deliveries:  # acknowledged instances are recorded one by one: the rest is sent again
        await app.job_manager.retry_job(pj, retry_at=dt.datetime.now(dt.UTC))
        log.warning("delivery of a dead worker recovered", extra={"procrastinate_job": pj.id})
    stalled = await app.job_manager.get_stalled_jobs(task_name=queue.TASK_NAME, seconds_since_heartbeat=stalled_after)
    recovered = 0
    for pj in stalled:
        job_id = int(pj.task_kwargs.get("job_id", 0))
        async with pool.connection() as conn, conn.transaction():
            job = await job_store.get(conn, job_id, lock=True)
            if job is not None and job.state == "running":
                error = f"the worker running it ({job.worker}) stopped sending heartbeats for {stalled_after:g} s"
                last = job.attempts >= job.max_attempts
                await job_store.finish(
                    conn, job, state="failed" if last else "queued", reason="worker died", error=error, delay=0.0
                )
                if last:
                    metrics.JOBS.labels(job.rule, "failed").inc()
        assert pj.id is not None
        if job is not None and job.state == "running" and job.attempts >= job.max_attempts:
            await app.job_manager.finish_job_by_id_async(pj.id, procrastinate.jobs.Status.FAILED, delete_job=False)
        else:
            await app.job_manager.retry_job(pj, retry_at=dt.datetime.now(dt.UTC))
        recovered += 1
        log.warning("job of a dead worker recovered", extra={"job": job_id, "procrastinate_job": pj.id})
    return recovered


async def _recovery_loop(app: procrastinate.App, pool: AsyncConnectionPool, stalled_after: float) -> None:
    while True:
        await asyncio.sleep(stalled_after / 2)
        try:
            await recover_stalled(app, pool, stalled_after)
            async with pool.connection() as conn:
                metrics.JOBS_QUEUED.set(await job_store.queued_count(conn))
        except Exception as e:  # the database may be down; next round
            log.warning("stalled-job recovery failed: %s", e)


async def run_processing(
    settings: Settings,
    db_uri: str,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Run a processing worker until SIGTERM/SIGINT (or until cancelled)."""
    concurrency = concurrency or settings.process_concurrency
    queues = list(queues or settings.process_queues or []) or None
    pool = runtime.make_pool(db_uri, concurrency + 2)
    await pool.open(wait=True, timeout=runtime.DB_CONNECT_TIMEOUT)
    name = worker_name()
    env = {"OXIDICOM_CONTAINER_RUNTIME": settings.container_runtime} if settings.container_runtime else {}
    context = Context(pool, settings.files_root, settings.jobs_root, name, settings.pacs_address, env)

    async def run_job(job_id: int) -> None:
        await Attempt(context, job_id).run()

    async def run_delivery(job_id: int, destination: str) -> None:
        await deliver(pool, db_uri, settings.scp_aet, job_id, destination)

    app = queue.make_app(db_uri, run_job, run_delivery, min_size=1, max_size=2)
    context.app = app
    stalled_after = settings.jobs_stalled_after
    try:
        async with app.open_async():
            recovery = asyncio.create_task(_recovery_loop(app, pool, stalled_after))
            log.info(
                "processing worker ready",
                extra={"worker": name, "queues": queues or "all", "concurrency": concurrency},
            )
            try:
                await app.run_worker_async(
                    queues=queues,
                    concurrency=concurrency,
                    name=name,
                    wait=True,
                    install_signal_handlers=install_signal_handlers,
                    shutdown_graceful_timeout=settings.process_grace,
                    update_heartbeat_interval=stalled_after / 3,
                    stalled_worker_timeout=stalled_after,
                    listen_notify=True,
                    fetch_job_polling_interval=1.0,
                )
            finally:
                recovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recovery
    finally:
        await pool.close()
    log.info("processing worker stopped", extra={"worker": name})
