"""Series completion without a PACS to ask: marker files, their rows, progress rows, ordering."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from harness import LOOPBACK, load_script, peer_env, query, wait_until
from peers import ServeProcess
from psycopg.rows import dict_row

pytestmark = pytest.mark.integration

MARKERS = "SERVICES/PACS/org.fnndsc.oxidicom/"


def _env(db_uri: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        **extra,
    }


def _push(port: int, files: list[Path], calling: str = "SENDER") -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/storescu", "-aet", calling, "-aec", "OXIDICOMTEST", LOOPBACK, str(port), *map(str, files)],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _markers(db: str) -> list[dict[str, Any]]:
    return query(
        db,
        'SELECT f.fname, f."ProtocolName", f."SeriesDescription", f."SeriesInstanceUID", f."PatientID" '
        "FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
        "WHERE p.identifier = 'org.fnndsc.oxidicom' ORDER BY f.id",
    )


def _series_of(files: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID), []).append(f)
    return out


def test_markers_and_progress_without_a_pacs_address(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", n_series=2, slices=15, rows=32, cols=32)
    series = _series_of(files)
    with ServeProcess(_env(db_uri, tmp_path), tmp_path) as rx:
        sender = _push(rx.port, files)
        assert sender.wait(60) == 0
        wait_until(lambda: len(_markers(db_uri)) == 4, 30, what="four marker rows")
    markers = _markers(db_uri)
    by_key = {(m["SeriesInstanceUID"], m["ProtocolName"]): m for m in markers}
    for uid in series:
        assert by_key[(uid, "NumberOfSeriesRelatedInstances")]["SeriesDescription"] == "unknown"
        push = by_key[(uid, "OxidicomAttemptedPushCount")]
        assert push["SeriesDescription"] == "15"
        assert push["fname"].startswith(MARKERS + "SERVICES/PACS/SENDER/")
        assert push["fname"].endswith("/OxidicomAttemptedPushCount=15")
        assert (tmp_path / "files" / push["fname"]).stat().st_size == 0
    progress = query(db_uri, "SELECT * FROM oxidicom_series_progress ORDER BY id")
    assert len(progress) == 2
    for p in progress:
        assert p["pacs_identifier"] == "SENDER"
        assert (p["received"], p["expected"], p["state"]) == (15, None, "complete")
        assert p["open_associations"] == [] and p["completed"] is not None
    assert any("OXIDICOM_PACS_ADDRESS has no entry" in str(line.get("msg")) for line in rx.lines)


def test_push_count_row_is_visible_only_after_every_row_it_counts(tmp_path: Path, db_uri: str) -> None:
    """Concurrent associations against a deliberately slow database (every insert statement sleeps):
    whenever a client first sees an OxidicomAttemptedPushCount row, the series' instance rows and
    its NumberOfSeriesRelatedInstances row are already all visible."""
    with psycopg.connect(db_uri, autocommit=True) as conn:
        from oxidicom_py.registry.schema import ensure_schema_sync

        ensure_schema_sync(conn)
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(random() * 0.15); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON pacsfiles_pacsfile FOR EACH STATEMENT EXECUTE FUNCTION slow()"
        )
    synthetic = load_script("synthetic")
    groups = [
        synthetic.generate(tmp_path / f"src{i}", n_series=2, slices=12 + i, rows=32, cols=32, seed=10 + i)
        for i in range(4)
    ]
    violations: list[str] = []
    seen: dict[str, int] = {}
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 120
        with psycopg.connect(db_uri, autocommit=True, row_factory=dict_row) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                rows = conn.execute(
                    'SELECT "SeriesInstanceUID" AS uid, "ProtocolName" AS key, "SeriesDescription" AS value '
                    "FROM pacsfiles_pacsfile WHERE \"ProtocolName\" = 'OxidicomAttemptedPushCount'"
                ).fetchall()
                for r in rows:
                    if r["uid"] in seen:
                        continue
                    seen[r["uid"]] = int(r["value"])
                    counted = conn.execute(
                        "SELECT count(*) AS n FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
                        "WHERE p.identifier <> 'org.fnndsc.oxidicom' AND f.\"SeriesInstanceUID\" = %s",
                        (r["uid"],),
                    ).fetchone()
                    count_row = conn.execute(
                        "SELECT count(*) AS n FROM pacsfiles_pacsfile "
                        'WHERE "SeriesInstanceUID" = %s AND "ProtocolName" = \'NumberOfSeriesRelatedInstances\'',
                        (r["uid"],),
                    ).fetchone()
                    assert counted is not None and count_row is not None
                    if counted["n"] != int(r["value"]) or count_row["n"] != 1:
                        violations.append(f"{r['uid']}: {counted['n']} rows, {count_row['n']} count rows")
                time.sleep(0.002)  # polling interval of the simulated client, not a wait for a condition

    env = _env(db_uri, tmp_path, OXIDICOM_DB_BATCH_SIZE="3", OXIDICOM_DB_LINGER_MS="1")
    watcher = threading.Thread(target=client, daemon=True)
    with ServeProcess(env, tmp_path) as rx:
        watcher.start()
        senders = [_push(rx.port, files, calling=f"SENDER{i}") for i, files in enumerate(groups)]
        for s in senders:
            _out, err = s.communicate(timeout=120)
            assert s.returncode == 0, err
        wait_until(lambda: len(seen) == 8, 60, what="all eight push-count rows")
        stop.set()
        watcher.join(10)
    assert violations == []
    assert sorted(seen.values()) == sorted([12, 12, 13, 13, 14, 14, 15, 15])


def test_quiescence_ends_a_series_and_a_late_instance_reopens_it(tmp_path: Path, db_uri: str) -> None:
    """No count from the PACS and an association left open: the series ends after the
    quiescence timeout; an instance arriving later reopens it and is counted; the release ends it."""
    from harness import RawScu, dataset_bytes, sop_of

    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=4, rows=32, cols=32, seed=99)
    uid = next(iter(_series_of(files)))

    def progress() -> dict[str, Any] | None:
        rows = query(db_uri, 'SELECT * FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s', uid)
        return rows[0] if rows else None

    env = _env(db_uri, tmp_path, OXIDICOM_SERIES_QUIESCENCE="0.5", OXIDICOM_LISTENER_PROCESSES="1")
    with ServeProcess(env, tmp_path) as rx:
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        for f in files[:3]:
            assert scu.store(1, *sop_of(f), dataset_bytes(f))[0] == 0
        # no count: quiet proves nothing (a crashed receiver host is quiet too), so incomplete
        wait_until(lambda: (p := progress()) is not None and p["state"] == "incomplete", 20, what="quiescence")
        p = progress()
        assert p is not None and (p["received"], p["expected"], p["open_associations"]) == (3, None, [])
        assert p["end_reason"] == "quiescence"
        assert scu.store(1, *sop_of(files[3]), dataset_bytes(files[3]))[0] == 0  # a late instance
        wait_until(lambda: (p := progress()) is not None and p["received"] == 4, 20, what="the late instance")
        assert progress()["state"] == "receiving"  # type: ignore[index]
        scu.release()
        wait_until(lambda: (p := progress()) is not None and p["state"] == "complete", 20, what="the release")
        assert progress()["end_reason"] == "released"  # type: ignore[index]
    ended = [(line["state"], line["reason"]) for line in rx.lines if line.get("msg") == "series ended"]
    assert ended == [("incomplete", "quiescence"), ("complete", "released")]  # told once per end


def test_quiescence_without_a_count_is_incomplete_until_the_release_completes_it(tmp_path: Path, db_uri: str) -> None:
    """A quiet series with no count from the PACS ends ``incomplete`` (a crashed receiver host is
    quiet too); when its association is released later, it turns ``complete`` and that is told as
    a new end (what processing waits for)."""
    from harness import RawScu, dataset_bytes, sop_of

    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=2, rows=32, cols=32, seed=98)
    uid = next(iter(_series_of(files)))

    def state() -> tuple[str, str | None] | None:
        sql = 'SELECT state, end_reason FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s'
        rows = query(db_uri, sql, uid)
        return (rows[0]["state"], rows[0]["end_reason"]) if rows else None

    env = _env(db_uri, tmp_path, OXIDICOM_SERIES_QUIESCENCE="0.5", OXIDICOM_LISTENER_PROCESSES="1")
    with ServeProcess(env, tmp_path) as rx:
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        for f in files:
            assert scu.store(1, *sop_of(f), dataset_bytes(f))[0] == 0
        wait_until(lambda: state() == ("incomplete", "quiescence"), 20, what="the quiescence end")
        scu.release()
        wait_until(lambda: state() == ("complete", "released"), 20, what="the release")
        wait_until(
            lambda: sum(1 for line in rx.lines if line.get("msg") == "series ended") >= 2, 10, what="two ends logged"
        )
    ended = [(line["state"], line["reason"]) for line in rx.lines if line.get("msg") == "series ended"]
    assert ended == [("incomplete", "quiescence"), ("complete", "released")]
