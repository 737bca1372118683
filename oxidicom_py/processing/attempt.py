"""One attempt of one job, as a processing worker runs it (the body of procrastinate's task).

1. In one transaction: the job must still be ``queued``; its series must not be receiving
   again (a series that reopened during the settle window cancels it: its next end arms a new
   job); the attempt is counted and the job is ``running``.
2. The job's folder is made (:mod:`~oxidicom_py.processing.workspace`), the module runs
   under its time limit, the outputs are checked.
3. In one transaction: outputs recorded (their UIDs too, for loop protection) and
   ``succeeded``; or ``queued`` again with the backoff (``backoff`` doubling per attempt) while
   attempts remain, else ``failed`` with the reason.

A worker stopped past its grace period returns the job to the queue (the attempt is not
counted); ``oxidicom-py jobs cancel`` of a running job kills the module and leaves it
``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import procrastinate
import psycopg
import pydicom
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.processing import job_store, routing, workspace
from oxidicom_py.processing.facts import SeriesFacts, series_facts, study_facts
from oxidicom_py.processing.queue import AttemptFailed, ReturnedToQueue
from oxidicom_py.processing.rules import DEFAULT_BACKOFF, DEFAULT_TIMEOUT
from oxidicom_py.processing.runners import dispatch
from oxidicom_py.processing.runners.base import TIMED_OUT, RunRequest, RunResult
from oxidicom_py.registry.schema import PACS_TABLE, PACSFILE_TABLE
from oxidicom_py.telemetry import metrics, tracing

log = logging.getLogger("oxidicom_py.processing")

_STORED: Final = f"""
SELECT f.fname, k.identifier FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} k ON k.id = f.pacs_id
WHERE f."SeriesInstanceUID" = ANY(%s) AND k.identifier <> %s AND (%s::text IS NULL OR k.identifier = %s)
ORDER BY f."SeriesInstanceUID", f.fname
"""


@dataclass
class Context:
    """What every attempt of a worker needs."""

    pool: AsyncConnectionPool
    files_root: Path
    jobs_root: Path
    worker: str
    pacs_address: Mapping[str, tuple[str, int]]
    env: Mapping[str, str]
    """Extra environment for modules (e.g. OXIDICOM_CONTAINER_RUNTIME)."""
    app: procrastinate.App | None = None
    """The queue, to defer deliveries on (set once the worker's app exists)."""


def backoff_delay(job: job_store.JobRow) -> float:
    first = float(job.run.get("backoff", DEFAULT_BACKOFF))
    return first * 2 ** max(0, job.attempts - 1)


def short_reason(error: str) -> str:
    if error.startswith(TIMED_OUT):
        return TIMED_OUT
    if error.startswith("exit code"):
        return "exit code"
    if error.startswith("killed by signal"):
        return "killed"
    if error.startswith("outputs rejected"):
        return "outputs rejected"
    return "failed"


class Attempt:
    def __init__(self, context: Context, job_id: int) -> None:
        self.c = context
        self.job_id = job_id

    async def run(self) -> None:
        job, every = await self._start()
        if job is None:
            return
        metrics.JOBS.labels(job.rule, "running").inc()
        span = tracing.start_span(
            "oxidicom.job",
            {
                "oxidicom.job.id": job.id,
                "oxidicom.job.rule": job.rule,
                "oxidicom.job.attempt": job.attempts,
                "dicom.StudyInstanceUID": job.study_uid,
                "dicom.SeriesInstanceUID": ",".join(job.series_uids),
            },
        )
        log.info("job started", extra=self._fields(job))
        if not job.run:  # a forward: the series itself goes to the destinations
            await self._forward(job)
            if span is not None:
                span.end()
            return
        try:
            result, outputs, parsed = await self._execute(job, every)
        except asyncio.CancelledError:
            returned = await asyncio.shield(self._interrupted(job))
            if span is not None:
                span.end()
            if returned:
                raise ReturnedToQueue("the worker stopped before the attempt ended") from None
            raise
        metrics.JOB_SECONDS.labels(job.rule).observe(result.duration)
        try:
            await self._finish(job, result, outputs, parsed)
        finally:
            if span is not None:
                span.set_attribute("oxidicom.job.duration", result.duration)
                if result.error:
                    tracing.set_error(span, result.error)
                span.end()

    def _fields(self, job: job_store.JobRow, **more: Any) -> dict[str, Any]:
        return {"job": job.id, "rule": job.rule, "attempt": job.attempts, "series": job.series_uids, **more}

    async def _start(self) -> tuple[job_store.JobRow | None, list[SeriesFacts]]:
        async with self.c.pool.connection() as conn, conn.transaction():
            job = await job_store.get(conn, self.job_id, lock=True)
            if job is None:
                log.error("job not found in oxidicom_jobs: nothing to run", extra={"job": self.job_id})
                return None, []
            if job.state != "queued":
                log.info("job is not queued: nothing to run", extra={"job": job.id, "state": job.state})
                return None, []
            every = await self._series(conn, job)
            receiving = [s.series_uid for s in every if s.state == "receiving"]
            if receiving:
                await job_store.finish(
                    conn,
                    job,
                    state="cancelled",
                    reason="reopened",
                    error=f"series {', '.join(receiving)} receiving again before the job ran; "
                    "its next end arms a new job",
                )
                metrics.JOBS.labels(job.rule, "cancelled").inc()
                log.info("job cancelled: its series reopened", extra={"job": job.id, "receiving": receiving})
                return None, []
            if job.attempts >= job.max_attempts:
                await job_store.finish(
                    conn, job, state="failed", reason="worker died", error=job.last_error or "no attempt left"
                )
                metrics.JOBS.labels(job.rule, "failed").inc()
                return None, []
            folder = workspace.folder_of(self.c.jobs_root, job.id)
            started = await job_store.start(conn, job.id, self.c.worker, str(folder))
            return started, every

    async def _series(self, conn: psycopg.AsyncConnection, job: job_store.JobRow) -> list[SeriesFacts]:
        if job.level == "study":
            return await study_facts(conn, self.c.files_root, job.study_uid)
        found = []
        for uid in job.series_uids:
            facts = await series_facts(conn, self.c.files_root, job.pacs_identifier or "", uid)
            if facts is not None:
                found.append(facts)
        return found

    def _task(self, job: job_store.JobRow, every: list[SeriesFacts]) -> dict[str, Any]:
        chosen = set(job.series_uids)
        series = {}
        for s in every:
            if s.series_uid not in chosen:
                continue
            sender: dict[str, Any] = {"ae_title": s.pacs}
            if s.pacs in self.c.pacs_address:
                sender["host"], sender["port"] = self.c.pacs_address[s.pacs]
            series[s.series_uid] = {
                "instances": s.received,
                "expected": s.expected,
                "state": s.state,
                "end_reason": s.end_reason,
                "calling_ae": s.pacs,
                "called_ae": s.called_ae,
                "sender": sender,
                "tags": dict(s.tags),
            }
        return {
            "job_id": job.id,
            "rule": job.rule,
            "level": job.level,
            "attempt": job.attempts,
            "study_uid": job.study_uid,
            "roles": job.roles,
            "series": series,
            "settings": job.settings,
            "run": {k: v for k, v in job.run.items() if k not in ("env",)},
        }

    async def _execute(
        self, job: job_store.JobRow, every: list[SeriesFacts]
    ) -> tuple[RunResult, list[workspace.Output], Any]:
        folder = workspace.folder_of(self.c.jobs_root, job.id)
        async with self.c.pool.connection() as conn:
            # a series-level job takes what the sender whose end fired it sent; a study-level one, all
            cursor = await conn.execute(
                _STORED, (job.series_uids, MARKER_PACS, job.pacs_identifier, job.pacs_identifier)
            )
            stored = [row[0] for row in await cursor.fetchall()]
        started = time.monotonic()
        try:
            inputs = await asyncio.to_thread(
                workspace.prepare, folder, self.c.files_root, stored, self._task(job, every)
            )
        except (OSError, ValueError) as e:
            return RunResult(None, time.monotonic() - started, error=f"cannot prepare the job folder: {e}"), [], None
        if inputs.count == 0:
            return RunResult(None, time.monotonic() - started, error="no stored instance of the job's series"), [], None
        request = RunRequest(
            job.id,
            folder,
            job.run,
            float(job.run.get("timeout", DEFAULT_TIMEOUT)),
            {**self.c.env, **{str(k): str(v) for k, v in dict(job.run.get("env") or {}).items()}},
        )
        result = await dispatch.run(request)
        if not result.ok:
            return result, [], None
        try:
            outputs, parsed = await asyncio.to_thread(workspace.check_outputs, request.output_dir, inputs)
        except workspace.OutputsRejected as e:
            return _with_error(result, f"outputs rejected: {e}"), [], None
        async with self.c.pool.connection() as conn:
            known = await job_store.known_outputs(conn, [o.sop_instance_uid for o in outputs])
        if known:
            return (
                _with_error(result, f"outputs rejected: {len(known)} SOP Instance UIDs are outputs of earlier jobs"),
                [],
                None,
            )
        return result, outputs, parsed

    async def _finish(
        self, job: job_store.JobRow, result: RunResult, outputs: list[workspace.Output], parsed: Any
    ) -> None:
        excerpt = result.log_excerpt()
        async with self.c.pool.connection() as conn, conn.transaction():
            if result.ok:
                await job_store.record_outputs(
                    conn, job.id, [(o.sop_instance_uid, o.series_uid, o.study_uid) for o in outputs]
                )
                if job.send_to and self.c.app is not None:
                    folder = workspace.folder_of(self.c.jobs_root, job.id) / "output"
                    files = [
                        routing.Deliverable(o.sop_instance_uid, o.sop_class_uid, str(folder / o.path), None)
                        for o in outputs
                    ]
                    await routing.plan(
                        conn, self.c.app, job.id, job.send_to, files, job.pacs_identifier, self.c.pacs_address
                    )
                await job_store.finish(
                    conn,
                    job,
                    state="succeeded",
                    exit_code=result.exit_code,
                    duration=result.duration,
                    log_excerpt=excerpt,
                    outputs=[o.as_json() for o in outputs],
                    result=parsed,
                )
                metrics.JOBS.labels(job.rule, "succeeded").inc()
                log.info(
                    "job succeeded", extra=self._fields(job, outputs=len(outputs), seconds=round(result.duration, 3))
                )
                return
            assert result.error is not None
            reason = short_reason(result.error)
            delay = backoff_delay(job) if job.attempts < job.max_attempts else None
            await job_store.finish(
                conn,
                job,
                state="failed" if delay is None else "queued",
                reason=reason,
                error=result.error,
                exit_code=result.exit_code,
                duration=result.duration,
                log_excerpt=excerpt,
                delay=delay,
            )
            if delay is None:
                metrics.JOBS.labels(job.rule, "failed").inc()
                log.error("job failed: no attempt left", extra=self._fields(job, error=result.error))
            else:
                log.warning("job attempt failed: retried", extra=self._fields(job, error=result.error, retry_in=delay))
        raise AttemptFailed(result.error, delay)

    async def _forward(self, job: job_store.JobRow) -> None:
        """A rule with ``send_to`` and no ``run``: deliver the stored series unchanged."""
        async with self.c.pool.connection() as conn:
            cursor = await conn.execute(
                _STORED, (job.series_uids, MARKER_PACS, job.pacs_identifier, job.pacs_identifier)
            )
            stored = [(row[0], row[1]) for row in await cursor.fetchall()]
        files = await asyncio.to_thread(_deliverables, self.c.files_root, stored)
        async with self.c.pool.connection() as conn, conn.transaction():
            made = 0
            if self.c.app is not None:
                made = await routing.plan(
                    conn, self.c.app, job.id, job.send_to, files, job.pacs_identifier, self.c.pacs_address
                )
            await job_store.finish(conn, job, state="succeeded", exit_code=0, duration=0.0, outputs=[])
        metrics.JOBS.labels(job.rule, "succeeded").inc()
        log.info("series forwarded (deliveries queued)", extra=self._fields(job, deliveries=made))

    async def _interrupted(self, job: job_store.JobRow) -> bool:
        """The attempt was cancelled: by ``jobs cancel`` (the row says cancelled already), or by
        the worker's shutdown (back to the queue, the attempt not counted)."""
        async with self.c.pool.connection() as conn, conn.transaction():
            now = await job_store.get(conn, job.id, lock=True)
            if now is None or now.state == "cancelled":
                log.info("job cancelled while running: its module was stopped", extra=self._fields(job))
                return False
            await job_store.finish(
                conn,
                job,
                state="queued",
                reason="returned",
                error="the worker stopped before the attempt ended: returned to the queue",
                attempts=job.attempts - 1,
                delay=0.0,
            )
        log.warning("job returned to the queue: the worker stopped", extra=self._fields(job))
        return True


def _deliverables(files_root: Path, stored: list[tuple[str, str]]) -> list[routing.Deliverable]:
    out: dict[str, routing.Deliverable] = {}
    for fname, origin in stored:
        path = files_root / fname
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"])
        sop = str(ds.SOPInstanceUID)
        out.setdefault(sop, routing.Deliverable(sop, str(ds.SOPClassUID), str(path.resolve()), origin))
    return list(out.values())


def _with_error(result: RunResult, error: str) -> RunResult:
    return RunResult(result.exit_code, result.duration, result.stdout, result.stderr, error)
