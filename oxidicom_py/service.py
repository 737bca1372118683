"""The receiver's lifecycle: prepare the shared parts, run a worker (listener + storage +
registrar) until told to stop, drain.

``serve`` runs everything in one process when ``OXIDICOM_LISTENER_PROCESSES`` is 1;
otherwise :mod:`oxidicom_py.supervisor` prepares once and runs the workers as processes
sharing one listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.completion import progress
from oxidicom_py.completion.tracker import CFindSettings, Tracker
from oxidicom_py.net import tls
from oxidicom_py.net.association import AcceptorConfig
from oxidicom_py.net.negotiation import AcceptancePolicy
from oxidicom_py.net.pynetdicom_scp import PynetdicomListener
from oxidicom_py.net.server import Listener
from oxidicom_py.net.slots import SharedAssociationSlots
from oxidicom_py.registry.embedded import EmbeddedPostgres
from oxidicom_py.registry.reconcile import Reconciler
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import ensure_schema
from oxidicom_py.settings import Settings
from oxidicom_py.storage.ingest import Ingest
from oxidicom_py.storage.writer import FilesRoot
from oxidicom_py.telemetry import metrics, tracing

if TYPE_CHECKING:
    from oxidicom_py.telemetry.endpoint import Endpoint

log = logging.getLogger("oxidicom_py.service")

DRAIN_TIMEOUT = 30.0
SPAN_FLUSH_TIMEOUT = 5.0
DB_CONNECT_TIMEOUT = 30.0


def redact(uri: str) -> str:
    """A connection string without its password, for logs."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


@dataclass
class Prepared:
    """What every worker shares: the database (schema in place) and a clean staging area."""

    db_uri: str
    embedded: EmbeddedPostgres | None

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


async def prepare(settings: Settings) -> Prepared:
    embedded: EmbeddedPostgres | None = None
    if settings.db_connection is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedPostgres(settings.pgdata.resolve())
        uri = await asyncio.to_thread(embedded.start)
        log.info("using embedded PostgreSQL", extra={"pgdata": str(settings.pgdata.resolve()), "database": uri})
    else:
        uri = settings.db_connection
        log.info("using PostgreSQL", extra={"database": redact(uri)})
    try:
        await check_database(uri, "the embedded database" if embedded is not None else "OXIDICOM_DB_CONNECTION")
        pool = make_pool(uri, 1)
        await pool.open(wait=True, timeout=DB_CONNECT_TIMEOUT)
        try:
            async with pool.connection() as conn:
                await ensure_schema(conn)
        finally:
            await pool.close()
        files = FilesRoot(settings.files_root, fsync=settings.storage_fsync)
        leftovers = files.clean_staging()
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    log.info(
        "files root ready",
        extra={
            "files_root": str(files.root),
            "fsync": files.fsync,
            "in_memory_filesystem": files.in_memory,
            "stale_staged_removed": leftovers,
        },
    )
    return Prepared(uri, embedded)


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


def make_pool(uri: str, size: int) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        uri,
        min_size=1,
        max_size=size,
        open=False,
        name="oxidicom",
        check=AsyncConnectionPool.check_connection,  # drop connections a database restart left dead
    )


def bind_listener(settings: Settings) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.listener_address, settings.listener_port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@dataclass
class Worker:
    listener: Listener | PynetdicomListener
    ingest: Ingest
    registrar: Registrar
    pool: AsyncConnectionPool
    executor: ThreadPoolExecutor
    address: tuple[str, int]
    tracker: Tracker
    cfind_executor: ThreadPoolExecutor
    sweeper: asyncio.Task[None]
    sampler: asyncio.Task[None]


