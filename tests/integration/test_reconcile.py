"""Files in storage without a row (a crash between write and commit) get registered, once."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from harness import fast_inserts, load_script, slow_inserts, storescu, wait_until
from peers import ServeProcess
from psycopg.rows import dict_row

from oxidicom_py.storage.readback import row_of_stored_file

pytestmark = pytest.mark.integration

INSTANCE_ROWS = (
    "SELECT f.* , p.identifier AS pacs FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
    "WHERE p.identifier <> 'org.fnndsc.oxidicom' ORDER BY fname"
)


def _rows(db: str) -> list[dict[str, Any]]:
    with psycopg.connect(db, row_factory=dict_row) as conn:
        return conn.execute(INSTANCE_ROWS).fetchall()


def _env(db: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        **extra,
    }


def _reconciled(rx: ServeProcess) -> list[dict[str, Any]]:
    return [line for line in rx.lines if str(line.get("msg", "")).startswith("reconciliation done")]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_stored_files_without_rows_are_registered_at_start_up(tmp_path: Path, db_uri: str, processes: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", n_series=2, slices=5, rows=32, cols=32)
    env = _env(db_uri, tmp_path, OXIDICOM_LISTENER_PROCESSES=processes)
    with ServeProcess(env, tmp_path) as rx:
        storescu(rx.port, calling="RECONCILE", files=files)
        wait_until(lambda: len(_rows(db_uri)) == 10, 30, what="rows")
    before = _rows(db_uri)
    with psycopg.connect(db_uri) as conn:  # the crash: files stay, rows are gone
        conn.execute("DELETE FROM pacsfiles_pacsfile")
        conn.execute("DELETE FROM oxidicom_series_progress")
    with ServeProcess(env, tmp_path) as rx:
        wait_until(lambda: _reconciled(rx), 30, what="reconciliation")
        assert _reconciled(rx)[0]["missing"] == 10 and _reconciled(rx)[0]["registered"] == 10
        after = _rows(db_uri)
    keep = ("fname", "pacs", "PatientID", "PatientName", "StudyDate", "SeriesInstanceUID", "PatientAge", "Modality")
    assert [{k: r[k] for k in keep} for r in after] == [{k: r[k] for k in keep} for r in before]
    with psycopg.connect(db_uri) as conn:
        received = conn.execute("SELECT sum(received) FROM oxidicom_series_progress").fetchone()
    assert received == (10,)
    with ServeProcess(env, tmp_path) as rx:  # nothing is missing any more: nothing registered twice
        wait_until(lambda: _reconciled(rx), 30, what="second reconciliation")
        assert _reconciled(rx)[0]["missing"] == 0
        assert len(_rows(db_uri)) == 10


def test_killed_workers_lose_no_acknowledged_instance(tmp_path: Path, db_uri: str) -> None:
    """kill -9 every worker while the database is too slow to have registered what they
    acknowledged: after the supervisor restarts them, every stored file has exactly one row."""

    slow_inserts(db_uri, 5)  # rows lag behind acknowledged files
    files = load_script("synthetic").generate(tmp_path / "src", n_series=2, slices=10, rows=32, cols=32)
    env = _env(db_uri, tmp_path, OXIDICOM_LISTENER_PROCESSES="2")
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        storescu(rx.port, calling="RECONCILE", files=files)  # every C-STORE answered Success: the files are in place
        stored = sorted((tmp_path / "files" / "SERVICES").rglob("*.dcm"))
        assert len(stored) == 20 and len(_rows(db_uri)) < 20
        workers = [p for p in psutil.Process(rx.proc.pid).children() if "worker" in p.cmdline()]
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)
        wait_until(lambda: sum(1 for line in rx.lines if line.get("msg") == "worker died; starting a new one") == 2, 20)
        fast_inserts(db_uri)
        wait_until(lambda: len(_rows(db_uri)) == 20, 60, what="every acknowledged instance registered")
        assert sorted(r["fname"] for r in _rows(db_uri)) == sorted(
            str(p.relative_to(tmp_path / "files")) for p in stored
        )
        assert not list((tmp_path / "files" / ".oxidicom-staging").rglob("*.part"))
    assert rx.proc.returncode == 0


def test_row_of_a_stored_file_uses_the_senders_raw_ae_title(tmp_path: Path) -> None:
    """The path holds the sanitised AE title; the file meta keeps the raw one for the row."""
    import pydicom

    from oxidicom_py.storage.part10 import file_header

    src = load_script("synthetic").generate(tmp_path / "src", slices=1, rows=8, cols=8)[0]
    ds = pydicom.dcmread(src)
    raw = src.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    dataset = raw[144 + group_length :]
    relative = "SERVICES/PACS/MY_AE/x/y/z/0001-1.dcm"
    target = tmp_path / "root" / relative
    target.parent.mkdir(parents=True)
    target.write_bytes(file_header(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MY AE") + dataset)
    row = row_of_stored_file(tmp_path / "root", relative)
    assert row is not None
    assert (row.fname, row.pacs_identifier, row.PatientID) == (relative, "MY AE", str(ds.PatientID))


def test_kill_9_in_the_middle_of_an_association(tmp_path: Path, db_uri: str) -> None:
    """A worker dies while an instance is half received: no partial file anywhere, its staged
    file is removed, and every instance it acknowledged before is stored and registered."""
    from harness import RawScu, dataset_bytes, sop_of

    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=6, rows=64, cols=64)
    env = _env(db_uri, tmp_path, OXIDICOM_LISTENER_PROCESSES="2")
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        before = {p.pid for p in psutil.Process(rx.proc.pid).children() if "worker" in p.cmdline()}
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        for f in files[:5]:
            assert scu.store(1, *sop_of(f), dataset_bytes(f))[0] == 0
        staging = tmp_path / "files" / ".oxidicom-staging"
        from oxidicom_py.dicom import dimse

        sop_class, sop_instance = sop_of(files[5])
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: sop_class,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: 99,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
            }
        )
        from harness import p_data

        data = dataset_bytes(files[5])
        scu.send(p_data(1, command, command=True) + p_data(1, data[: len(data) // 2], command=False, last=False))
        staged = wait_until(lambda: list(staging.rglob("*.part")), 10, what="the half-received instance staged")
        index = int(staged[0].parent.name.removeprefix("w"))  # staged in its worker's own folder
        started = [line for line in rx.lines if line.get("msg") == "worker started" and line.get("worker") == index]
        owner = started[-1]["pid"]
        assert owner in before
        os.kill(owner, signal.SIGKILL)
        wait_until(lambda: any(line.get("msg") == "worker died; starting a new one" for line in rx.lines), 20)
        wait_until(lambda: not list(staging.rglob("*.part")), 20, what="the staged file removed")
        wait_until(lambda: len(_rows(db_uri)) == 5, 30, what="the five acknowledged instances registered")
        stored = sorted((tmp_path / "files" / "SERVICES").rglob("*.dcm"))
        assert len(stored) == 5
        assert not any(sop_instance in p.name for p in stored)
    assert rx.proc.returncode == 0, "\n".join(str(line) for line in rx.lines[-8:])
