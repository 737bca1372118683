"""Receiver instances sharing one database and files root: a heartbeat row per instance
(``oxidicom_instances``), the claim of an instance id at start-up, and the reaping of the
staging folder of an instance that stopped beating.

Staged files are never acknowledged (an instance answers Success only after the rename into
the series folder), so removing a dead instance's staging folder loses nothing. Reaping an
instance and claiming its id take the same transaction advisory lock, so an instance that
starts again under that id never has its new staged files removed by a reaper that judged its
previous life stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.registry.schema import INSTANCES_TABLE
from oxidicom_py.storage.writer import STAGING_DIR, remove_staged
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.instances")

BEATS_PER_STALE: Final = 10
"""Heartbeats are sent every ``stale_after / BEATS_PER_STALE`` seconds."""


class InstanceIdInUse(RuntimeError):
    """Another live receiver already runs under this instance id."""


def lock_key(instance: str) -> int:
    """The advisory lock key of one instance id (a signed 64-bit integer)."""
    digest = hashlib.blake2b(f"oxidicom-instance:{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_READ: Final = f"SELECT boot, host, extract(epoch FROM now() - heartbeat) FROM {INSTANCES_TABLE} WHERE instance_id = %s"

_CLAIM: Final = f"""
INSERT INTO {INSTANCES_TABLE} (instance_id, boot, host) VALUES (%s, %s, %s)
ON CONFLICT (instance_id) DO UPDATE SET boot = EXCLUDED.boot, host = EXCLUDED.host, started = now(), heartbeat = now()
"""

_BEAT: Final = f"""
INSERT INTO {INSTANCES_TABLE} AS i (instance_id, boot, host) VALUES (%s, %s, %s)
ON CONFLICT (instance_id) DO UPDATE SET heartbeat = now() WHERE i.boot = EXCLUDED.boot
RETURNING 1
"""
"""A beat; it also puts our row back if a reaper removed it (our beats stopped for a while)."""

_STALE: Final = f"""
SELECT instance_id FROM {INSTANCES_TABLE}
WHERE heartbeat < now() - make_interval(secs => %s) AND instance_id <> %s
"""

_FRESH: Final = f"""
SELECT instance_id FROM {INSTANCES_TABLE} WHERE heartbeat >= now() - make_interval(secs => %s)
"""


@dataclass
class Instance:
    """This receiver in the ``oxidicom_instances`` table."""

    instance: str
    files_root: Path
    stale_after: float
    boot: str = field(default_factory=lambda: secrets.token_hex(8))
    host: str = field(default_factory=socket.gethostname)

    @property
    def interval(self) -> float:
        return self.stale_after / BEATS_PER_STALE

    async def claim(self, conn: psycopg.AsyncConnection) -> None:
        """Take the instance id. A row with a fresh heartbeat from another start is watched for
        a beat and a half: if it still advances, another live receiver has this id and
        :class:`InstanceIdInUse` is raised; if not (our own previous life, crashed), it is taken."""
        seen = await self._read(conn)
        if seen is not None and seen[1] < self.stale_after:
            await asyncio.sleep(self.interval * 1.5)
            again = await self._read(conn)
            if again is not None and again[0] == seen[0] and again[1] < seen[1]:
                raise InstanceIdInUse(
                    f"OXIDICOM_INSTANCE_ID: {self.instance!r} is in use by a live receiver on host {again[2]!r} "
                    f"(heartbeat {again[1]:.1f} s ago): give every receiver sharing this database its own id"
                )
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.instance),))
            await conn.execute(_CLAIM, (self.instance, self.boot, self.host))

    async def _read(self, conn: psycopg.AsyncConnection) -> tuple[str, float, str] | None:
        row = await (await conn.execute(_READ, (self.instance,))).fetchone()
        return None if row is None else (row[0], float(row[2]), row[1])

    async def beat(self, conn: psycopg.AsyncConnection) -> bool:
        """One heartbeat; False if another start of this id owns the row now."""
        row = await (await conn.execute(_BEAT, (self.instance, self.boot, self.host))).fetchone()
        return row is not None

    async def reap(self, pool: AsyncConnectionPool) -> list[str]:
        """Remove the staging folders of instances whose heartbeat is stale, and of folders no
        fresh instance owns; the instance ids reaped."""
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            stale = [r[0] for r in await (await conn.execute(_STALE, (self.stale_after, self.instance))).fetchall()]
            fresh = {r[0] for r in await (await conn.execute(_FRESH, (self.stale_after,))).fetchall()}
        staging_root = self.files_root / STAGING_DIR
        folders = await asyncio.to_thread(_instance_folders, staging_root)
        candidates = sorted((set(stale) | folders) - fresh - {self.instance})
        reaped = []
        for other in candidates:
            if await self._reap_one(pool, other, staging_root / other, has_row=other in stale):
                reaped.append(other)
        return reaped

    async def _reap_one(self, pool: AsyncConnectionPool, other: str, folder: Path, *, has_row: bool) -> bool:
        async with pool.connection() as conn, conn.transaction():
            got = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_key(other),))).fetchone()
            if not (got and got[0]):
                return False  # another instance is reaping it, or it is starting
            row = await (await conn.execute(_READ, (other,))).fetchone()
            if row is not None and float(row[2]) < self.stale_after:
                return False  # it came back
            removed = await asyncio.to_thread(remove_staged, folder)
            if row is not None:
                await conn.execute(f"DELETE FROM {INSTANCES_TABLE} WHERE instance_id = %s", (other,))
        if has_row or removed:
            metrics.INSTANCES_REAPED.inc()
            log.warning(
                "reaped the staging folder of an instance that stopped beating",
                extra={"instance": other, "staged_removed": removed, "had_heartbeat_row": has_row},
            )
        return True

    async def leave(self, conn: psycopg.AsyncConnection) -> None:
        """A clean stop: remove our row, so a restart under this id does not wait for it."""
        sql = f"DELETE FROM {INSTANCES_TABLE} WHERE instance_id = %s AND boot = %s"
        await conn.execute(sql, (self.instance, self.boot))


def _instance_folders(staging_root: Path) -> set[str]:
    try:
        return {e.name for e in staging_root.iterdir() if e.is_dir()}
    except FileNotFoundError:
        return set()


async def keep_beating(instance: Instance, pool: AsyncConnectionPool) -> None:
    """Heartbeat and reap, every interval, forever (a database outage is logged and retried)."""
    lost_logged = False
    while True:
        try:
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                owned = await instance.beat(conn)
            if not owned and not lost_logged:
                log.error(
                    "another receiver took over this instance id: give every receiver its own OXIDICOM_INSTANCE_ID",
                    extra={"instance": instance.instance},
                )
            lost_logged = not owned
            await instance.reap(pool)
        except (psycopg.Error, OSError) as e:
            log.warning("instance heartbeat failed: %s", e, extra={"instance": instance.instance})
        await asyncio.sleep(instance.interval)


async def stop_beating(task: asyncio.Task[None], instance: Instance, pool: AsyncConnectionPool) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(psycopg.Error, OSError):
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            await instance.leave(conn)