async def start_worker(
    settings: Settings,
    db_uri: str,
    sock: socket.socket,
    *,
    db_pool: int,
    max_associations: int,
    slots: SharedAssociationSlots | None = None,
) -> Worker:
    """Registrar, storage and listener of one process, accepting on ``sock``. ``slots``: the
    association limit shared with the other workers (else ``max_associations`` of this one)."""
    ssl_context = tls.server_context(settings)  # first: a bad certificate leaves nothing half-started
    pool = make_pool(db_uri, db_pool)
    await pool.open(wait=True, timeout=DB_CONNECT_TIMEOUT)
    registrar = Registrar(
        pool,
        batch_size=settings.db_batch_size,
        linger=settings.db_linger_ms / 1000,
        max_concurrent_batches=db_pool,
        logger=logging.getLogger("oxidicom_py.registry"),
        on_inserted=progress.count_inserted,
        on_begin=progress.lock_series,
    )
    await registrar.start()
    files = FilesRoot(settings.files_root, fsync=settings.storage_fsync)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="oxidicom-io")
    cfind_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="oxidicom-cfind")
    tracker = Tracker(
        files,
        registrar,
        CFindSettings(
            our_aet=settings.scp_aet,
            pacs_address=settings.pacs_address,
            connect_timeout=settings.cfind_connect_timeout,
            response_timeout=settings.cfind_timeout,
        ),
        cfind_executor,
        executor if files.fsync else None,
    )
    ingest = Ingest(files, registrar.submit, executor if files.fsync else None, tracker)
    config = AcceptorConfig(
        ae_title=settings.scp_aet,
        max_pdu_length=settings.scp_max_pdu_length,
        strict=settings.scp_strict,
        policy=AcceptancePolicy(promiscuous=settings.scp_promiscuous, uncompressed_only=settings.scp_uncompressed_only),
        artim_timeout=settings.scp_artim_timeout,
        allowed_calling_aets=settings.scp_allowed_aets,
        allowed_networks=settings.scp_allowed_networks,
        check_called_aet=settings.scp_check_called_aet,
        idle_timeout=settings.scp_idle_timeout or None,
        pdu_timeout=settings.scp_pdu_timeout or None,
    )
    listener: Listener | PynetdicomListener
    if settings.scp_implementation == "pynetdicom":
        # pynetdicom counts its own associations: the limit is divided between the workers
        share = max_associations if slots is None else max(1, -(-max_associations // slots.workers))
        listener = PynetdicomListener(config, ingest.association, max_associations=share, temp_dir=files.staging)
    else:
        listener = Listener(
            config,
            ingest.association,
            max_associations=max_associations,
            slots=slots,
            overloaded=_backlog_check(registrar, settings.db_max_pending),
        )
    address = await listener.start_on(sock, ssl=ssl_context)
    sweeper = asyncio.create_task(_sweep_quiet_series(pool, settings.series_quiescence))
    sampler = asyncio.create_task(_sample_gauges(registrar))
    return Worker(listener, ingest, registrar, pool, executor, address, tracker, cfind_executor, sweeper, sampler)


async def drain(worker: Worker, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Stop accepting, let open associations finish, flush registrations, release everything.

    Returns True when everything finished within ``timeout``.
    """
    clean = True
    await worker.listener.stop_accepting()
    try:
        await asyncio.wait_for(worker.ingest.idle.wait(), timeout)
    except TimeoutError:
        clean = False
        log.warning("associations still open at shutdown", extra={"open": len(worker.ingest.active)})
    try:
        await asyncio.wait_for(worker.tracker.idle(), timeout)
    except TimeoutError:
        clean = False
        log.warning("series markers still pending at shutdown", extra={"pending": len(worker.tracker.tasks)})
    worker.sweeper.cancel()
    try:
        await asyncio.wait_for(worker.registrar.close(), timeout)
    except TimeoutError:
        clean = False
        log.error("registrations still pending at shutdown", extra={"pending": worker.registrar.pending})
    worker.sampler.cancel()
    metrics.REGISTRATION_QUEUE_DEPTH.set(worker.registrar.pending)
    try:
        await asyncio.wait_for(worker.ingest.spans_ended(), SPAN_FLUSH_TIMEOUT)
    except TimeoutError:
        log.warning("association spans still open at shutdown", extra={"open": len(worker.ingest.span_tasks)})
    await worker.pool.close()
    worker.executor.shutdown(wait=True)
    worker.cfind_executor.shutdown(wait=False, cancel_futures=True)
    await asyncio.to_thread(tracing.shutdown)
    return clean


def _backlog_check(registrar: Registrar, limit: int) -> Callable[[], str | None] | None:
    """Refuse new associations (transient) while more rows than ``limit`` wait for the database:
    memory stays bounded during a long outage, and senders retry later. 0: never."""
    if not limit:
        return None

    def check() -> str | None:
        pending = registrar.pending
        return f"{pending} rows wait for the database (OXIDICOM_DB_MAX_PENDING={limit})" if pending > limit else None

    return check


def _freeze_start_up_objects() -> None:
    """Move everything start-up allocated (modules, the OpenTelemetry SDK, pydicom's
    dictionaries) out of the collector's sight: a full collection in the middle of an
    association then walks only what receiving allocates (measured: 40-55 ms pauses with
    tracing on, 11-25 ms without, about halved by this)."""
    gc.collect()
    gc.freeze()


async def _sample_gauges(registrar: Registrar, interval: float = 1.0) -> None:
    """Gauges that would cost a write per instance if kept exact are sampled instead."""
    while True:
        metrics.REGISTRATION_QUEUE_DEPTH.set(registrar.pending)
        await asyncio.sleep(interval)


@dataclass
class TelemetryEndpoint:
    endpoint: Endpoint
    heartbeat: asyncio.Task[None]

    async def stop(self) -> None:
        self.heartbeat.cancel()
        await asyncio.to_thread(self.endpoint.stop)


def start_endpoint(settings: Settings, db_uri: str, workers: Callable[[], tuple[int, int]]) -> TelemetryEndpoint | None:
    """``/metrics``, ``/livez`` and ``/readyz`` on ``OXIDICOM_METRICS_PORT`` (None when unset)."""
    if settings.metrics_port is None:
        return None
    from oxidicom_py.telemetry.endpoint import Endpoint
    from oxidicom_py.telemetry.health import Health

    health = Health(db_uri, settings.files_root.resolve(), workers)
    endpoint = Endpoint(health, settings.metrics_address, settings.metrics_port)
    endpoint.start()
    return TelemetryEndpoint(endpoint, asyncio.create_task(health.heartbeat()))


async def _sweep_quiet_series(pool: AsyncConnectionPool, quiet_seconds: float) -> None:
    """End series that stopped receiving (see :func:`progress.quiescence_sweep`), forever."""
    interval = min(max(quiet_seconds / 4, 0.05), 5.0)
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.connection() as conn:
                ended = await progress.quiescence_sweep(conn, quiet_seconds)
            for pacs, series, state in ended:
                metrics.SERIES_ENDED.labels(state).inc()
                log.info(
                    "series ended by quiescence",
                    extra={"pacs": pacs, "SeriesInstanceUID": series, "state": state, "quiet_seconds": quiet_seconds},
                )
        except Exception as e:  # the database may be down; the next round tries again
            log.warning("quiescence sweep failed: %s", e)


def on_stop_signal(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, callback)


async def run_worker_until_signalled(
    settings: Settings,
    db_uri: str,
    sock: socket.socket,
    *,
    db_pool: int,
    max_associations: int,
    on_ready: Callable[[Worker], None],
    reconcile: bool = False,
    slots: SharedAssociationSlots | None = None,
) -> bool:
    """``reconcile``: also register stored files the database lacks (the single-process mode;
    with a pool of workers the supervisor does it)."""
    stop = asyncio.Event()
    on_stop_signal(stop.set)
    worker = await start_worker(settings, db_uri, sock, db_pool=db_pool, max_associations=max_associations, slots=slots)
    _freeze_start_up_objects()
    reconciler = Reconciler(worker.ingest.files.root, worker.pool, worker.registrar) if reconcile else None
    if reconciler is not None:
        reconciler.request()
    on_ready(worker)
    await stop.wait()
    log.info("draining")
    if reconciler is not None:
        await reconciler.close()
    return await drain(worker)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the process exit code."""
    tls.server_context(settings)  # a bad certificate or key stops start-up here, before anything runs
    if settings.listener_processes > 1:
        from oxidicom_py.supervisor import Supervisor

        return await Supervisor(settings).run()
    prepared = await prepare(settings)
    telemetry: TelemetryEndpoint | None = None
    try:
        sock = bind_listener(settings)
        serving = [0]
        telemetry = start_endpoint(settings, prepared.db_uri, lambda: (serving[0], 1))

        def ready(worker: Worker) -> None:
            serving[0] = 1
            metrics.WORKERS_ALIVE.set(1)
            log.info(
                "ready",
                extra={
                    "ae_title": settings.scp_aet,
                    "address": f"{worker.address[0]}:{worker.address[1]}",
                    "files_root": str(worker.ingest.files.root),
                    "processes": 1,
                    "tls": tls.describe(settings),
                },
            )

        clean = await run_worker_until_signalled(
            settings,
            prepared.db_uri,
            sock,
            db_pool=settings.db_pool,
            max_associations=settings.listener_threads,
            on_ready=ready,
            reconcile=True,
        )
        serving[0] = 0
    finally:
        if telemetry is not None:
            await telemetry.stop()
        await asyncio.to_thread(prepared.stop)
    log.info("stopped", extra={"clean": clean})
    return 0 if clean else 1
