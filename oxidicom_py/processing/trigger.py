"""From a series end to jobs: the end hook that evaluates the rules and defers jobs.

It runs inside the transaction that records the series end (the registrar's, or the
quiescence sweep's), just before it commits: a job exists exactly when its end committed. It
runs in a savepoint, and a failure there (a bug, an unreadable file) is logged and counted
(``oxidicom_jobs_trigger_errors_total``) without undoing the registration.

For each series that ended:

* a series that is the output of one of our jobs fires nothing (loop protection);
* series-level rules that match get a job, if the end is trustworthy (or the rule says
  ``on_incomplete: run``): at once when the PACS' count was reached, after the rule's
  ``settle`` window otherwise;
* a waiting job of the same rule and series (in its settle window) is re-armed, not doubled;
  a job that already ran gets a successor only with ``on_late: rerun`` (else a log line and
  ``oxidicom_jobs_late_total``);
* study-level rules are evaluated once every series of the study seen so far has ended; the
  job waits the settle window (a new series in it re-arms it, see the worker's start check).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued

from oxidicom_py.completion.events import SeriesEnded
from oxidicom_py.completion.progress import series_lock_key
from oxidicom_py.processing import job_store, queue
from oxidicom_py.processing.facts import SeriesFacts, series_facts, study_facts
from oxidicom_py.processing.reloader import RulesInForce
from oxidicom_py.processing.rules import Rule, Rules, explain, roles_filled
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.processing")


class Trigger:
    """The end hook (:func:`oxidicom_py.completion.progress.on_end_in_transaction`)."""

    def __init__(self, rules: RulesInForce, app: procrastinate.App, files_root: Path) -> None:
        self.rules = rules
        self.app = app
        self.files_root = files_root

    async def __call__(self, conn: psycopg.AsyncConnection, events: Sequence[SeriesEnded]) -> None:
        current = self.rules.current
        if not any(rule.run or rule.send_to for rule in current.rules):
            return
        try:
            async with conn.transaction():  # a savepoint: a failure here leaves the end standing
                await self._ended(conn, current, events)
        except psycopg.OperationalError:
            raise  # the connection is gone: the whole transaction is retried, with us in it
        except Exception:
            metrics.JOBS_TRIGGER_ERRORS.inc()
            log.exception(
                "rules could not be applied to ended series: no job for them",
                extra={"series": [e.series_uid for e in events]},
            )

    async def _ended(self, conn: psycopg.AsyncConnection, current: Rules, events: Sequence[SeriesEnded]) -> None:
        studies: set[str] = set()
        study_rules = [r for r in current.rules if r.level == "study" and (r.run or r.send_to)]
        for event in events:
            facts = await series_facts(conn, self.files_root, event.pacs, event.series_uid)
            if facts is None:
                continue
            producer = await job_store.output_of(conn, event.series_uid)
            if producer is not None:
                log.info(
                    "series is the output of one of our jobs: no rule fires for it",
                    extra={"SeriesInstanceUID": event.series_uid, "job": producer},
                )
                continue
            for rule in current.rules:
                if rule.level == "series" and (rule.run or rule.send_to) and self._eligible(rule, facts):
                    await self._arm(
                        conn,
                        rule,
                        key=facts.series_uid,
                        pacs=facts.pacs,
                        study_uid=facts.study_uid,
                        roles={"series": facts.series_uid},
                        delay=0.0 if facts.counted else rule.settle,
                    )
            if study_rules:
                studies.add(facts.study_uid)
        for study_uid in sorted(studies):
            await self._study(conn, study_rules, study_uid)

    @staticmethod
    def _eligible(rule: Rule, facts: SeriesFacts) -> bool:
        if not facts.trustworthy and rule.on_incomplete != "run":
            log.info(
                "series ended incomplete: rule not applied (on_incomplete: skip)",
                extra={
                    "rule": rule.name,
                    "SeriesInstanceUID": facts.series_uid,
                    "state": facts.state,
                    "reason": facts.end_reason,
                    "received": facts.received,
                    "expected": facts.expected,
                },
            )
            return False
        return not explain(rule, facts.for_rules(), facts.received)

    async def _study(self, conn: psycopg.AsyncConnection, study_rules: Sequence[Rule], study_uid: str) -> None:
        # one evaluation of a study at a time, whoever ends its series
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (series_lock_key("study:" + study_uid),))
        every = await study_facts(conn, self.files_root, study_uid)
        if any(s.state == "receiving" for s in every):
            return  # the last series to end evaluates the study
        ours = {s.series_uid for s in every if await job_store.output_of(conn, s.series_uid) is not None}
        for rule in study_rules:
            pool = {
                s.series_uid: (s.for_rules(), s.received)
                for s in every
                if s.series_uid not in ours
                and (s.trustworthy or rule.on_incomplete == "run")
                and not rule.selector.reasons_against(s.for_rules(), s.received)
            }
            filled = roles_filled(rule, pool)
            if filled is None:
                log.info(
                    "study ended: a role of the rule has no complete series",
                    extra={"rule": rule.name, "StudyInstanceUID": study_uid},
                )
                continue
            await self._arm(conn, rule, key=study_uid, pacs=None, study_uid=study_uid, roles=filled, delay=rule.settle)

    async def _arm(
        self,
        conn: psycopg.AsyncConnection,
        rule: Rule,
        *,
        key: str,
        pacs: str | None,
        study_uid: str,
        roles: Mapping[str, str],
        delay: float,
    ) -> None:
        series_uids = sorted(set(roles.values()))
        fields = {"rule": rule.name, "rule_level": rule.level, "key": key, "StudyInstanceUID": study_uid}
        previous = await job_store.latest(conn, rule.name, key)
        if previous is not None and previous.state == "queued" and previous.attempts == 0:
            pj = previous.procrastinate_job_id
            if pj is not None and await queue.reschedule(conn, pj, delay):
                await job_store.rearm(conn, previous.id, delay, series_uids, roles)
                log.info("job re-armed: its series ended again", extra={**fields, "job": previous.id, "settle": delay})
                return
        if previous is not None and previous.state != "cancelled" and rule.on_late != "rerun":
            metrics.JOBS_LATE.labels(rule.name).inc()
            log.warning(
                "more instances arrived after the job ran: no new job (the rule says on_late: log)",
                extra={**fields, "job": previous.id, "job_state": previous.state},
            )
            return
        run = dict(rule.run or {})
        try:
            async with conn.transaction():
                job_id = await job_store.create(
                    conn,
                    rule=rule.name,
                    level=rule.level,
                    key=key,
                    pacs=pacs,
                    study_uid=study_uid,
                    series_uids=series_uids,
                    roles=roles,
                    max_attempts=1 + rule.retries,
                    run=run,
                    settings=rule.settings,
                    delay=delay,
                    send_to=rule.targets,
                    why="late instances (on_late: rerun)"
                    if previous is not None and previous.state != "cancelled"
                    else "series ended"
                    if rule.level == "series"
                    else "study ended",
                )
                pj = await queue.defer(
                    self.app,
                    conn,
                    job_id,
                    lock=queue.queueing_lock(rule.name, key),
                    queue=str(run.get("queue", queue.DEFAULT_QUEUE)),
                    delay=delay,
                    priority=int(run.get("priority", 0)),
                )
                await job_store.set_procrastinate_id(conn, job_id, pj)
        except AlreadyEnqueued:
            log.warning("a job of this rule for it waits already (a retry): no second one", extra=fields)
            return
        metrics.JOBS.labels(rule.name, "queued").inc()
        log.info("job queued", extra={**fields, "job": job_id, "settle": delay, "series": series_uids})
