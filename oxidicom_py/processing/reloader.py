"""The rules in force: ``OXIDICOM_RULES`` read at start-up and again whenever the file changes.

A changed file that is invalid keeps the previous rules in force: the one-line reason is
logged and counted (``oxidicom_rules_reload_errors_total``), and the file is read again at its
next change. The file is looked at once a second (its modification time, size and inode), so
an editor's save-by-rename is seen too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from oxidicom_py.processing import rules
from oxidicom_py.registry.jobs_schema import JOB_STATES
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.processing")

POLL_INTERVAL = 1.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RulesInForce:
    """The current :class:`~oxidicom_py.processing.rules.Rules` of one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = rules.Rules((), {}, str(path))
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload()

    def reload(self) -> bool:
        """Read the file again; True when the new version is in force."""
        self._stamp = _stamp(self.path)
        try:
            loaded = rules.load(self.path)
        except rules.RulesError as e:
            metrics.RULES_RELOAD_ERRORS.inc()
            log.error(
                "rules file not taken, the previous rules stay in force: %s",
                e,
                extra={"rules": len(self.current.rules)},
            )
            return False
        self.current = loaded
        for rule in loaded.rules:  # every rule's series exist from the start: zero, not absent
            metrics.JOB_SECONDS.labels(rule.name)
            metrics.JOBS_LATE.labels(rule.name)
            for state in JOB_STATES:
                metrics.JOBS.labels(rule.name, state)
            for target in rule.send_to:
                for result in ("sent", "failed"):
                    metrics.DELIVERED.labels(target, result)
        log.info(
            "rules in force",
            extra={
                "file": str(self.path),
                "rules": [r.name for r in loaded.rules],
                "destinations": sorted(loaded.destinations),
            },
        )
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if _stamp(self.path) != self._stamp:
                self.reload()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
