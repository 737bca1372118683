"""Association records (``oxidicom_associations``): written in the registration batches' own
transactions (statements riding with rows), one per association with its counts, duplicates
and first error, and pruned after ``OXIDICOM_HISTORY_DAYS`` (real PostgreSQL, a real ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from harness import RawClient, RawScu, associate_rq, dataset_bytes, load_script, query, sop_of, storescu, wait_until
from peers import ServeProcess
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.dicom import pdu
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry import associations
from oxidicom_py.registry.associations import AssociationRecord
from oxidicom_py.registry.registrar import Registrar, RowRejectedError
from oxidicom_py.registry.schema import ensure_schema, ensure_schema_sync

pytestmark = pytest.mark.integration
LOG = logging.getLogger("tests.association_records")
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _row(n: int) -> PacsFileRow:
    return PacsFileRow(
        fname=f"SERVICES/PACS/RECPACS/p/s/series/{n:04d}.dcm",
        pacs_identifier="RECPACS",
        PatientID="p",
        StudyDate=dt.date(2020, 1, 2),
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4",
    )


def _record(ulid: str, **changes: Any) -> AssociationRecord:
    record = AssociationRecord(ulid, "RECPACS", "OXI", ("127.0.0.1", 4000), dt.datetime.now(dt.UTC))
    for name, value in changes.items():
        setattr(record, name, value)
    return record


@contextlib.asynccontextmanager
async def _registrar(db_uri: str, **options: Any) -> AsyncIterator[Registrar]:
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        await ensure_schema(conn)
    pool = AsyncConnectionPool(db_uri, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=30)
    registrar = Registrar(pool, logger=LOG, batch_size=options.pop("batch_size", 50), linger=0.05, **options)
    await registrar.start()
    try:
        yield registrar
    finally:
        await registrar.close(timeout=30)
        await pool.close()


def _write(record: AssociationRecord) -> Any:
    async def run(conn: psycopg.AsyncConnection) -> None:
        await associations.write(conn, record)

    return run


def test_a_record_rides_in_the_transaction_of_the_rows_beside_it(db_uri: str) -> None:
    async def top_level_xid(conn: psycopg.AsyncConnection) -> None:
        # inside the statement's savepoint, txid_current() is still the whole transaction's id
        await conn.execute("INSERT INTO riders SELECT txid_current()::text")

    with psycopg.connect(db_uri) as conn:
        conn.execute("CREATE TABLE riders (xid text)")

    async def scenario() -> None:
        async with _registrar(db_uri) as registrar:
            futures = [registrar.submit(_row(n)) for n in range(3)]
            statements = [
                registrar.submit_statement(_write(_record("01RIDES"))),
                registrar.submit_statement(top_level_xid),
            ]
            futures += [registrar.submit(_row(n)) for n in range(3, 6)]
            assert await asyncio.wait_for(asyncio.gather(*futures), 30) == [True] * 6
            await asyncio.wait_for(asyncio.gather(*statements), 30)

    asyncio.run(scenario())
    files_xmin = {r["x"] for r in query(db_uri, "SELECT xmin::text AS x FROM pacsfiles_pacsfile")}
    assert files_xmin == {r["xid"] for r in query(db_uri, "SELECT xid FROM riders")}  # one transaction
    (record,) = query(db_uri, "SELECT calling_ae, peer_address FROM oxidicom_associations")
    assert record == {"calling_ae": "RECPACS", "peer_address": "127.0.0.1"}


def test_a_record_alone_is_committed_within_the_linger_time(db_uri: str, wait_until_async: Callable) -> None:
    async def scenario() -> None:
        async with _registrar(db_uri) as registrar:
            statement = registrar.submit_statement(_write(_record("01ALONE", stored=3, outcome="released")))
            await asyncio.wait_for(statement, 5)
            assert registrar.pending == 0

    asyncio.run(scenario())
    (row,) = query(db_uri, "SELECT ulid, stored, outcome FROM oxidicom_associations")
    assert row == {"ulid": "01ALONE", "stored": 3, "outcome": "released"}


def test_a_refused_statement_is_dropped_and_the_rows_still_commit(
    db_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def refused(conn: psycopg.AsyncConnection) -> None:
        await conn.execute("SELECT 1 / 0")

    async def scenario() -> list[Any]:
        async with _registrar(db_uri) as registrar:
            futures: list[asyncio.Future[Any]] = [registrar.submit(_row(n)) for n in range(4)]
            futures.append(registrar.submit_statement(refused))
            futures.append(registrar.submit_statement(_write(_record("01KEPT"))))
            return list(await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30))

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        outcome = asyncio.run(scenario())
    assert outcome[:4] == [True] * 4 and isinstance(outcome[4], RowRejectedError) and outcome[5] is None
    assert query(db_uri, "SELECT count(*) AS n FROM pacsfiles_pacsfile") == [{"n": 4}]
    assert query(db_uri, "SELECT ulid FROM oxidicom_associations") == [{"ulid": "01KEPT"}]
    assert any("refused: dropped" in r.getMessage() for r in caplog.records)


def test_a_record_survives_the_bisection_of_a_batch_with_a_bad_row(db_uri: str) -> None:
    with psycopg.connect(db_uri) as conn:
        ensure_schema_sync(conn)
        conn.execute("ALTER TABLE pacsfiles_pacsfile ADD CONSTRAINT no_poison CHECK (fname NOT LIKE '%0003.dcm')")

    async def scenario() -> list[Any]:
        async with _registrar(db_uri) as registrar:
            futures: list[asyncio.Future[Any]] = [registrar.submit(_row(n)) for n in range(8)]
            futures.append(registrar.submit_statement(_write(_record("01BISECT"))))
            return list(await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30))

    outcome = asyncio.run(scenario())
    assert isinstance(outcome[3], RowRejectedError) and outcome.count(True) == 7 and outcome[8] is None
    assert query(db_uri, "SELECT count(*) AS n FROM oxidicom_associations") == [{"n": 1}]


def test_records_older_than_the_history_are_pruned(db_uri: str) -> None:
    now = dt.datetime.now(dt.UTC)

    async def scenario() -> int:
        async with await psycopg.AsyncConnection.connect(db_uri) as conn:
            await ensure_schema(conn)
            for ulid, age in (("01OLD", 31), ("01RECENT", 29)):
                ended = now - dt.timedelta(days=age)
                await associations.write(conn, _record(ulid, started=ended, ended=ended))
            await associations.write(conn, _record("01RECENT"))  # written twice (a retried batch): one row
            removed = await associations.prune(conn, 30)
            await conn.commit()
            return removed

    assert asyncio.run(scenario()) == 1
    assert query(db_uri, "SELECT ulid FROM oxidicom_associations") == [{"ulid": "01RECENT"}]


def test_serve_records_every_association_with_its_counts(db_uri: str, tmp_path: Path) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16, patient_id="REC", seed=5)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIREC",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_SCP_ALLOWED_AETS": "RECPACS,BADPACS",
    }
    with ServeProcess(env, tmp_path) as rx:
        storescu(rx.port, files, calling="RECPACS", called="OXIREC")
        storescu(rx.port, files, calling="RECPACS", called="OXIREC")  # the same again: duplicates
        sop_class, sop_instance = sop_of(files[0])
        scu = RawScu(rx.port, [(1, sop_class, [EXPLICIT_LE])], calling="BADPACS", called="OXIREC")
        status, _comment = scu.store(1, sop_class, sop_instance + ".9", dataset_bytes(files[0]))  # UID mismatch
        assert status >= 0xA000
        scu.release()
        stranger = RawClient(rx.port)  # a sender the receiver does not know: refused, and recorded
        stranger.send(associate_rq([(1, sop_class, [EXPLICIT_LE])], calling="STRANGER", called="OXIREC"))
        assert stranger.recv_pdu()[0] == pdu.A_ASSOCIATE_RJ
        stranger.close()
        rows = wait_until(
            lambda: (r := query(db_uri, "SELECT * FROM oxidicom_associations ORDER BY started")) and len(r) == 4 and r,
            30,
            what="four association records",
        )
    first, second, bad, refused = rows
    for record in (first, second):
        assert (record["calling_ae"], record["called_ae"], record["peer_address"]) == ("RECPACS", "OXIREC", "127.0.0.1")
        assert (record["received"], record["stored"], record["rejected"], record["failed"]) == (4, 4, 0, 0)
        assert record["outcome"] == "released" and record["series_uids"] == [series_uid]
        assert record["bytes"] > 4 * 16 * 16 and record["started"] <= record["ended"]
        assert record["first_error"] is None and record["tls_subject"] is None
    assert (first["duplicate"], second["duplicate"]) == (0, 4)
    assert (bad["calling_ae"], bad["received"], bad["stored"], bad["rejected"] + bad["failed"]) == ("BADPACS", 1, 0, 1)
    assert bad["first_error"] and bad["series_uids"] == []
    assert (refused["calling_ae"], refused["called_ae"], refused["received"]) == ("STRANGER", "OXIREC", 0)
    assert refused["outcome"] == "rejected: calling_ae_not_allowed" and refused["peer_address"] == "127.0.0.1"
