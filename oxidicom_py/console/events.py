"""Live updates for the console's pages: one connection LISTENs to ``oxidicom_series`` (every
change of a progress row) and ``oxidicom_jobs`` (every change of a job's state) and hands each
notification to every open page, as server-sent events. PatientIDs in the payloads are hashed
as everywhere in the console; a page that cannot keep up loses events, never slows the others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import psycopg

from oxidicom_py.console.queries import mask_patient
from oxidicom_py.registry.jobs_schema import JOBS_CHANNEL
from oxidicom_py.registry.schema import PROGRESS_CHANNEL

log = logging.getLogger("oxidicom_py.console")

EVENTS = {PROGRESS_CHANNEL: "series", JOBS_CHANNEL: "job"}
"""LISTEN channel -> the event name pages receive."""
QUEUE_SIZE = 1000
KEEPALIVE = 15.0
RECONNECT_MAX = 5.0


class Broadcaster:
    def __init__(self, db_uri: str, show_phi: bool) -> None:
        self.db_uri = db_uri
        self.show_phi = show_phi
        self._pages: set[asyncio.Queue[tuple[str, str]]] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="oxidicom-console-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db_uri, autocommit=True) as conn:
                    for channel in EVENTS:
                        await conn.execute(f"LISTEN {channel}")
                    self.listening.set()
                    delay = 0.2
                    async for note in conn.notifies():
                        self._publish(note.channel, note.payload)
            except psycopg.OperationalError as e:
                self.listening.clear()
                log.warning("console: lost the database for live updates; reconnecting: %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    def _publish(self, channel: str, payload: str) -> None:
        event = EVENTS.get(channel)
        if event is None:
            return
        if event == "series" and not self.show_phi:
            try:
                data = json.loads(payload)
                data["PatientID"] = mask_patient(data.get("PatientID"), False)
                payload = json.dumps(data)
            except (ValueError, AttributeError):
                return  # not ours: never pass on what could not be masked
        for queue in list(self._pages):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((event, payload))

    async def stream(self) -> AsyncIterator[str]:
        """One page's server-sent events (and a comment every :data:`KEEPALIVE` seconds)."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(QUEUE_SIZE)
        self._pages.add(queue)
        try:
            yield ": connected\n\n"
            while True:
                try:
                    event, payload = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield f"event: {event}\ndata: {payload}\n\n"
        finally:
            self._pages.discard(queue)
