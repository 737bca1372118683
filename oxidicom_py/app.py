"""The composition root: every part of a receiving process, wired on one page.

:func:`build_worker` makes a worker (listener, storage, registrar, tracker, sweeper,
telemetry) and :func:`drain` stops one; :func:`run_worker` runs one until a signal. The
single-process mode (:func:`serve_single`) and each worker process of the pool
(``oxidicom-py worker``, started by :mod:`oxidicom_py.supervisor`) are built by the same
function, so they cannot drift. :class:`PoolTarget` is what the supervisor is handed: the
worker command line and the housekeeping of the pool (reconciliation).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from oxidicom_py import runtime
from oxidicom_py.children import Child, start_children, stop_children
from oxidicom_py.completion import counted_insert, progress
from oxidicom_py.completion.tracker import CFindSettings, Tracker
from oxidicom_py.cube.sink import CubeSink, calling_ae_check, make_sink
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.negotiation import AcceptancePolicy
from oxidicom_py.flow import Pipeline
from oxidicom_py.net import tls
from oxidicom_py.net.balance import Balance
from oxidicom_py.net.proxy_header import ProxyPolicy
from oxidicom_py.net.pynetdicom_scp import PynetdicomListener
from oxidicom_py.net.server import Listener
from oxidicom_py.net.slots import SharedAssociationSlots
from oxidicom_py.processing import queue as job_queue
from oxidicom_py.processing.reloader import RulesInForce
from oxidicom_py.processing.trigger import Trigger
from oxidicom_py.registry import associations
from oxidicom_py.registry.reconcile import Reconciler
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.settings import Settings
from oxidicom_py.storage.ingest import StorageStage
from oxidicom_py.storage.writer import FilesRoot, remove_staged, staging_folder, worker_staging
from oxidicom_py.telemetry import metrics, multiproc, tracing

log = logging.getLogger("oxidicom_py.app")


@dataclass(frozen=True)
class WorkerShare:
    """What one process gets of the whole: database connections, the association limit and,
    in a pool, the slots shared with the other workers."""

    db_pool: int
    max_associations: int
    slots: SharedAssociationSlots | None = None
    balance: Balance | None = None
    """Which worker of the pool takes the next connection (None: this process alone)."""
    staging: str = "main"
    """This process's staging folder inside the instance's (``w{index}`` in a pool)."""


async def make_registrar(settings: Settings, pool: AsyncConnectionPool, db_pool: int) -> Registrar:
    """The registrar, configured from the settings: the same for workers and the supervisor's
    reconciliation (which once kept the library's 50 ms linger instead of OXIDICOM_DB_LINGER_MS)."""
    registrar = Registrar(
        pool,
        batch_size=settings.db_batch_size,
        linger=settings.db_linger_ms / 1000,
        max_concurrent_batches=db_pool,
        logger=logging.getLogger("oxidicom_py.registry"),
        insert=counted_insert.insert_counted,
        before_commit=progress.before_commit,
    )
    await registrar.start()
    return registrar


@dataclass
class Worker:
    listener: Listener | PynetdicomListener
    ingest: StorageStage
    pipeline: Pipeline
    registrar: Registrar
    pool: AsyncConnectionPool
    executor: ThreadPoolExecutor
    address: tuple[str, int]
    tracker: Tracker
    cfind_executor: ThreadPoolExecutor
    sweeper: asyncio.Task[None]
    sampler: asyncio.Task[None]
    pruner: asyncio.Task[None]
    """Deletes association records older than ``OXIDICOM_HISTORY_DAYS``."""
    rules: RulesInForce | None = None
    """The processing rules in force (``OXIDICOM_RULES``), read again when the file changes."""
    trigger: Trigger | None = None
    """Defers the rules' jobs in the transactions that end series."""
    cube: CubeSink | None = None
    """Registration tasks and LONK progress for current ChRIS, when configured."""


async def build_worker(settings: Settings, db_uri: str, sock: socket.socket, share: WorkerShare) -> Worker:
    """Every part of one receiving process, wired, accepting on ``sock``: the one place where
    the stages meet, for the single process and for each worker of a pool alike."""
    db_pool, max_associations, slots = share.db_pool, share.max_associations, share.slots
    ssl_context = tls.server_context(settings)  # first: a bad certificate leaves nothing half-started
    pool = runtime.make_pool(db_uri, db_pool)
    await pool.open(wait=True, timeout=runtime.DB_CONNECT_TIMEOUT)
    registrar = await make_registrar(settings, pool, db_pool)
    files = FilesRoot(
        settings.files_root, fsync=settings.storage_fsync, instance=settings.instance, process=share.staging
    )
    executor = ThreadPoolExecutor(max_workers=runtime.IO_THREADS, thread_name_prefix="oxidicom-io")
    cfind_executor = ThreadPoolExecutor(max_workers=runtime.CFIND_THREADS, thread_name_prefix="oxidicom-cfind")
    cube = make_sink(settings)
    if cube is not None:
        cube.start()
    tracker = Tracker(
        files,
        registrar,
        CFindSettings(
            our_aet=settings.scp_aet,
            pacs_address=settings.pacs_address,
            connect_timeout=settings.cfind_connect_timeout,
            response_timeout=settings.cfind_timeout,
            requeries=settings.cfind_requeries,
        ),
        cfind_executor,
        executor if files.fsync else None,
        cube,
    )
    pipeline = Pipeline(registrar, tracker)
    ingest = StorageStage(files, executor if files.fsync else None, pipeline.observe)
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
        calling_ae_check=calling_ae_check(settings),
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
            balance=share.balance,
            on_rejected=pipeline.rejected,
            proxy=ProxyPolicy(settings.proxy_networks or (), settings.scp_artim_timeout)
            if settings.proxy_protocol
            else None,
        )
    address = await listener.start_on(sock, ssl=ssl_context)
    sweeper = asyncio.create_task(progress.sweep_quiet_series(pool, settings.series_quiescence))
    sampler = asyncio.create_task(_sample_gauges(registrar))
    pruner = asyncio.create_task(associations.prune_forever(pool, settings.history_days))
    rules = RulesInForce(settings.rules) if settings.rules is not None else None
    trigger = None
    if rules is not None:
        rules.start()
        trigger = Trigger(rules, job_queue.make_app(), settings.files_root)
        progress.on_end_in_transaction(trigger)
    return Worker(
        listener,
        ingest,
        pipeline,
        registrar,
        pool,
        executor,
        address,
        tracker,
        cfind_executor,
        sweeper,
        sampler,
        pruner,
        rules,
        trigger,
        cube,
    )


