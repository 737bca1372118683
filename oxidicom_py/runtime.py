"""What every process of the receiver shares, whatever the process model: the database
prepared (embedded or not, schema in place), the listening socket, signals, the telemetry
endpoint, the association slots, and the constants that are settings in disguise.

The supervisor uses only this module and the settings; the worker's parts are wired in
:mod:`oxidicom_py.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.net import balance
from oxidicom_py.net.server import LISTEN_BACKLOG
from oxidicom_py.net.slots import SharedAssociationSlots
from oxidicom_py.registry.embedded import EmbeddedPostgres, ServerOfAnotherHost
from oxidicom_py.registry.instances import Instance, InstanceIdInUse, keep_beating, stop_beating
from oxidicom_py.registry.migrate import migrate, problems
from oxidicom_py.registry.schema import with_schema
from oxidicom_py.settings import Settings
from oxidicom_py.storage.writer import FilesRoot, staging_folder
from oxidicom_py.telemetry.logs import redact

if TYPE_CHECKING:
    from oxidicom_py.telemetry.endpoint import Endpoint

log = logging.getLogger("oxidicom_py.runtime")

DRAIN_TIMEOUT = 30.0
"""Seconds a worker waits at shutdown for open associations, markers and registrations, each."""
SPAN_FLUSH_TIMEOUT = 5.0
DB_CONNECT_TIMEOUT = 30.0
"""Seconds to connect to the database at start-up (and to open a pool)."""
IO_THREADS = 8
"""Threads for fsync and renames off the event loop, per worker."""
CFIND_THREADS = 8
"""Threads for C-FIND queries to the PACS (pynetdicom blocks), per worker."""
SUPERVISOR_DB_POOL = 2
"""Connections of the supervisor's own housekeeping (reconciliation)."""
READY_TIMEOUT = 60.0
"""Seconds every worker has to become ready at start-up."""


@dataclass
class Prepared:
    """What every worker shares: the database (schema in place), this instance's claim on its
    id (heartbeat running) and a clean staging folder."""

    db_uri: str
    embedded: EmbeddedPostgres | None
    instance: Instance | None = None
    pool: AsyncConnectionPool | None = None
    beating: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Leave the instances table (a clean stop), then stop the embedded database."""
        if self.beating is not None and self.instance is not None and self.pool is not None:
            await stop_beating(self.beating, self.instance, self.pool)
        if self.pool is not None:
            await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def prepare(settings: Settings) -> Prepared:
    embedded: EmbeddedPostgres | None = None
    if settings.db_connection is None:
        if settings.clustered:
            raise StartupError(
                "OXIDICOM_INSTANCE_ID: set, so other receivers may share this one's files root, but the embedded "
                "database cannot be shared: set OXIDICOM_DB_CONNECTION to the PostgreSQL they all use"
            )
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedPostgres(settings.pgdata.resolve())
        try:
            uri = await asyncio.to_thread(embedded.start)
        except ServerOfAnotherHost as e:
            raise StartupError(str(e)) from None
        log.info("using embedded PostgreSQL", extra={"pgdata": str(settings.pgdata.resolve()), "database": uri})
    else:
        uri = settings.db_connection
        log.info("using PostgreSQL", extra={"database": redact(uri)})
    uri = with_schema(uri, settings.db_schema)
    prepared = Prepared(uri, embedded)
    try:
        await check_database(uri, "the embedded database" if embedded is not None else "OXIDICOM_DB_CONNECTION")
        prepared.pool = make_pool(uri, 1)
        await prepared.pool.open(wait=True, timeout=DB_CONNECT_TIMEOUT)
        instance = Instance(settings.instance, settings.files_root.resolve(), settings.instance_stale_after)
        await _schema(settings, uri)
        async with prepared.pool.connection() as conn:
            try:
                await instance.claim(conn)
            except InstanceIdInUse as e:
                raise StartupError(str(e)) from None
        prepared.instance = instance
        files = FilesRoot(settings.files_root, fsync=settings.storage_fsync, instance=settings.instance)
        leftovers = files.clean_instance(legacy_older_than=settings.instance_stale_after)
        prepared.beating = asyncio.create_task(keep_beating(instance, prepared.pool), name="oxidicom-instance")
    except BaseException:
        await prepared.close()
        raise
    log.info(
        "files root ready",
        extra={
            "files_root": str(files.root),
            "instance": settings.instance,
            "fsync": files.fsync,
            "in_memory_filesystem": files.in_memory,
            "stale_staged_removed": leftovers,
        },
    )
    return prepared


async def _schema(settings: Settings, uri: str) -> None:
    """Create or upgrade it (``OXIDICOM_DB_MIGRATE=auto``), or only check it (``off``)."""
    async with await psycopg.AsyncConnection.connect(uri, connect_timeout=int(DB_CONNECT_TIMEOUT)) as conn:
        if settings.db_migrate == "auto":
            built = await migrate(conn)
            if built:
                log.warning("indexes built concurrently on the existing files table", extra={"indexes": built})
            return
        missing = await problems(conn)
    if missing:
        raise StartupError(
            f"OXIDICOM_DB_MIGRATE=off: the database schema is not in place (missing: {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): run `oxidicom-py migrate` once first"
        )


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is the one line to print (it names the setting)."""


