"""Several receiver instances on one database and one files root: the instance id claim, the
heartbeat, the reaping of a dead instance's staging folder, and start-up leaving another
instance's in-flight files alone."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
import pytest
from harness import fast_inserts, load_script, slow_inserts, wait_until
from peers import ServeProcess

from oxidicom_py import runtime
from oxidicom_py.registry.instances import Instance, InstanceIdInUse, keep_beating
from oxidicom_py.registry.schema import ensure_schema_sync
from oxidicom_py.settings import load
from oxidicom_py.storage.writer import FilesRoot

pytestmark = pytest.mark.integration


def _schema(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        ensure_schema_sync(conn)


def _instances(db_uri: str) -> dict[str, str]:
    with psycopg.connect(db_uri) as conn:
        return dict(conn.execute("SELECT instance_id, boot FROM oxidicom_instances").fetchall())


def test_a_live_instance_id_is_refused_and_a_dead_ones_is_taken_over(tmp_path: Path, db_uri: str) -> None:
    _schema(db_uri)

    async def scenario() -> None:
        pool = runtime.make_pool(db_uri, 2)
        await pool.open(wait=True)
        try:
            first = Instance("r1", tmp_path, stale_after=1.0)
            async with pool.connection() as conn:
                await first.claim(conn)
            beating = asyncio.create_task(keep_beating(first, pool))
            second = Instance("r1", tmp_path, stale_after=1.0)
            with pytest.raises(InstanceIdInUse, match="OXIDICOM_INSTANCE_ID: 'r1' is in use"):
                async with pool.connection() as conn:
                    await second.claim(conn)
            beating.cancel()  # the first one dies without leaving
            await asyncio.gather(beating, return_exceptions=True)
            async with pool.connection() as conn:
                await second.claim(conn)  # its beats stopped: the id is free
        finally:
            await pool.close()

    asyncio.run(scenario())
    assert len(_instances(db_uri)) == 1


def test_a_stale_instances_staging_folder_is_reaped_and_a_fresh_ones_is_not(tmp_path: Path, db_uri: str) -> None:
    _schema(db_uri)
    dead = FilesRoot(tmp_path, fsync=False, instance="dead", process="w0")
    dead.stage(b"never acknowledged").close()
    orphan = FilesRoot(tmp_path, fsync=False, instance="no-row", process="w0")  # a host that never beat
    orphan.stage(b"x").close()
    live = FilesRoot(tmp_path, fsync=False, instance="live", process="w0")
    in_flight = live.stage(b"in flight")

    async def scenario() -> list[str]:
        pool = runtime.make_pool(db_uri, 2)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                for name in ("dead", "live"):
                    await Instance(name, tmp_path, stale_after=30.0).claim(conn)
                await conn.execute(
                    "UPDATE oxidicom_instances SET heartbeat = now() - interval '1 hour' WHERE instance_id = 'dead'"
                )
                await conn.commit()
            return await Instance("reaper", tmp_path, stale_after=30.0).reap(pool)
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == ["dead", "no-row"]
    assert not dead.instance_staging.exists() and not orphan.instance_staging.exists()
    assert Path(in_flight.path).exists()
    assert set(_instances(db_uri)) == {"live"}
    in_flight.close()


def test_the_embedded_database_is_refused_for_an_explicit_instance_id(tmp_path: Path) -> None:
    settings = load({"OXIDICOM_INSTANCE_ID": "r1", "OXIDICOM_STATE_DIR": str(tmp_path)})
    with pytest.raises(runtime.StartupError, match=r"OXIDICOM_INSTANCE_ID: .*OXIDICOM_DB_CONNECTION"):
        asyncio.run(runtime.prepare(settings))
    assert not (tmp_path / "pgdata").exists()  # refused before anything started


def test_a_starting_instance_leaves_another_instances_in_flight_file_alone(tmp_path: Path, db_uri: str) -> None:
    """r1 is half-way through an instance when r2 starts on the same files root and database
    (the fault of a shared ``.oxidicom-staging``: r2's start-up deleted it); r1 then finishes it."""
    from harness import RawScu, dataset_bytes, p_data, sop_of

    from oxidicom_py.dicom import dimse

    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=1, rows=64, cols=64)
    shared = {"OXIDICOM_DB_CONNECTION": db_uri, "OXIDICOM_FILES_ROOT": str(tmp_path / "files")}
    with ServeProcess({**shared, "OXIDICOM_INSTANCE_ID": "r1", "OXIDICOM_LISTENER_PROCESSES": "1"}, tmp_path) as r1:
        scu = RawScu(r1.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXI")
        sop_class, sop_instance = sop_of(files[0])
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: sop_class,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: 1,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
            }
        )
        data = dataset_bytes(files[0])
        half = len(data) // 2
        scu.send(p_data(1, command, command=True) + p_data(1, data[:half], command=False, last=False))
        staging = tmp_path / "files" / ".oxidicom-staging"
        staged = wait_until(lambda: list(staging.rglob("*.part")), 10, what="r1's staged file")
        assert staged[0].relative_to(staging).parts[0] == "r1"
        with ServeProcess({**shared, "OXIDICOM_INSTANCE_ID": "r2"}, tmp_path) as r2:
            removed = [line for line in r2.lines if line.get("msg") == "files root ready"]
            assert removed and removed[0]["stale_staged_removed"] == 0
            assert staged[0].exists()
            assert set(_instances(db_uri)) == {"r1", "r2"}
            scu.send(p_data(1, data[half:], command=False, last=True))
            assert scu.read_store_status()[0] == 0  # r1's instance was not deleted under it
            scu.release()
    with psycopg.connect(db_uri) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pacsfiles_pacsfile WHERE fname LIKE %s", (f"%{sop_instance}%",)
        ).fetchone()
    assert rows == (1,)
    assert not list(staging.rglob("*.part"))
    assert _instances(db_uri) == {}  # both left on a clean stop
    assert os.path.isdir(staging / "r1")


