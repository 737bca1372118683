"""The processing worker ``serve`` starts beside its receivers (``OXIDICOM_PROCESS_IN_SERVE``).

A child process (``oxidicom-py process``) rather than a task in a receiving process: a module's
folder preparation and output checks never compete with C-STOREs for the receivers' event
loop, and the child is stopped, drained and restarted on its own. It dies with ``serve`` (the
kernel signals it) and is restarted when it dies alone (after 1 s, doubling to 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

log = logging.getLogger("oxidicom_py.processing")

RESTART_FIRST = 1.0
RESTART_MAX = 30.0


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class CompanionWorker:
    def __init__(self, db_uri: str, grace: float) -> None:
        self.db_uri = db_uri
        self.grace = grace
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_running())

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "OXIDICOM_DB_CONNECTION": self.db_uri, "OXIDICOM_PROCESS_IN_SERVE": "false"}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "oxidicom_py", "process", env=env, preexec_fn=_die_with_parent
        )

    async def _keep_running(self) -> None:
        delay = RESTART_FIRST
        while not self._stopping:
            self.proc = await self._spawn()
            log.info("processing worker started", extra={"pid": self.proc.pid})
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("processing worker exited; starting a new one", extra={"exit_code": code, "in": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.grace + 15)
            except TimeoutError:
                log.error("processing worker did not stop in time: killed", extra={"pid": proc.pid})
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
