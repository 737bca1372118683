"""The pynetdicom fallback acceptor (OXIDICOM_SCP_IMPLEMENTATION=pynetdicom) feeds the same storage path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pydicom
import pytest
from harness import LOOPBACK, RawScu, dataset_bytes, encode_dataset, load_script, peer_env, wait_until
from peers import ServeProcess

from oxidicom_py.net import dimse

pytestmark = pytest.mark.integration


def _rows(db: str) -> list[tuple[str, str]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            'SELECT fname, "Modality" FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id '
            "WHERE p.identifier <> 'org.fnndsc.oxidicom'"  # instances only, not the series marker rows
        ).fetchall()


@pytest.mark.parametrize("processes", [1, 2])
def test_pynetdicom_acceptor_stores_and_registers(tmp_path: Path, db_uri: str, processes: int) -> None:
    synthetic = load_script("synthetic")
    files = synthetic.generate(tmp_path / "src", n_series=2, slices=10, rows=64, cols=64)
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_SCP_IMPLEMENTATION": "pynetdicom",
        "OXIDICOM_LISTENER_PROCESSES": str(processes),
    }
    with ServeProcess(env, tmp_path) as rx:
        assert any("(pynetdicom)" in str(line.get("msg")) for line in rx.lines)
        proc = subprocess.run(
            ["storescu", "-aet", "FALLBACK", "-aec", "OXIDICOMTEST", LOOPBACK, str(rx.port), *map(str, files)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        bad = pydicom.dcmread(files[0])
        del bad.StudyInstanceUID
        status, comment = scu.store(1, str(bad.SOPClassUID), str(bad.SOPInstanceUID), encode_dataset(bad))
        scu.release()
        assert status == dimse.CANNOT_UNDERSTAND and "StudyInstanceUID" in comment
        wait_until(lambda: len(_rows(db_uri)) == len(files), 30, what="every row")
        stored = sorted((tmp_path / "files" / "SERVICES").rglob("*.dcm"))
        assert sorted(dataset_bytes(p) for p in stored) == sorted(dataset_bytes(p) for p in files)
    assert rx.proc is not None and rx.proc.returncode == 0
