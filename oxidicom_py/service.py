"""One receiver process from start to drain: database, storage, registrar, listener, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from oxidicom_py.net.association import AcceptorConfig
from oxidicom_py.net.negotiation import AcceptancePolicy
from oxidicom_py.net.server import Listener
from oxidicom_py.registry.embedded import EmbeddedPostgres
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import ensure_schema
from oxidicom_py.settings import Settings
from oxidicom_py.storage.ingest import Ingest
from oxidicom_py.storage.writer import FilesRoot

log = logging.getLogger("oxidicom_py.service")

DRAIN_TIMEOUT = 30.0
DB_CONNECT_TIMEOUT = 30.0


@dataclass
class Running:
    settings: Settings
    listener: Listener
    ingest: Ingest
    registrar: Registrar
    pool: AsyncConnectionPool
    embedded: EmbeddedPostgres | None
    executor: ThreadPoolExecutor
    address: tuple[str, int]


def redact(uri: str) -> str:
    """A connection string without its password, for logs."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


async def start(settings: Settings) -> Running:
    embedded: EmbeddedPostgres | None = None
    if settings.db_connection is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedPostgres(settings.pgdata.resolve())
        uri = await asyncio.to_thread(embedded.start)
        log.info("using embedded PostgreSQL", extra={"pgdata": str(settings.pgdata.resolve()), "database": uri})
    else:
        uri = settings.db_connection
        log.info("using PostgreSQL", extra={"database": redact(uri)})
    pool = AsyncConnectionPool(
        uri,
        min_size=1,
        max_size=settings.db_pool,
        open=False,
        name="oxidicom",
        check=AsyncConnectionPool.check_connection,  # drop connections a database restart left dead
    )
    try:
        await pool.open(wait=True, timeout=DB_CONNECT_TIMEOUT)
        async with pool.connection() as conn:
            await ensure_schema(conn)
    except Exception:
        await pool.close()
        if embedded is not None:
            embedded.stop()
        raise
    files = FilesRoot(settings.files_root, fsync=settings.storage_fsync)
    leftovers = files.clean_staging()
    log.info(
        "files root ready",
        extra={"files_root": str(files.root), "fsync": settings.storage_fsync, "stale_staged_removed": leftovers},
    )
    registrar = Registrar(
        pool,
        batch_size=settings.db_batch_size,
        linger=settings.db_linger_ms / 1000,
        max_concurrent_batches=settings.db_pool,
        logger=logging.getLogger("oxidicom_py.registry"),
    )
    await registrar.start()
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="oxidicom-io")
    ingest = Ingest(files, registrar.submit, executor if settings.storage_fsync else None)
    config = AcceptorConfig(
        ae_title=settings.scp_aet,
        max_pdu_length=settings.scp_max_pdu_length,
        strict=settings.scp_strict,
        policy=AcceptancePolicy(promiscuous=settings.scp_promiscuous, uncompressed_only=settings.scp_uncompressed_only),
        artim_timeout=settings.scp_artim_timeout,
    )
    listener = Listener(config, ingest.association, max_associations=settings.listener_threads)
    address = await listener.start(settings.listener_address, settings.listener_port)
    return Running(settings, listener, ingest, registrar, pool, embedded, executor, address)


async def drain(running: Running, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Stop accepting, let open associations finish, flush registrations, release everything.

    Returns True when everything finished within ``timeout``.
    """
    clean = True
    await running.listener.stop_accepting()
    try:
        await asyncio.wait_for(running.ingest.idle.wait(), timeout)
    except TimeoutError:
        clean = False
        log.warning("associations still open at shutdown", extra={"open": len(running.ingest.active)})
    try:
        await asyncio.wait_for(running.registrar.close(), timeout)
    except TimeoutError:
        clean = False
        log.error("registrations still pending at shutdown", extra={"pending": running.registrar.pending})
    await running.pool.close()
    running.executor.shutdown(wait=True)
    if running.embedded is not None:
        await asyncio.to_thread(running.embedded.stop)
    log.info("stopped", extra={"clean": clean})
    return clean


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the process exit code."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info(
        "ready",
        extra={
            "ae_title": settings.scp_aet,
            "address": f"{running.address[0]}:{running.address[1]}",
            "files_root": str(running.ingest.files.root),
        },
    )
    await stop.wait()
    log.info("shutting down")
    return 0 if await drain(running) else 1
