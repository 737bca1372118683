"""Registration tasks to CUBE's Celery broker, on a thread of their own: Celery's client
(``send_task``: message protocol 2, JSON, the named queue) with a bounded queue in front.

A broker outage never reaches reception: :meth:`CelerySender.submit` only appends to the queue.
The thread sends in order, one attempt at a time; a failed attempt is retried with backoff
(0.5 s doubling to 30 s) until ``give_up_after`` seconds after the task was queued. A task
beyond the queue's bound or past that time is dropped, logged with its series and counted;
the series stays in ``oxidicom_series_progress`` and its files in storage.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from oxidicom_py.cube.registration_task import TASK_NAME
from oxidicom_py.telemetry import metrics
from oxidicom_py.telemetry.logs import redact

log = logging.getLogger("oxidicom_py.cube.celery")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 4.0


@dataclass(slots=True)
class _Task:
    kwargs: dict[str, Any]
    queued: float
    association: str
    attempts: int = 0


def _fields(task: _Task) -> dict[str, Any]:
    k = task.kwargs
    return {
        "association": task.association,
        "pacs_name": k["pacs_name"],
        "SeriesInstanceUID": k["SeriesInstanceUID"],
        "ndicom": k["ndicom"],
        "attempts": task.attempts,
    }


class CelerySender:
    def __init__(self, broker: str, queue: str, *, max_pending: int, give_up_after: float) -> None:
        from celery import Celery

        self.broker = broker
        self.queue = queue
        self.max_pending = max_pending
        self.give_up_after = give_up_after
        self.app = Celery("oxidicom_py", broker=broker, set_as_current=False)
        self.app.conf.update(
            task_protocol=2,
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=CONNECT_TIMEOUT,
            broker_connection_retry_on_startup=False,
            broker_connection_max_retries=0,
            broker_transport_options={"max_retries": 0, "socket_connect_timeout": CONNECT_TIMEOUT},
        )
        self._pending: collections.deque[_Task] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="oxidicom-celery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, kwargs: dict[str, Any], association: str) -> None:
        """Queue one task (never blocks)."""
        task = _Task(kwargs, time.monotonic(), association)
        with self._cond:
            if len(self._pending) >= self.max_pending:
                metrics.CELERY_TASKS.labels("dropped").inc()
                log.error(
                    "registration task dropped: OXIDICOM_CELERY_MAX_PENDING tasks already wait for the broker "
                    "(the series stays in oxidicom_series_progress; its files are in storage)",
                    extra={**_fields(task), "path": kwargs["path"], "broker": redact(self.broker)},
                )
                return
            self._pending.append(task)
            metrics.CELERY_PENDING.set(len(self._pending))
            self._cond.notify()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                task = self._pending[0]
            task.attempts += 1
            try:
                result = self.app.send_task(
                    TASK_NAME, kwargs=task.kwargs, queue=self.queue, routing_key=self.queue, retry=False
                )
            except Exception as e:  # broker away: keep the task, wait, try again
                metrics.CELERY_TASKS.labels("retried").inc()
                if not self._failing:
                    log.warning(
                        "cannot send registration tasks to the broker; they wait and are retried: %s",
                        e,
                        extra={"broker": redact(self.broker), "pending": len(self._pending)},
                    )
                    self._failing = True
                if time.monotonic() - task.queued > self.give_up_after or self._past_deadline():
                    self._drop(task, "not sent within OXIDICOM_CELERY_GIVE_UP_AFTER or before shutdown")
                    continue
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            if self._failing:
                log.info("broker reachable again: registration tasks flow", extra={"pending": len(self._pending)})
                self._failing = False
            with self._cond:
                self._pending.popleft()
                metrics.CELERY_PENDING.set(len(self._pending))
            metrics.CELERY_TASKS.labels("sent").inc()
            log.info("registration task sent", extra={**_fields(task), "task_id": result.id, "queue": self.queue})

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _drop(self, task: _Task, why: str) -> None:
        with self._cond:
            if self._pending and self._pending[0] is task:
                self._pending.popleft()
            metrics.CELERY_PENDING.set(len(self._pending))
        metrics.CELERY_TASKS.labels("dropped").inc()
        log.error(
            "registration task dropped: %s (the series stays in oxidicom_series_progress; its files are in storage)",
            why,
            extra={**_fields(task), "path": task.kwargs["path"]},
        )

    def close(self, timeout: float) -> None:
        """Send what is queued for up to ``timeout`` seconds (blocking: call it off the loop);
        what is still queued then is dropped, logged and counted."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + CONNECT_TIMEOUT + 1)
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        for task in left:
            metrics.CELERY_TASKS.labels("dropped").inc()
            log.error(
                "registration task not sent before shutdown", extra={**_fields(task), "path": task.kwargs["path"]}
            )
        self.app.close()
