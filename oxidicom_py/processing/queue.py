"""The job queue: procrastinate, on our own database, behind a thin interface.

One procrastinate task, :data:`TASK_NAME`, runs one attempt of one ``oxidicom_jobs`` row (its
id is the only argument). What the job is lives in our table; procrastinate only keeps the
schedule (settle windows, retry backoff), the queueing lock (one pending job per rule and
series or study), the worker heartbeats and the retries.

* :func:`defer` inserts the procrastinate job on the caller's connection, so it commits or
  rolls back with the transaction that decided it (the series end, a manual retry).
* :class:`JobRetryStrategy`: a failed attempt says itself whether and when to run again
  (:class:`AttemptFailed`); a job returned at shutdown runs again at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Final

import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from oxidicom_py.delivery.deliver import DeliveryRetry

TASK_NAME: Final = "oxidicom.run_job"
DELIVER_TASK: Final = "oxidicom.deliver"
DEFAULT_QUEUE: Final = "oxidicom"
DELIVERY_QUEUE: Final = "oxidicom-delivery"


class AttemptFailed(Exception):
    """An attempt failed; ``retry_in`` seconds until the next one (None: it was the last)."""

    def __init__(self, reason: str, retry_in: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class ReturnedToQueue(Exception):
    """The worker stopped before the attempt ended: the job goes back to the queue, at once."""


class JobRetryStrategy(BaseRetryStrategy):
    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, AttemptFailed) and exception.retry_in is not None:
            return RetryDecision(retry_in={"seconds": max(0, round(exception.retry_in))})
        if isinstance(exception, DeliveryRetry):
            return RetryDecision(retry_in={"seconds": max(1, round(exception.retry_in))})
        if isinstance(exception, ReturnedToQueue):
            return RetryDecision(retry_in={"seconds": 0})
        return None


RunJob = Callable[[int], Awaitable[None]]
Deliver = Callable[[int, str], Awaitable[None]]


def make_app(
    db_uri: str | None = None, run_job: RunJob | None = None, deliver: Deliver | None = None, **pool_args: Any
) -> procrastinate.App:
    """The procrastinate app: the receivers need it (without a URI) only to defer on their own
    connection; workers give ``db_uri`` and the function that runs an attempt."""
    connector = (
        procrastinate.PsycopgConnector(conninfo=db_uri, **pool_args) if db_uri else procrastinate.PsycopgConnector()
    )
    app = procrastinate.App(connector=connector)

    async def oxidicom_run_job(job_id: int) -> None:
        if run_job is None:  # pragma: no cover - receivers never run a worker on this app
            raise RuntimeError("this process does not run jobs")
        await run_job(job_id)

    async def oxidicom_deliver(job_id: int, destination: str) -> None:
        if deliver is None:  # pragma: no cover
            raise RuntimeError("this process does not deliver")
        try:
            await deliver(job_id, destination)
        except asyncio.CancelledError:  # the worker stops: what was not acknowledged is sent later
            raise ReturnedToQueue("the worker stopped during the delivery") from None

    app.task(name=TASK_NAME, queue=DEFAULT_QUEUE, retry=JobRetryStrategy())(oxidicom_run_job)
    app.task(name=DELIVER_TASK, queue=DELIVERY_QUEUE, retry=JobRetryStrategy())(oxidicom_deliver)
    return app


async def defer_delivery(app: procrastinate.App, conn: psycopg.AsyncConnection, job_id: int, destination: str) -> None:
    """Queue the delivery of a job's pending instances to ``destination`` (one waiting at a time:
    a second request while one waits is the same work)."""
    deferrer = app.tasks[DELIVER_TASK].configure(
        connection=conn, queueing_lock=f"deliver:{job_id}:{destination}", queue=DELIVERY_QUEUE
    )
    try:
        async with conn.transaction():
            await deferrer.defer_async(job_id=job_id, destination=destination)
    except AlreadyEnqueued:
        pass


def queueing_lock(rule: str, key: str) -> str:
    return f"{rule}:{key}"


async def defer(
    app: procrastinate.App,
    conn: psycopg.AsyncConnection,
    job_id: int,
    *,
    lock: str,
    queue: str = DEFAULT_QUEUE,
    delay: float = 0.0,
    priority: int = 0,
) -> int:
    """Queue an attempt of ``oxidicom_jobs`` row ``job_id`` on ``conn`` (in its transaction);
    the procrastinate job id. Raises ``procrastinate.exceptions.AlreadyEnqueued`` if a job
    with the same queueing lock waits already (run it in a savepoint)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(0.0, delay))
    deferrer = app.tasks[TASK_NAME].configure(
        connection=conn, queueing_lock=lock, queue=queue, schedule_at=when, priority=priority
    )
    return await deferrer.defer_async(job_id=job_id)


_RESCHEDULE: Final = """
UPDATE procrastinate_jobs SET scheduled_at = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND status = 'todo'
RETURNING id
"""


async def reschedule(conn: psycopg.AsyncConnection, procrastinate_id: int, delay: float) -> bool:
    """Push a waiting job's start to ``delay`` seconds from now; False if it is no longer waiting."""
    cursor = await conn.execute(_RESCHEDULE, {"id": procrastinate_id, "delay": delay})
    return await cursor.fetchone() is not None


_CANCEL: Final = "SELECT procrastinate_cancel_job_v1(%s, true, false)"


async def cancel(conn: psycopg.AsyncConnection, procrastinate_id: int) -> None:
    """Cancel a waiting job, or ask the worker running it to abort it (its module is killed):
    procrastinate's own cancel function (its trigger tells the worker)."""
    await conn.execute(_CANCEL, (procrastinate_id,))