def test_a_crashed_hosts_acknowledged_files_are_registered_by_another_host(tmp_path: Path, db_uri: str) -> None:
    """r1 acknowledges 20 instances while the database is too slow to have registered them, then
    the whole host dies (SIGKILL). r2, sharing database and files root, registers every one of
    them by its periodic reconciliation (interval + grace), counts nothing twice, ends the series
    ``incomplete`` (no count, then quiet) and reaps r1's staging folder."""
    import signal

    from harness import storescu

    slow_inserts(db_uri, 5)  # rows lag behind acknowledged files
    files = load_script("synthetic").generate(tmp_path / "src", n_series=2, slices=10, rows=32, cols=32)
    shared = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_INSTANCE_STALE_AFTER": "2",
        "OXIDICOM_RECONCILE_INTERVAL": "1",
        "OXIDICOM_RECONCILE_GRACE": "1",
        "OXIDICOM_SERIES_QUIESCENCE": "3",
    }
    root = tmp_path / "files"
    with ServeProcess({**shared, "OXIDICOM_INSTANCE_ID": "r2"}, tmp_path) as r2:
        r1 = ServeProcess({**shared, "OXIDICOM_INSTANCE_ID": "r1"}, tmp_path).__enter__()
        try:
            storescu(r1.port, calling="CRASHED", files=files)  # every C-STORE answered Success
            stored = sorted(str(p.relative_to(root)) for p in (root / "SERVICES").rglob("*.dcm"))
            assert len(stored) == 20
            (root / ".oxidicom-staging" / "r1" / "w-leftover").mkdir()  # as if a worker died mid-instance
            (root / ".oxidicom-staging" / "r1" / "w-leftover" / "x.part").write_bytes(b"partial")
            assert r1.proc is not None
            r1.proc.send_signal(signal.SIGKILL)  # the host dies; its workers with it
            r1.proc.wait(10)
        finally:
            r1.stop()
        fast_inserts(db_uri)

        def registered() -> list[str]:
            with psycopg.connect(db_uri) as conn:
                rows = conn.execute("SELECT fname FROM pacsfiles_pacsfile WHERE fname LIKE 'SERVICES/PACS/CRASHED/%'")
                return sorted(r[0] for r in rows.fetchall())

        wait_until(lambda: registered() == stored, 30, what="r1's acknowledged files registered by r2")
        wait_until(lambda: not (root / ".oxidicom-staging" / "r1").exists(), 30, what="r1's staging reaped")

        def series() -> list[tuple[str, int, str | None]]:
            with psycopg.connect(db_uri) as conn:
                rows = conn.execute(
                    "SELECT state, received, end_reason FROM oxidicom_series_progress WHERE pacs_identifier = 'CRASHED'"
                )
                return sorted(rows.fetchall())

        wait_until(lambda: [s[0] for s in series()] == ["incomplete", "incomplete"], 30, what="both series ended")
        assert [s[1] for s in series()] == [10, 10]  # counted once each: no duplicate from the race
        assert set(_instances(db_uri)) == {"r2"}
    reaped = [line for line in r2.lines if "reaped the staging folder" in str(line.get("msg"))]
    assert reaped and reaped[0]["instance"] == "r1" and reaped[0]["staged_removed"] == 1
