"""LONK messages to NATS (nats-py), beside reception: a bounded queue on the event loop and one
task that connects (again and again while the server is away) and publishes in order.

Nothing here can hold up an association: a message is queued or, the queue being full,
dropped and counted; core NATS keeps no messages anyway (a subscriber that was away misses
them, as with oxidicom).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from oxidicom_py.cube.lonk import DONE, SubjectLimiter, error_payload, progress_payload, subject_of
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.cube.lonk")

QUEUE_SIZE = 10_000
"""Messages waiting for NATS per process (about 60 bytes each) before new ones are dropped."""
RECONNECT_MAX = 5.0
FLUSH_TIMEOUT = 2.0
"""At shutdown: how long queued messages may still take to go out."""


class LonkPublisher:
    def __init__(self, address: str, root: str, interval: float, dev_sleep: float | None = None) -> None:
        self.address = address
        self.root = root
        self.limiter = SubjectLimiter(interval)
        self.dev_sleep = dev_sleep
        self._queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._nc: Any = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="oxidicom-lonk")

    # -- what the sink says ---------------------------------------------------------------
    def progress(self, pacs: str, series_uid: str, count: int, *, required: bool) -> None:
        subject = subject_of(self.root, pacs, series_uid)
        if required or self.limiter.allow(subject, time.monotonic()):
            self._put(subject, progress_payload(count), "progress")
        else:
            metrics.LONK_MESSAGES.labels("progress", "limited").inc()

    def error(self, pacs: str, series_uid: str, text: str) -> None:
        self._put(subject_of(self.root, pacs, series_uid), error_payload(text), "error")

    def done(self, pacs: str, series_uid: str, count: int) -> None:
        """The series' last count in the association, then done (both always sent)."""
        subject = subject_of(self.root, pacs, series_uid)
        self._put(subject, progress_payload(count), "progress")
        self.limiter.forget(subject)
        self._put(subject, DONE, "done")

    def _put(self, subject: str, payload: bytes, kind: str) -> None:
        try:
            self._queue.put_nowait((subject, payload, kind))
        except asyncio.QueueFull:
            metrics.LONK_MESSAGES.labels(kind, "dropped").inc()

    # -- sending ---------------------------------------------------------------------------
    async def _connect(self) -> Any:
        import nats

        delay = 0.2
        while True:
            try:
                return await nats.connect(
                    servers=[self.address],
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    name="oxidicom_py",
                )
            except Exception as e:  # unreachable, refused, TLS: try again; messages wait in the queue
                log.warning("NATS unreachable; LONK messages wait: %s", e, extra={"nats": self.address})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    async def _run(self) -> None:
        self._nc = await self._connect()
        log.info("connected to NATS for LONK progress", extra={"nats": self.address, "root_subject": self.root})
        while True:
            subject, payload, kind = await self._queue.get()
            try:
                await self._nc.publish(subject, payload)
            except Exception as e:  # the client's own buffer is full while it reconnects
                metrics.LONK_MESSAGES.labels(kind, "failed").inc()
                log.debug("LONK message not sent: %s", e, extra={"subject": subject})
            else:
                metrics.LONK_MESSAGES.labels(kind, "sent").inc()
            finally:
                self._queue.task_done()
            if self.dev_sleep:
                log.info("OXIDICOM_DEV_SLEEP: pausing %.3f s after a LONK message (debugging only)", self.dev_sleep)
                await asyncio.sleep(self.dev_sleep)

    async def _on_error(self, e: Exception) -> None:
        log.debug("NATS client error: %s", e)

    async def _on_disconnected(self) -> None:
        log.warning("NATS connection lost; reconnecting", extra={"nats": self.address})

    async def _on_reconnected(self) -> None:
        log.info("NATS connection back", extra={"nats": self.address})

    async def close(self) -> None:
        """Let queued messages go out (bounded), then close the connection."""
        if self._task is None:
            return
        if self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), FLUSH_TIMEOUT)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        left = self._queue.qsize()
        if left:
            log.warning("LONK messages not sent at shutdown", extra={"messages": left})
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.flush(), FLUSH_TIMEOUT)
            with contextlib.suppress(Exception):
                await self._nc.close()
