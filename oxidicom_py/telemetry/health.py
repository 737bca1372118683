"""Liveness and readiness, as the metrics endpoint reports them.

Alive: the serving process's event loop turned within the last :data:`STALL_SECONDS`.
Ready: alive, the database answers ``SELECT 1``, the files root takes a new file, and every
listener process is running. Each check is bounded in time (a hung network mount makes the
storage check fail after :data:`STORAGE_TIMEOUT_SECONDS`, it never hangs the answer) and the
result is kept for :data:`CACHE_SECONDS`, so a probe storm cannot load the database. Once the
receiver is draining (SIGTERM), readiness fails at once, so a balancer stops sending new
associations before the listener closes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

STALL_SECONDS = 10.0
CACHE_SECONDS = 1.0
DB_TIMEOUT_SECONDS = 2
STORAGE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


class Health:
    def __init__(
        self,
        db_uri: str,
        staging: Path,
        workers: Callable[[], tuple[int, int]],
    ) -> None:
        """``staging``: this instance's staging folder (the storage probe is written there: unique
        to the instance); ``workers``: returns (running, wanted) listener processes; read from
        the HTTP thread."""
        self.db_uri = db_uri
        self.staging = staging
        self.workers = workers
        self._beat = time.monotonic()
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Check]] | None = None
        self._probe: threading.Thread | None = None
        self._probe_started = 0.0
        self._probe_result: Check | None = None
        self.draining = False
        """Set when the receiver stops: ready answers not ready at once, without any check."""

    async def heartbeat(self, interval: float = 1.0) -> None:
        """Run on the event loop for as long as it serves."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(interval)

    def alive(self) -> Check:
        stalled = time.monotonic() - self._beat
        if stalled > STALL_SECONDS:
            return Check(False, f"event loop has not turned for {stalled:.0f} s")
        return Check(True, "event loop turning")

    def ready(self) -> dict[str, Check]:
        if self.draining:
            return {"draining": Check(False, "stopping: finishing open associations, taking no new ones")}
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            checks = {
                "alive": self.alive(),
                "workers": self._workers(),
                "storage": self._storage(),
                "database": self._database(),
            }
            self._cached = (time.monotonic(), checks)
            return checks

    def _workers(self) -> Check:
        running, wanted = self.workers()
        return Check(running >= wanted, f"{running} of {wanted} listener processes running")

    def _storage(self) -> Check:
        """The probe in its own thread, waited for at most STORAGE_TIMEOUT_SECONDS; while one is
        still stuck (a hung mount), no other is started."""
        if self._probe is not None and self._probe.is_alive():
            stuck = time.monotonic() - self._probe_started
            return Check(False, f"writing in {self.staging} has not finished for {stuck:.0f} s (a hung mount?)")
        self._probe_result = None
        self._probe_started = time.monotonic()
        self._probe = threading.Thread(target=self._run_probe, name="oxidicom-ready-probe", daemon=True)
        self._probe.start()
        self._probe.join(STORAGE_TIMEOUT_SECONDS)
        result = self._probe_result
        if result is None:
            return Check(False, f"writing in {self.staging} took over {STORAGE_TIMEOUT_SECONDS:g} s (a hung mount?)")
        return result

    def _run_probe(self) -> None:
        self._probe_result = self._write_probe()

    def _write_probe(self) -> Check:
        probe = self.staging / f".ready-probe-{threading.get_ident()}"
        try:
            if not self.staging.is_dir():  # reaped while this instance looked stale: made again
                self.staging.mkdir(exist_ok=True)  # (not its parents: a missing mount stays an error)
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return Check(False, f"cannot write in {self.staging}: {e.strerror or e}")
        return Check(True, "files root writable")

    def _database(self) -> Check:
        try:
            with psycopg.connect(self.db_uri, connect_timeout=DB_TIMEOUT_SECONDS, autocommit=True) as conn:
                conn.execute(f"SET statement_timeout = {DB_TIMEOUT_SECONDS * 1000}")
                conn.execute("SELECT 1")
        except Exception as e:
            return Check(False, f"database unreachable: {_first_line(e)}")
        return Check(True, "database answers")


def report(checks: dict[str, Check]) -> dict[str, Any]:
    return {
        "ready": all(c.ok for c in checks.values()),
        "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