async def check_database(uri: str, name: str) -> None:
    """One connection, bounded by DB_CONNECT_TIMEOUT: an unreachable database is one line naming
    ``name`` and the reason, not a pool retrying in silence and a traceback."""
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(uri, connect_timeout=int(DB_CONNECT_TIMEOUT)), DB_CONNECT_TIMEOUT
        )
    except (psycopg.Error, OSError, TimeoutError) as e:
        lines = str(e).strip().splitlines()
        reason = lines[0] if lines else type(e).__name__
        raise StartupError(f"{name}: cannot connect to the database: {reason}") from None
    await conn.close()


POOL_CHECK_IDLE = 1.0
"""A pooled connection back for less than this many seconds is lent without a check query."""

_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_return(conn: psycopg.AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    """Drop connections a database restart left dead, without a round trip per batch: one used a
    moment ago is lent as it is (if it died since, the batch fails and is retried)."""
    if time.monotonic() - _returned_at.get(conn, -POOL_CHECK_IDLE) >= POOL_CHECK_IDLE:
        await AsyncConnectionPool.check_connection(conn)


def make_pool(uri: str, size: int, **options: Any) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        uri,
        min_size=1,
        max_size=size,
        open=False,
        name="oxidicom",
        check=_check_if_idle,
        reset=_note_return,
        **options,
    )


def bind_listener(settings: Settings) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.listener_address, settings.listener_port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


@dataclass
class TelemetryEndpoint:
    endpoint: Endpoint
    heartbeat: asyncio.Task[None]

    def draining(self) -> None:
        """From now on ``/readyz`` answers 503 (a balancer stops sending before the listener closes)."""
        self.endpoint.health.draining = True

    async def stop(self) -> None:
        self.heartbeat.cancel()
        await asyncio.to_thread(self.endpoint.stop)


def start_endpoint(settings: Settings, db_uri: str, workers: Callable[[], tuple[int, int]]) -> TelemetryEndpoint | None:
    """``/metrics``, ``/livez`` and ``/readyz`` on ``OXIDICOM_METRICS_PORT`` (None when unset)."""
    if settings.metrics_port is None:
        return None
    from oxidicom_py.telemetry.endpoint import Endpoint
    from oxidicom_py.telemetry.health import Health

    health = Health(db_uri, staging_folder(settings.files_root.resolve(), settings.instance), workers)
    endpoint = Endpoint(health, settings.metrics_address, settings.metrics_port)
    endpoint.start()
    return TelemetryEndpoint(endpoint, asyncio.create_task(health.heartbeat()))


def on_stop_signal(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, callback)


async def drain_delay(seconds: float) -> None:
    """After the first stop signal: keep accepting ``seconds`` more (``/readyz`` already says
    503, so a balancer stops sending), or until a second signal."""
    if seconds <= 0:
        return
    again = asyncio.Event()
    on_stop_signal(again.set)
    log.info("draining: accepting for %.1f s more while the balancer sees /readyz 503", seconds)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(again.wait(), seconds)


def create_slots(workers: int) -> int:
    """A shared-memory file of association slots and the accept balance for ``workers``
    processes (its descriptor)."""
    return SharedAssociationSlots.create(workers, extra=balance.region_size(workers))


def worker_balance(fd: int, index: int, workers: int) -> balance.SharedBalance:
    """Worker ``index``'s side of the accept balance in the file :func:`create_slots` made."""
    return balance.SharedBalance(fd, SharedAssociationSlots.size(workers), index, workers)


def open_accept_gate(fd: int, workers: int) -> None:
    """Every worker is ready: they may accept connections now (none before)."""
    balance.SharedBalance.open_gate(fd, SharedAssociationSlots.size(workers))


def reset_slot(fd: int, index: int, workers: int) -> None:
    """Give back the slots and connections a dead worker held."""
    SharedAssociationSlots.reset(fd, index)
    balance.SharedBalance.reset(fd, SharedAssociationSlots.size(workers), index)