async def drain(worker: Worker, timeout: float = runtime.DRAIN_TIMEOUT) -> bool:
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
    try:  # their records ride in the registrar's last batches
        await asyncio.wait_for(worker.pipeline.finished(), timeout)
    except TimeoutError:
        clean = False
        log.warning("association records still pending at shutdown", extra={"pending": len(worker.pipeline.finishing)})
    if worker.cube is not None:
        await worker.cube.close()
    worker.sweeper.cancel()
    worker.pruner.cancel()
    try:
        await asyncio.wait_for(worker.registrar.close(), timeout)
    except TimeoutError:
        clean = False
        log.error("registrations still pending at shutdown", extra={"pending": worker.registrar.pending})
    worker.sampler.cancel()
    if worker.rules is not None:
        await worker.rules.stop()
    if worker.trigger is not None:
        progress.remove_end_hook(worker.trigger)
    metrics.REGISTRATION_QUEUE_DEPTH.set(worker.registrar.pending)
    try:
        await asyncio.wait_for(worker.pipeline.finished(), runtime.SPAN_FLUSH_TIMEOUT)
    except TimeoutError:
        log.warning("association spans still open at shutdown", extra={"open": len(worker.pipeline.finishing)})
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
    association then walks only what receiving allocates: shorter pauses at the end of big
    associations (the measurement is in docs/benchmark.md, "Telemetry cost")."""
    gc.collect()
    gc.freeze()


async def _sample_gauges(registrar: Registrar, interval: float = 1.0) -> None:
    """Gauges that would cost a write per instance if kept exact are sampled instead."""
    while True:
        metrics.REGISTRATION_QUEUE_DEPTH.set(registrar.pending)
        await asyncio.sleep(interval)


async def run_worker(
    settings: Settings,
    db_uri: str,
    sock: socket.socket,
    share: WorkerShare,
    *,
    on_ready: Callable[[Worker], None],
    reconcile: bool = False,
    on_stop: Callable[[], None] | None = None,
    drain_delay: float = 0.0,
) -> bool:
    """Run one worker until SIGTERM/SIGINT, then drain; True when it drained in time.
    ``reconcile``: also register stored files the database lacks (the single-process mode;
    with a pool of workers the supervisor does it). ``on_stop`` is called at the signal, then
    the worker goes on accepting for ``drain_delay`` seconds (the single-process mode; a pool's
    supervisor waits before it signals its workers)."""
    stop = asyncio.Event()
    runtime.on_stop_signal(stop.set)
    worker = await build_worker(settings, db_uri, sock, share)
    _freeze_start_up_objects()
    reconciler = (
        Reconciler(
            worker.ingest.files.root,
            worker.pool,
            worker.registrar,
            interval=settings.reconcile_interval,
            grace=settings.reconcile_grace,
        )
        if reconcile
        else None
    )
    if reconciler is not None:
        reconciler.request()
    on_ready(worker)
    await stop.wait()
    if on_stop is not None:
        on_stop()
    await runtime.drain_delay(drain_delay)
    log.info("draining")
    if reconciler is not None:
        await reconciler.close()
    return await drain(worker)


async def serve_single(settings: Settings) -> int:
    """Everything in this process until SIGTERM or SIGINT, then drain; the exit code."""
    prepared = await runtime.prepare(settings)
    telemetry: runtime.TelemetryEndpoint | None = None
    try:
        sock = runtime.bind_listener(settings)
        serving = [0]
        telemetry = runtime.start_endpoint(settings, prepared.db_uri, lambda: (serving[0], 1))

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

        share = WorkerShare(settings.db_pool, settings.max_associations)
        children = start_children(settings, prepared.db_uri)
        try:
            clean = await run_worker(
                settings,
                prepared.db_uri,
                sock,
                share,
                on_ready=ready,
                reconcile=True,
                on_stop=telemetry.draining if telemetry is not None else None,
                drain_delay=settings.drain_delay,
            )
        finally:
            await stop_children(children)
        serving[0] = 0
    finally:
        if telemetry is not None:
            await telemetry.stop()
        await prepared.close()
    log.info("stopped", extra={"clean": clean})
    return 0 if clean else 1


class PoolTarget:
    """What the supervisor runs: the worker processes' command line, and the pool's
    housekeeping (reconciliation after start-up and after a worker died)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        workers = settings.listener_processes
        self.share = WorkerShare(max(1, settings.db_pool // workers), settings.max_associations)
        self._pool: AsyncConnectionPool | None = None
        self._registrar: Registrar | None = None
        self._reconciler: Reconciler | None = None
        self._children: list[Child] = []

    def argv(self, index: int, listen_fd: int, ready_fd: int, slots_fd: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "oxidicom_py",
            "worker",
            "--listen-fd",
            str(listen_fd),
            "--ready-fd",
            str(ready_fd),
            "--index",
            str(index),
            "--db-pool",
            str(self.share.db_pool),
            "--max-associations",
            str(self.share.max_associations),
            "--slots-fd",
            str(slots_fd),
            "--workers",
            str(self.settings.listener_processes),
        ]

    async def start(self, db_uri: str) -> None:
        self._pool = runtime.make_pool(db_uri, runtime.SUPERVISOR_DB_POOL)
        await self._pool.open(wait=True, timeout=runtime.DB_CONNECT_TIMEOUT)
        self._registrar = await make_registrar(self.settings, self._pool, runtime.SUPERVISOR_DB_POOL)
        self._reconciler = Reconciler(
            self.settings.files_root.resolve(),
            self._pool,
            self._registrar,
            interval=self.settings.reconcile_interval,
            grace=self.settings.reconcile_grace,
        )
        self._children = start_children(self.settings, db_uri)

    def workers_ready(self) -> None:
        assert self._reconciler is not None
        self._reconciler.request()  # files a crash left without a row

    def worker_died(self, index: int, pid: int) -> int:
        """Clean up after a dead worker; the number of its staged files removed."""
        multiproc.process_died(pid)
        removed = remove_staged(
            staging_folder(self.settings.files_root.resolve(), self.settings.instance, worker_staging(index)),
            keep_folder=True,
        )
        assert self._reconciler is not None
        self._reconciler.request_after_grace()  # rows it had not committed yet
        return removed

    async def close(self) -> None:
        await stop_children(self._children)
        if self._reconciler is not None:
            await self._reconciler.close()
        if self._registrar is not None:
            await self._registrar.close()
        if self._pool is not None:
            await self._pool.close()
