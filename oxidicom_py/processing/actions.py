"""What a person may do to a job or its deliveries, from the command line (``oxidicom-py jobs``,
``oxidicom-py deliveries``) or the console: cancel a job, queue a failed one again, queue a
job's failed deliveries again. Each runs in one transaction with the job's row locked, and says
what it did; one that does not apply raises :class:`ActionRefused` with the reason."""

from __future__ import annotations

import psycopg
from procrastinate.exceptions import AlreadyEnqueued

from oxidicom_py.delivery import records
from oxidicom_py.processing import job_store, queue


class ActionRefused(Exception):
    """The action does not apply (no such job, wrong state): the message says why."""


class NotFound(ActionRefused):
    pass


async def cancel_job(conn: psycopg.AsyncConnection, job_id: int, who: str) -> str:
    async with conn.transaction():
        job = await job_store.get(conn, job_id, lock=True)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state not in ("queued", "running"):
            raise ActionRefused(f"job {job.id} is {job.state}: nothing to cancel")
        await job_store.finish(conn, job, state="cancelled", reason="cancelled", error=f"cancelled by {who}")
        if job.procrastinate_job_id is not None:
            await queue.cancel(conn, job.procrastinate_job_id)
    return f"job {job.id} cancelled" + (" (its module is being stopped)" if job.state == "running" else "")


async def retry_job(conn: psycopg.AsyncConnection, job_id: int) -> str:
    try:
        async with conn.transaction():
            job = await job_store.get(conn, job_id, lock=True)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state not in ("failed", "cancelled"):
                raise ActionRefused(f"job {job.id} is {job.state}: only failed or cancelled jobs are retried")
            retries = int(job.run.get("retries", 0))
            await conn.execute(
                "UPDATE oxidicom_jobs SET max_attempts = attempts + 1 + %s WHERE id = %s", (retries, job.id)
            )
            await job_store.finish(conn, job, state="queued", reason="retried", error=None, delay=0.0)
            pj = await queue.defer(
                queue.make_app(),
                conn,
                job.id,
                lock=queue.queueing_lock(job.rule, job.job_key),
                queue=str(job.run.get("queue", queue.DEFAULT_QUEUE)),
            )
            await job_store.set_procrastinate_id(conn, job.id, pj)
    except AlreadyEnqueued:
        raise ActionRefused("a job of that rule for the same series waits already") from None
    return f"job {job.id} queued again ({1 + retries} more attempts)"


async def retry_deliveries(conn: psycopg.AsyncConnection, job_id: int) -> str:
    async with conn.transaction():
        destinations = await records.reopen_failed(conn, job_id)
        for destination in destinations:
            await queue.defer_delivery(queue.make_app(), conn, job_id, destination)
    if not destinations:
        raise ActionRefused(f"job {job_id} has no failed delivery")
    return f"job {job_id}: failed deliveries queued again to {', '.join(destinations)}"


async def job_of_delivery(conn: psycopg.AsyncConnection, delivery_id: int) -> int:
    row = await (await conn.execute("SELECT job_id FROM oxidicom_deliveries WHERE id = %s", (delivery_id,))).fetchone()
    if row is None:
        raise NotFound(f"no delivery {delivery_id}")
    return int(row[0])
