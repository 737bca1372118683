"""A pool of listener processes sharing one listening socket.

The supervisor prepares what workers share (database and schema, a clean staging area),
binds the port once and starts ``OXIDICOM_LISTENER_PROCESSES`` workers that all accept on
that socket: the kernel hands each new connection to a worker that is waiting in
``accept``, so a busy worker takes fewer (unlike SO_REUSEPORT, which spreads by a hash of
the client address). A worker that dies is replaced, after its staged files are removed.
SIGTERM/SIGINT: every worker drains (stops accepting, finishes its associations, flushes
registrations) and exits; then the supervisor stops the embedded database and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Protocol

from oxidicom_py import runtime
from oxidicom_py.settings import Settings
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.supervisor")

RESTART_BACKOFF_MAX = 10.0


class Target(Protocol):
    """What the supervisor runs (made by :class:`oxidicom_py.app.PoolTarget`): it knows nothing
    of the stages, only how to start a worker and whom to tell what happened."""

    def argv(self, index: int, listen_fd: int, ready_fd: int, slots_fd: int) -> list[str]: ...

    async def start(self, db_uri: str) -> None: ...

    def workers_ready(self) -> None: ...

    def worker_died(self, index: int, pid: int) -> int: ...

    async def close(self) -> None: ...


class Supervisor:
    def __init__(self, settings: Settings, target: Target) -> None:
        self.settings = settings
        self.target = target
        self.n = settings.listener_processes
        self.slots_fd = runtime.create_slots(self.n)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.restarts = 0
        self._ready_slots: set[int] = set()
        self._all_ready = asyncio.Event()
        self._telemetry: runtime.TelemetryEndpoint | None = None

    async def run(self) -> int:
        prepared = await runtime.prepare(self.settings)
        try:
            await self.target.start(prepared.db_uri)
            telemetry = runtime.start_endpoint(self.settings, prepared.db_uri, lambda: (self.running(), self.n))
            self._telemetry = telemetry
            try:
                return await self._supervise(prepared.db_uri)
            finally:
                if telemetry is not None:
                    await telemetry.stop()
                await self.target.close()
        finally:
            await prepared.close()

    async def _supervise(self, db_uri: str) -> int:
        sock = runtime.bind_listener(self.settings)
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        loop = asyncio.get_running_loop()
        loop.add_reader(ready_r, self._on_ready_bytes, ready_r)
        stop = asyncio.Event()
        runtime.on_stop_signal(stop.set)
        env = {**os.environ, "OXIDICOM_DB_CONNECTION": db_uri}
        watchers = [asyncio.create_task(self._keep_alive(slot, sock.fileno(), ready_w, env)) for slot in range(self.n)]
        exit_codes: list[int] = []
        try:
            await asyncio.wait(
                [asyncio.create_task(self._all_ready.wait()), asyncio.create_task(stop.wait())],
                timeout=runtime.READY_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self._all_ready.is_set():
                runtime.open_accept_gate(self.slots_fd, self.n)  # no connection before every worker is ready
                self.target.workers_ready()
                host, port = sock.getsockname()[:2]
                log.info(
                    "ready",
                    extra={
                        "ae_title": self.settings.scp_aet,
                        "address": f"{host}:{port}",
                        "files_root": str(self.settings.files_root.resolve()),
                        "processes": self.n,
                        "worker_pids": sorted(p.pid for p in self.procs.values()),
                    },
                )
            elif not stop.is_set():
                log.error("workers did not become ready in time", extra={"ready": len(self._ready_slots)})
                stop.set()
            await stop.wait()
            if self._telemetry is not None:
                self._telemetry.draining()
            await runtime.drain_delay(self.settings.drain_delay)
            log.info("shutting down: draining workers", extra={"processes": len(self.procs)})
            self.stopping = True
            exit_codes = await self._stop_workers(sock)
        finally:
            self.stopping = True
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            loop.remove_reader(ready_r)
            os.close(ready_r)
            os.close(ready_w)
            sock.close()
        clean = bool(exit_codes) and all(code == 0 for code in exit_codes)
        log.info("stopped", extra={"clean": clean, "worker_exit_codes": exit_codes, "restarts": self.restarts})
        return 0 if clean else 1

    def running(self) -> int:
        """Workers that are up and accepting (read from the health endpoint's thread too)."""
        return sum(
            1 for slot, proc in list(self.procs.items()) if proc.returncode is None and slot in self._ready_slots
        )

    def _on_ready_bytes(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            for slot in os.read(fd, 256):
                self._ready_slots.add(slot)
        if len(self._ready_slots) >= self.n:
            self._all_ready.set()
        metrics.WORKERS_ALIVE.set(self.running())

    async def _spawn(self, slot: int, listen_fd: int, ready_fd: int, env: dict[str, str]) -> None:
        args = self.target.argv(slot, listen_fd, ready_fd, self.slots_fd)
        proc = await asyncio.create_subprocess_exec(*args, env=env, pass_fds=(listen_fd, ready_fd, self.slots_fd))
        self.procs[slot] = proc
        log.info("worker started", extra={"worker": slot, "pid": proc.pid})

    async def _keep_alive(self, slot: int, listen_fd: int, ready_fd: int, env: dict[str, str]) -> None:
        backoff = 0.1
        while not self.stopping:
            started = time.monotonic()
            await self._spawn(slot, listen_fd, ready_fd, env)
            proc = self.procs[slot]
            code = await proc.wait()
            self._ready_slots.discard(slot)
            metrics.WORKERS_ALIVE.set(self.running())
            if self.stopping:
                return
            self.restarts += 1
            metrics.WORKER_RESTARTS.inc()
            runtime.reset_slot(self.slots_fd, slot, self.n)  # its associations died with it
            removed = self.target.worker_died(slot, proc.pid)
            log.error(
                "worker died; starting a new one",
                extra={"worker": slot, "pid": proc.pid, "exit_code": code, "staged_removed": removed},
            )
            backoff = 0.1 if time.monotonic() - started > 30 else min(backoff * 2, RESTART_BACKOFF_MAX)
            await asyncio.sleep(backoff)

    async def _stop_workers(self, sock: socket.socket) -> list[int]:
        # Only the workers running now drain; one that died before was already reported and replaced
        # (or is being replaced: its replacement is not started any more).
        procs = [proc for proc in self.procs.values() if proc.returncode is None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        # Each worker closes its copy of the listening socket when it stops accepting; with ours
        # closed too, the port closes then, and a new connection is refused (a balancer sends it
        # elsewhere) instead of waiting in a backlog that nobody reads any more.
        sock.close()
        codes = []
        for proc in procs:
            try:
                codes.append(await asyncio.wait_for(proc.wait(), runtime.DRAIN_TIMEOUT * 2 + 10))
            except TimeoutError:
                log.error("worker did not drain in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                codes.append(await proc.wait())
        return codes
