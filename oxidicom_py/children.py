"""The child processes ``serve`` keeps running beside its receivers: the processing worker
(``OXIDICOM_PROCESS_IN_SERVE``) and the console (``OXIDICOM_CONSOLE_PORT``, 0: none).

Child processes rather than tasks in a receiving process: a module's folder preparation, an
output check or a console page never compete with C-STOREs for the receivers' event loop, and
each child is stopped and restarted on its own. A child dies with ``serve`` (the kernel signals
it) and is restarted when it dies alone (after 1 s, doubling to 30 s), except when it exits
with a code that says starting it again cannot help (a configuration error, a port in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

from oxidicom_py.settings import Settings

log = logging.getLogger("oxidicom_py.supervisor")

RESTART_FIRST = 1.0
RESTART_MAX = 30.0
CONFIGURATION_ERROR = 2
"""Exit code of a command whose settings are wrong (the same every time)."""
ADDRESS_IN_USE = 3
"""Exit code of ``oxidicom-py console`` when its address and port are taken."""
FINAL_EXIT_CODES = frozenset({CONFIGURATION_ERROR, ADDRESS_IN_USE})


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """``python -m oxidicom_py {command}`` kept running, with ``env`` over this process's."""

    def __init__(self, name: str, command: str, env: Mapping[str, str], stop_timeout: float) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.stop_timeout = stop_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_running())

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oxidicom_py",
            self.command,
            env={**os.environ, **self.env},
            preexec_fn=_die_with_parent,
        )

    async def _keep_running(self) -> None:
        delay = RESTART_FIRST
        while not self._stopping:
            self.proc = await self._spawn()
            log.info("%s started", self.name, extra={"pid": self.proc.pid})
            code = await self.proc.wait()
            if self._stopping:
                return
            if code in FINAL_EXIT_CODES:
                log.error("%s exited and is not restarted (see its error above)", self.name, extra={"exit_code": code})
                return
            log.error("%s exited; starting a new one", self.name, extra={"exit_code": code, "in": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                log.error("%s did not stop in time: killed", self.name, extra={"pid": proc.pid})
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def start_children(settings: Settings, db_uri: str) -> list[Child]:
    """The children these settings want, started (the database is the one ``serve`` uses)."""
    children = []
    if settings.process_in_serve:
        env = {"OXIDICOM_DB_CONNECTION": db_uri, "OXIDICOM_PROCESS_IN_SERVE": "false"}
        children.append(Child("processing worker", "process", env, settings.process_grace + 15))
    if settings.console_port:
        children.append(Child("console", "console", {"OXIDICOM_DB_CONNECTION": db_uri}, 15))
    for child in children:
        child.start()
    return children


async def stop_children(children: list[Child]) -> None:
    await asyncio.gather(*(child.stop() for child in children))
