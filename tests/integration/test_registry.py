"""Registry: CUBE v5 schema, embedded PostgreSQL, batching registrar (real PostgreSQL, no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.record import COLUMN_LIMITS, PacsFileRow, clean_text
from oxidicom_py.registry import batch_sql
from oxidicom_py.registry.embedded import EmbeddedPostgres, stop_stale_servers
from oxidicom_py.registry.fitting import fit_row, parse_birth_date
from oxidicom_py.registry.registrar import Registrar, RegistrarClosedError, RowRejectedError
from oxidicom_py.registry.schema import INDEXES, ensure_schema, ensure_schema_sync

LOG = logging.getLogger("tests.registry")
AET = "OXITESTORTHANC"
SAG_DIR = (
    "SERVICES/PACS/OXITESTORTHANC/1449c1d-anonymized-20090701/MR-Brain_w_o_Contrast-98edede8b2-20130308/"
    "00005-SAG_MPRAGE_220_FOV-a27cf06"
)
SAG_SERIES = "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"


def sag_row(number: int = 1, **changes: Any) -> PacsFileRow:
    """The SAG-anon example of spec 2.6, instance ``number``."""
    values: dict[str, Any] = {
        "fname": f"{SAG_DIR}/{number:04d}-1.3.12.2.1107.5.2.19.45152.{number}.dcm",
        "pacs_identifier": AET,
        "PatientID": "1449c1d",
        "StudyDate": dt.date(2013, 3, 8),
        "StudyInstanceUID": "1.3.12.2.1107.5.2.19.45152.30000013030513312735900000005",
        "SeriesInstanceUID": SAG_SERIES,
        "PatientName": "anonymized",
        "PatientBirthDate": "20090701",
        "PatientAge": 1096,
        "PatientSex": "M",
        "AccessionNumber": "98edede8b2",
        "Modality": "MR",
        "ProtocolName": "SAG MPRAGE 220 FOV",
        "StudyDescription": "MR-Brain w/o Contrast",
        "SeriesDescription": "SAG MPRAGE 220 FOV",
        "association": "01HZ7TF03EZD364005NP332RBQ",
    }
    values.update(changes)
    return PacsFileRow(**values)


# -- helpers -------------------------------------------------------------------------------------


async def create_schema(uri: str) -> None:
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        await ensure_schema(conn)


def query(uri: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri) as conn:
        return conn.execute(sql, params).fetchall()


def count_files(uri: str) -> int:
    return query(uri, "SELECT count(*) FROM pacsfiles_pacsfile")[0][0]


@contextlib.asynccontextmanager
async def open_registrar(
    uri: str, *, pool_size: int = 4, wait_for_pool: bool = True, **options: Any
) -> AsyncIterator[Registrar]:
    pool = AsyncConnectionPool(
        uri, min_size=1, max_size=pool_size, open=False, check=AsyncConnectionPool.check_connection
    )
    await pool.open(wait=wait_for_pool, timeout=30)
    options.setdefault("batch_size", 20)
    options.setdefault("linger", 0.05)
    options.setdefault("max_concurrent_batches", pool_size)
    registrar = Registrar(pool, logger=LOG, **options)
    await registrar.start()
    try:
        yield registrar
    finally:
        await registrar.close(timeout=60)
        await pool.close()


async def results(futures: Sequence[Awaitable[bool]], timeout: float = 60) -> list[bool]:
    return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))


# -- schema ---------------------------------------------------------------------------------------

EXPECTED_PACSFILE_COLUMNS = {
    # column: (data_type, character_maximum_length, is_nullable)
    "id": ("bigint", None, "NO"),
    "creation_date": ("timestamp with time zone", None, "NO"),
    "fname": ("character varying", 512, "NO"),
    "PatientID": ("character varying", 100, "NO"),
    "PatientName": ("character varying", 150, "NO"),
    "StudyInstanceUID": ("character varying", 100, "NO"),
    "StudyDescription": ("character varying", 400, "NO"),
    "SeriesInstanceUID": ("character varying", 100, "NO"),
    "SeriesDescription": ("character varying", 400, "NO"),
    "pacs_id": ("bigint", None, "NO"),
    "PatientAge": ("integer", None, "YES"),
    "PatientBirthDate": ("date", None, "YES"),
    "PatientSex": ("character varying", 1, "NO"),
    "Modality": ("character varying", 15, "NO"),
    "ProtocolName": ("character varying", 64, "NO"),
    "StudyDate": ("date", None, "NO"),
    "AccessionNumber": ("character varying", 100, "NO"),
}


def test_schema_matches_cube_v5_and_is_idempotent(db_uri: str) -> None:
    async def concurrently() -> None:  # several processes starting at once on an empty database
        await asyncio.gather(*(create_schema(db_uri) for _ in range(4)))

    asyncio.run(concurrently())
    with psycopg.connect(db_uri) as conn:
        ensure_schema_sync(conn)
        conn.commit()

    columns = query(
        db_uri,
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,"
        " is_identity, identity_generation FROM information_schema.columns"
        " WHERE table_name IN ('pacsfiles_pacs', 'pacsfiles_pacsfile') ORDER BY table_name, ordinal_position",
    )
    pacs = {c[1]: c[2:] for c in columns if c[0] == "pacsfiles_pacs"}
    files = {c[1]: c[2:5] for c in columns if c[0] == "pacsfiles_pacsfile"}
    assert pacs == {
        "id": ("bigint", None, "NO", "YES", "BY DEFAULT"),
        "identifier": ("character varying", 20, "NO", "NO", None),
    }
    assert files == EXPECTED_PACSFILE_COLUMNS
    identity = {c[1]: (c[5], c[6]) for c in columns if c[0] == "pacsfiles_pacsfile"}
    assert identity["id"] == ("YES", "BY DEFAULT")
    assert {name: limit for name, (_, limit, _) in files.items() if limit} == COLUMN_LIMITS

    indexes = {
        name: definition
        for name, definition in query(
            db_uri,
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('pacsfiles_pacs', 'pacsfiles_pacsfile')",
        )
    }
    assert set(indexes) == {
        "pacsfiles_pacs_pkey",
        "pacsfiles_pacs_identifier_key",
        "pacsfiles_pacsfile_pkey",
        "pacsfiles_pacsfile_fname_key",
        *INDEXES,
    }
    assert "varchar_pattern_ops" in indexes["pacsfiles_pacsfile_fname_475c1816_like"]
    assert "UNIQUE" in indexes["pacsfiles_pacsfile_fname_key"]
    assert '"SeriesInstanceUID"' in indexes["oxidicom_pacsfile_seriesinstanceuid"]

    constraints = query(
        db_uri,
        "SELECT conname, contype, condeferrable, condeferred, confrelid::regclass::text FROM pg_constraint"
        " WHERE conrelid IN ('pacsfiles_pacs'::regclass, 'pacsfiles_pacsfile'::regclass)"
        " AND contype <> 'n' ORDER BY conname",  # PostgreSQL 18 also lists NOT NULL constraints
    )
    assert constraints == [
        ("pacsfiles_pacs_identifier_key", "u", False, False, "-"),
        ("pacsfiles_pacs_pkey", "p", False, False, "-"),
        ("pacsfiles_pacsfile_fname_key", "u", False, False, "-"),
        ("pacsfiles_pacsfile_pacs_id_a6922e71_fk", "f", True, True, "pacsfiles_pacs"),
        ("pacsfiles_pacsfile_pkey", "p", False, False, "-"),
    ]


# -- value fitting (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "invalid"),
    [
        ("20090701", dt.date(2009, 7, 1), False),
        ("2009-07-01", dt.date(2009, 7, 1), False),
        (" 19660101 ", dt.date(1966, 1, 1), False),
        (None, None, False),
        ("", None, False),
        ("   ", None, False),
        ("20090231", None, True),
        ("2009-0701", None, True),
        ("2009/07/01", None, True),
        ("200907", None, True),
        ("unknown", None, True),
        ("00000000", None, True),
    ],
)
def test_parse_birth_date(raw: str | None, expected: dt.date | None, invalid: bool) -> None:
    assert parse_birth_date(raw) == (expected, invalid)


def test_clean_text_joins_surrogate_pairs_and_drops_lone_ones() -> None:
    assert clean_text("a\x00b") == ("ab", False)
    assert clean_text("x\ud83d\ude00y\ud800z") == ("x\U0001f600yz", True)
    assert clean_text("Müller^Jörg") == ("Müller^Jörg", False)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.characters(codec=None), max_size=700),
    birth=st.one_of(st.none(), st.text(max_size=12)),
    age=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
)
def test_fit_row_always_fits_the_columns(text: str, birth: str | None, age: int | None) -> None:
    row = sag_row(
        fname=text or "x",
        PatientName=text,
        PatientSex=text,
        Modality=text,
        StudyDescription=text,
        PatientBirthDate=birth,
        PatientAge=age,
        pacs_identifier=text,
    )
    fitted = fit_row(row, logging.getLogger("tests.registry.fit"))
    for name, value in fitted._asdict().items():
        if isinstance(value, str):
            limit = 20 if name == "pacs_identifier" else COLUMN_LIMITS[name]
            assert len(value) <= limit
            assert "\x00" not in value
            value.encode("utf-8")  # no lone surrogate left
    assert fitted.PatientAge is None or -(2**31) <= fitted.PatientAge < 2**31


# -- registration ----------------------------------------------------------------------------------


def test_sag_anon_row_registered_with_cube_values(db_uri: str) -> None:
    async def scenario() -> list[bool]:
        await create_schema(db_uri)
        async with open_registrar(db_uri) as registrar:
            datalad = sag_row(
                2,
                fname="SERVICES/PACS/OXITESTORTHANC/02-Jane_Doe-19660101/x/0001-1.2.dcm",
                PatientBirthDate="19660101",
                PatientAge=None,
                PatientSex="F",
                AccessionNumber="",
                StudyDescription="Hanke_Stadler^0024_transrep",
            )
            return await results([registrar.submit(sag_row(1)), registrar.submit(datalad)])

    before = dt.datetime.now(dt.UTC)
    assert asyncio.run(scenario()) == [True, True]
    rows = query(
        db_uri,
        'SELECT f.fname, f."PatientID", f."PatientName", f."PatientBirthDate", f."PatientAge", f."PatientSex",'
        ' f."StudyDate", f."AccessionNumber", f."Modality", f."ProtocolName", f."StudyDescription",'
        ' f."SeriesDescription", f."StudyInstanceUID", f."SeriesInstanceUID", p.identifier, f.creation_date'
        " FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id ORDER BY f.fname DESC",
    )
    assert rows[0][:15] == (
        sag_row(1).fname,
        "1449c1d",
        "anonymized",
        dt.date(2009, 7, 1),
        1096,
        "M",
        dt.date(2013, 3, 8),
        "98edede8b2",
        "MR",
        "SAG MPRAGE 220 FOV",
        "MR-Brain w/o Contrast",
        "SAG MPRAGE 220 FOV",
        "1.3.12.2.1107.5.2.19.45152.30000013030513312735900000005",
        SAG_SERIES,
        AET,
    )
    assert rows[1][3:8] == (dt.date(1966, 1, 1), None, "F", dt.date(2013, 3, 8), "")
    assert rows[1][10] == "Hanke_Stadler^0024_transrep"
    assert before <= rows[0][15] <= dt.datetime.now(dt.UTC)
    assert rows[0][15].utcoffset() is not None
    assert query(db_uri, "SELECT identifier FROM pacsfiles_pacs") == [(AET,)]


def test_duplicates_in_a_batch_and_across_batches_are_skipped(db_uri: str) -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=50, linger=0.05) as registrar:
            # one batch: instance 3 three times, instance 5 twice
            numbers = [1, 3, 2, 3, 4, 5, 3, 5]
            first = await results([registrar.submit(sag_row(n)) for n in numbers])
            # later batches: two old, one new
            second = await results([registrar.submit(sag_row(n)) for n in (1, 6, 4)])
            return first, second

    first, second = asyncio.run(scenario())
    assert first == [True, True, True, False, True, True, False, False]
    assert second == [False, True, False]
    assert count_files(db_uri) == 6


def test_two_concurrent_registrars_register_each_fname_once(db_uri: str) -> None:
    numbers = list(range(1, 301))
    shuffled = numbers[:]
    random.Random(42).shuffle(shuffled)

    async def one(order: list[int]) -> dict[int, bool]:
        async with open_registrar(db_uri, batch_size=25, linger=0.01, pool_size=3) as registrar:
            futures = [registrar.submit(sag_row(n)) for n in order]
            # and a third copy of some rows, resubmitted while the first ones are in flight
            futures += [registrar.submit(sag_row(n)) for n in order[:40]]
            outcome = await results(futures)
        counts: dict[int, bool] = {}
        for n, inserted in zip(order + order[:40], outcome, strict=True):
            assert not (inserted and counts.get(n)), f"{n} inserted twice by one registrar"
            counts[n] = counts.get(n, False) or inserted
        return counts

    async def scenario() -> tuple[dict[int, bool], dict[int, bool]]:
        await create_schema(db_uri)
        a, b = await asyncio.gather(one(numbers), one(shuffled))
        return a, b

    a, b = asyncio.run(scenario())
    assert all(a[n] != b[n] for n in numbers), "every fname inserted by exactly one registrar"
    assert count_files(db_uri) == len(numbers)
    assert query(db_uri, "SELECT count(DISTINCT fname) FROM pacsfiles_pacsfile")[0][0] == len(numbers)


def test_odd_values_are_fitted_and_logged_without_failing_the_batch(
    db_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    long_fname = SAG_DIR + "/" + "9" * 600 + ".dcm"
    odd = {
        10: {"PatientSex": "MALE"},
        11: {"Modality": "M" * 20, "StudyDescription": "d" * 500},
        12: {"PatientBirthDate": "not a date"},
        13: {"PatientBirthDate": "2009-07-01", "PatientName": "Doe\x00^John", "SeriesDescription": "T1\ud800w"},
        14: {"fname": long_fname, "PatientAge": 2**40},
    }

    async def scenario() -> list[bool]:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=100) as registrar:
            rows = [sag_row(n, **odd.get(n, {})) for n in range(1, 21)]
            return await results([registrar.submit(row) for row in rows])

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert asyncio.run(scenario()) == [True] * 20
    stored = {
        row[0]: row[1:]
        for row in query(
            db_uri,
            'SELECT fname, "PatientSex", "Modality", "StudyDescription", "PatientBirthDate", "PatientName",'
            ' "SeriesDescription", "PatientAge" FROM pacsfiles_pacsfile',
        )
    }
    assert len(stored) == 20
    assert stored[sag_row(10).fname][0] == "M"
    assert stored[sag_row(11).fname][1:3] == ("M" * 15, "d" * 400)
    assert stored[sag_row(12).fname][3] is None
    assert stored[sag_row(13).fname][3:6] == (dt.date(2009, 7, 1), "Doe^John", "T1w")
    assert stored[long_fname[:512]][6] == 2**31 - 1
    assert stored[sag_row(1).fname] == (
        "M",
        "MR",
        "MR-Brain w/o Contrast",
        dt.date(2009, 7, 1),
        "anonymized",
        "SAG MPRAGE 220 FOV",
        1096,
    )

    truncations = [r for r in caplog.records if r.getMessage() == "value truncated to column length"]

    def file(fname: str) -> str:  # logs name the file, never the patient folder above it
        return fname.rsplit("/", 1)[-1]

    assert {(r.file, r.column, r.original_length) for r in truncations} == {  # type: ignore[attr-defined]
        (file(sag_row(10).fname), "PatientSex", 4),
        (file(sag_row(11).fname), "Modality", 20),
        (file(sag_row(11).fname), "StudyDescription", 500),
        (file(long_fname), "fname", len(long_fname)),
    }
    assert all(r.association == "01HZ7TF03EZD364005NP332RBQ" for r in truncations)  # type: ignore[attr-defined]
    invalid_dates = [r for r in caplog.records if "PatientBirthDate" in r.getMessage()]
    assert [r.file for r in invalid_dates] == [file(sag_row(12).fname)]  # type: ignore[attr-defined]


def test_a_row_the_database_rejects_is_isolated_and_the_rest_registered(
    db_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[bool | BaseException]:
        await create_schema(db_uri)
        async with await psycopg.AsyncConnection.connect(db_uri, autocommit=True) as conn:
            # a rule the fitting cannot know about: the database still rejects some rows
            await conn.execute(
                "ALTER TABLE pacsfiles_pacsfile ADD CONSTRAINT no_poison CHECK (\"PatientName\" <> 'poison')"
            )
        async with open_registrar(db_uri, batch_size=64, linger=0.05) as registrar:
            rows = [sag_row(n, PatientName="poison" if n in (7, 40) else "ok") for n in range(1, 65)]
            # values of the wrong type are isolated the same way, whether the server refuses
            # them or psycopg cannot even send them
            rows.append(sag_row(65, StudyDate="2013x"))
            rows.append(sag_row(66, StudyDate=object()))
            futures = [registrar.submit(row) for row in rows]
            return list(await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60))

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        outcome = asyncio.run(scenario())
    rejected = [n for n, result in enumerate(outcome, start=1) if isinstance(result, RowRejectedError)]
    assert rejected == [7, 40, 65, 66]
    assert [result for result in outcome if not isinstance(result, BaseException)] == [True] * 62
    assert count_files(db_uri) == 62
    errors = [r for r in caplog.records if r.getMessage() == "row could not be registered"]
    assert sorted(r.file for r in errors) == sorted(  # type: ignore[attr-defined]
        sag_row(n).fname.rsplit("/", 1)[-1] for n in (7, 40, 65, 66)
    )


def test_a_trickle_is_committed_within_the_linger_time(db_uri: str, wait_until_async: Callable) -> None:
    linger = 0.3

    async def scenario() -> None:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=500, linger=linger) as registrar:
            for n in (1, 2):  # one row at a time, each alone in its batch
                future = registrar.submit(sag_row(n))
                await wait_until_async(future.done, timeout=linger + 3)
                assert future.result() is True
                assert registrar.pending == 0
                assert count_files(db_uri) == n

    asyncio.run(scenario())


def test_urgent_rows_and_flush_do_not_wait_for_the_linger_time(db_uri: str, wait_until_async: Callable) -> None:
    """With a linger far longer than the deadline, urgent rows and flushed rows still commit."""

    async def scenario() -> None:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=500, linger=60) as registrar:
            lazy = registrar.submit(sag_row(1))
            urgent = registrar.submit(sag_row(2), urgent=True)  # takes the buffered row along
            await wait_until_async(lambda: lazy.done() and urgent.done(), timeout=5)
            later = registrar.submit(sag_row(3))
            registrar.flush()
            await wait_until_async(later.done, timeout=5)
            assert [lazy.result(), urgent.result(), later.result()] == [True, True, True]

    asyncio.run(scenario())


def test_batch_size_is_respected(db_uri: str) -> None:
    async def scenario() -> None:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=7, linger=0.02, max_concurrent_batches=2) as registrar:
            burst = [registrar.submit(sag_row(n)) for n in range(1, 51)]
            assert await results(burst) == [True] * 50
            for n in range(51, 71):  # a stream with the loop running between submissions
                registrar.submit(sag_row(n))
                await asyncio.sleep(0)
        assert registrar.pending == 0

    asyncio.run(scenario())
    per_batch = dict(query(db_uri, "SELECT creation_date, count(*) FROM pacsfiles_pacsfile GROUP BY 1"))
    assert sum(per_batch.values()) == 70
    assert max(per_batch.values()) <= 7
    burst_batches = query(
        db_uri,
        "SELECT count(DISTINCT creation_date) FROM pacsfiles_pacsfile WHERE fname < %s",
        (sag_row(51).fname,),
    )
    assert burst_batches == [(8,)]  # 50 rows submitted at once: 7 full batches + 1 of 1


def test_submit_threadsafe_from_other_threads(db_uri: str) -> None:
    async def scenario() -> list[bool]:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=10) as registrar:
            collected: list[bool] = []

            def producer(start: int) -> None:
                futures = [registrar.submit_threadsafe(sag_row(n)) for n in range(start, start + 25)]
                futures.append(registrar.submit_threadsafe(sag_row(start)))  # a duplicate
                collected.extend(f.result(timeout=60) for f in futures)

            threads = [threading.Thread(target=producer, args=(i * 100,)) for i in range(1, 5)]
            for thread in threads:
                thread.start()
            await asyncio.to_thread(lambda: [thread.join(60) for thread in threads])
            return collected

    outcome = asyncio.run(scenario())
    assert Counter(outcome) == {True: 100, False: 4}
    assert count_files(db_uri) == 100


def test_close_flushes_everything_queued(db_uri: str) -> None:
    async def scenario() -> None:
        await create_schema(db_uri)
        async with open_registrar(db_uri, batch_size=1000, linger=3600) as registrar:
            futures = [registrar.submit(sag_row(n)) for n in range(1, 26)]
            assert registrar.pending == 25
            await registrar.close()
            assert registrar.pending == 0
            assert all(f.done() and f.result() is True for f in futures)
            with pytest.raises(RuntimeError):
                registrar.submit(sag_row(99))

    asyncio.run(scenario())
    assert count_files(db_uri) == 25


# -- outages -----------------------------------------------------------------------------------------


class RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "registration failed, retrying the batch":
            self.retries += 1


@contextlib.contextmanager
def counting_retries() -> Any:
    counter = RetryCounter()
    LOG.addHandler(counter)
    try:
        yield counter
    finally:
        LOG.removeHandler(counter)


def test_server_that_comes_up_later(embedded_pg: Callable[[], EmbeddedPostgres], wait_until_async: Callable) -> None:
    server = embedded_pg()
    uri = server.start()
    asyncio.run(create_schema(uri))
    server.stop()

    async def scenario(counter: RetryCounter) -> list[bool]:
        async with open_registrar(
            uri, wait_for_pool=False, batch_size=10, acquire_timeout=1.0, backoff_initial=0.05, backoff_max=0.5
        ) as registrar:
            futures = [registrar.submit(sag_row(n)) for n in range(1, 26)]
            await wait_until_async(lambda: counter.retries >= 2, timeout=30)
            await asyncio.to_thread(server.start)
            return await results(futures, timeout=120)

    with counting_retries() as counter:
        assert asyncio.run(scenario(counter)) == [True] * 25
    assert count_files(uri) == 25


def test_close_with_a_deadline_gives_up_while_the_server_is_down(
    embedded_pg: Callable[[], EmbeddedPostgres],
) -> None:
    server = embedded_pg()
    uri = server.start()
    asyncio.run(create_schema(uri))

    async def scenario() -> list[bool | BaseException]:
        pool = AsyncConnectionPool(uri, min_size=1, max_size=2, open=False, check=AsyncConnectionPool.check_connection)
        await pool.open(wait=True)
        registrar = Registrar(
            pool, batch_size=5, linger=0.01, max_concurrent_batches=2, logger=LOG, acquire_timeout=0.5
        )
        await registrar.start()
        await asyncio.to_thread(server.stop)
        futures = [registrar.submit(sag_row(n)) for n in range(1, 13)]
        await asyncio.wait_for(registrar.close(timeout=1.0), 30)
        assert registrar.pending == 0
        await pool.close()
        return list(await asyncio.gather(*futures, return_exceptions=True))

    outcome = asyncio.run(scenario())
    assert all(isinstance(result, RegistrarClosedError) for result in outcome)


def test_rows_of_an_attempt_with_unknown_commit_outcome_are_recognised(db_uri: str) -> None:
    """The helper behind "connection lost during COMMIT": our own earlier rows count as inserted."""

    async def scenario() -> tuple[set[str], set[str]]:
        await create_schema(db_uri)
        rows = [fit_row(sag_row(n), LOG) for n in (1, 2)]
        first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        async with await psycopg.AsyncConnection.connect(db_uri) as conn:
            ids = await batch_sql.upsert_pacs(conn, [AET])
            await batch_sql.insert_rows(conn, rows[:1], ids, first)
            await conn.commit()
            retry = await batch_sql.insert_rows(conn, rows, ids, first + dt.timedelta(seconds=1))
            ours = await batch_sql.inserted_by_attempts(conn, [rows[0].fname], [first])
            return retry, ours

    retry, ours = asyncio.run(scenario())
    assert retry == {sag_row(2).fname}
    assert ours == {sag_row(1).fname}


# -- embedded server management --------------------------------------------------------------------


def test_stop_stale_servers_stops_orphans_only(pg_session_folder: Path) -> None:
    root = pg_session_folder / f"stale-{random.randrange(1 << 30)}"
    owned = EmbeddedPostgres(root / "owned" / "pgdata")
    orphan = EmbeddedPostgres(root / "orphan" / "pgdata")
    try:
        owned.start()
        orphan.start()
        # what a SIGKILLed owner leaves behind: a running server listing only dead processes
        (orphan.pgdata / ".handle_pids.json").write_text("[999999999]")
        assert stop_stale_servers(root) == 1
        assert owned.running and not orphan.running
        assert stop_stale_servers(root) == 0
        # a restart reuses the data directory
        uri = orphan.start()
        assert query(uri, "SELECT 1") == [(1,)]
        assert stop_stale_servers(root, only_orphans=False) == 2
        assert not owned.running and not orphan.running
    finally:
        owned.stop()
        orphan.stop()


@pytest.mark.parametrize(
    "locking", ["none", "hook", "one-statement"], ids=["without-series-locks", "with-series-locks", "one-statement"]
)
def test_batches_of_two_workers_sharing_series_never_deadlock(
    db_uri: str, caplog: pytest.LogCaptureFixture, locking: str
) -> None:
    """Worker A's batch counts an instance of S2, then its marker row's SQL touches S1; worker
    B's does the opposite. Without taking the series locks first (``on_begin``) the two
    transactions wait on each other until PostgreSQL kills one (the control case, which shows
    this test can fail); with them, they run one after the other. The production path (the
    locks, the insert and the count as one statement: ``insert_counted``) must behave as the
    hook does."""
    from oxidicom_py.completion import counted_insert, progress

    def rows(instance_series: str, marker_series: str, n: int) -> tuple[PacsFileRow, PacsFileRow]:
        instance = sag_row(n, SeriesInstanceUID=instance_series, pacs_identifier="DEADLOCK")
        marker = sag_row(n + 100, SeriesInstanceUID=marker_series, pacs_identifier=progress.MARKER_PACS)
        return instance, marker

    def slow_touch(series: str) -> Callable[[psycopg.AsyncConnection], Awaitable[None]]:
        async def extra(conn: psycopg.AsyncConnection) -> None:
            await conn.execute("SELECT pg_sleep(0.3)")  # let the other batch take its first lock
            await progress.association_started(
                conn, pacs="DEADLOCK", series=series, study="1.2", patient="P", ulid=f"U-{series}"
            )

        return extra

    async def scenario() -> list[bool]:
        await create_schema(db_uri)
        hooks: dict[str, Any] = {"on_inserted": progress.count_inserted, "batch_size": 2, "linger": 5}
        if locking == "hook":
            hooks["on_begin"] = progress.lock_series
        elif locking == "one-statement":
            hooks = {"insert": counted_insert.insert_counted, "batch_size": 2, "linger": 5}
        async with open_registrar(db_uri, **hooks) as a, open_registrar(db_uri, **hooks) as b:
            # as in production, each worker knows its PACS rows already (no upsert to queue behind)
            await results([*(a.submit(r) for r in rows("S0", "S0", 10)), *(b.submit(r) for r in rows("S0", "S0", 20))])
            a_instance, a_marker = rows("S2", "S1", 1)
            b_instance, b_marker = rows("S1", "S2", 2)
            futures = [
                a.submit(a_instance),
                a.submit(a_marker, slow_touch("S1")),
                b.submit(b_instance),
                b.submit(b_marker, slow_touch("S2")),
            ]
            return await results(futures, timeout=60)

    caplog.set_level(logging.WARNING, logger=LOG.name)
    assert asyncio.run(scenario()) == [True] * 4
    deadlocks = [r for r in caplog.records if "eadlock" in str(getattr(r, "error", ""))]
    assert (len(deadlocks) > 0) is (locking == "none")
    counts = dict(query(db_uri, 'SELECT "SeriesInstanceUID", received FROM oxidicom_series_progress'))
    assert counts == {"S0": 2, "S1": 1, "S2": 1}


def test_a_steady_batch_is_one_round_trip_and_counts_its_series(db_uri: str, tmp_path: Path) -> None:
    """Once the PACS ids are known, a batch without extra SQL is one statement in autocommit
    (the series locks, the insert and the progress count together) and the pool lends a
    recently used connection without a check query: one Sync or Query from us per batch
    (libpq's protocol trace counts them). A duplicate in the next batch adds nothing."""
    from psycopg.pq import Trace

    from oxidicom_py import runtime
    from oxidicom_py.completion import counted_insert, progress

    trace_path = tmp_path / "libpq.trace"
    trace = trace_path.open("w")

    connections: list[psycopg.AsyncConnection] = []

    def start_trace(conn: psycopg.AsyncConnection) -> None:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)

    async def traced(conn: psycopg.AsyncConnection) -> None:
        connections.append(conn)
        start_trace(conn)

    def round_trips() -> int:
        for conn in connections:  # libpq buffers its trace: untrace flushes it
            conn.pgconn.untrace()
            start_trace(conn)
        lines = trace_path.read_text().splitlines()
        return sum(
            1 for line in lines if line.startswith("F") and line.split("\t")[2].split(" ")[0] in ("Sync", "Query")
        )

    async def scenario() -> tuple[int, list[bool], list[bool]]:
        await create_schema(db_uri)
        pool = runtime.make_pool(db_uri, 1, configure=traced)
        await pool.open(wait=True, timeout=30)
        registrar = Registrar(
            pool,
            batch_size=100,
            linger=3600,
            logger=LOG,
            insert=counted_insert.insert_counted,
            before_commit=progress.before_commit,
        )
        await registrar.start()
        try:
            assert await registrar.submit(sag_row(1), urgent=True)  # first batch: the PACS row too
            before = round_trips()
            batch = [registrar.submit(sag_row(n)) for n in range(2, 12)]
            registrar.flush()
            first = await results(batch)
            used = round_trips() - before
            again = [registrar.submit(sag_row(n)) for n in (11, 12)]
            registrar.flush()
            second = await results(again)
        finally:
            await registrar.close(timeout=30)
            await pool.close()
        return used, first, second

    used, first, second = asyncio.run(scenario())
    trace.close()
    assert first == [True] * 10 and second == [False, True]
    assert used == 1, f"{used} round trips for one steady batch"
    assert query(db_uri, "SELECT received FROM oxidicom_series_progress") == [(12,)]
