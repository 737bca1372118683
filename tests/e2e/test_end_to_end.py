"""End to end, as deployed: ``oxidicom-py serve`` + real PostgreSQL, pushed to by a real Orthanc
(REST ``/modalities/{id}/store``, two series concurrently) and by DCMTK ``storescu``."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from harness import IMPLEMENTATIONS, LOOPBACK, dataset_bytes, load_script, marker_values, peer_env, wait_until
from peers import Orthanc, ServeProcess

pytestmark = pytest.mark.integration

ORTHANC_AET = "OXITESTORTHANC"
OUR_AET = "OXIDICOMTEST"


@pytest.fixture(scope="module")
def corpus(sample_corpus: dict[str, Any]) -> dict[str, Any]:
    return sample_corpus


def _count(db: str, series_uid: str, pacs: str = ORTHANC_AET) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
            'WHERE f."SeriesInstanceUID" = %s AND p.identifier = %s',
            (series_uid, pacs),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _all_rows(db: str) -> list[dict[str, Any]]:
    with psycopg.connect(db, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT f.*, p.identifier AS pacs FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
            "WHERE p.identifier <> 'org.fnndsc.oxidicom'"  # instances only, not the series marker rows
        ).fetchall()


def _stored_paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "SERVICES").rglob("*.dcm")}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_orthanc_pushes_both_series_concurrently(
    tmp_path: Path, db_uri: str, corpus: dict[str, Any], implementation: str
) -> None:
    files_root = tmp_path / "files"
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(files_root),
        "OXIDICOM_SCP_AET": OUR_AET,
        "OXIDICOM_DB_BATCH_SIZE": "50",
        "OXIDICOM_SCP_IMPLEMENTATION": implementation,
    }
    with Orthanc(tmp_path / "orthanc") as orthanc:
        env["OXIDICOM_PACS_ADDRESS"] = f'{{{ORTHANC_AET}="{LOOPBACK}:{orthanc.dicom_port}"}}'
        with ServeProcess(env, tmp_path) as rx:
            _push_twice_and_check(orthanc, rx, db_uri, files_root, corpus)
    assert rx.proc is not None and rx.proc.returncode == 0


def _push_twice_and_check(
    orthanc: Orthanc, rx: ServeProcess, db_uri: str, files_root: Path, corpus: dict[str, Any]
) -> None:
    by_series: dict[str, list[Path]] = corpus["by_series"]
    assert orthanc.upload(corpus["files"]) == 576
    orthanc.add_modality("OXIDICOMTEST", OUR_AET, rx.port)
    ids = orthanc.series_ids()
    assert set(ids) == set(by_series)

    def push_all() -> list[dict[str, Any]]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda uid: orthanc.store("OXIDICOMTEST", [ids[uid]]), by_series))

    for result in push_all():
        assert result["FailedInstancesCount"] == 0
    counts = {uid: len(paths) for uid, paths in by_series.items()}
    assert sorted(counts.values()) == [192, 384]
    for uid, n in counts.items():
        wait_until(lambda uid=uid, n=n: _count(db_uri, uid) == n, 30, what=f"{n} rows for {uid}")

    # completion: counts from Orthanc's C-FIND, markers, progress rows
    for uid, n in counts.items():
        wait_until(lambda uid=uid: marker_values(db_uri, uid, "OxidicomAttemptedPushCount"), 30, what="push count")
        assert marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances") == [str(n)]
        assert marker_values(db_uri, uid, "OxidicomAttemptedPushCount") == [str(n)]
        with psycopg.connect(db_uri) as conn:
            progress = conn.execute(
                'SELECT expected, received, state FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s',
                (uid,),
            ).fetchall()
        assert progress == [(n, n, "complete")]

    # storage: exactly the reference's paths, nothing staged, datasets identical to Orthanc's copies
    stored = _stored_paths(files_root)
    assert len(stored) == 576
    if corpus["real"]:
        assert stored == set(Path(corpus["expected"]).read_text().split())
    assert list((files_root / ".oxidicom-staging").rglob("*.part")) == []
    for instance_id in orthanc.get("/instances"):
        theirs = orthanc.request("GET", f"/instances/{instance_id}/file")
        ds = pydicom.dcmread(io.BytesIO(theirs), stop_before_pixels=True)
        ours = next(files_root.rglob(f"*-{ds.SOPInstanceUID}.dcm"))
        assert dataset_bytes(ours) == _dataset_of(theirs)
        meta = pydicom.dcmread(ours, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == ORTHANC_AET
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (ds.SOPClassUID, ds.SOPInstanceUID)

    # registry: one row per file, with the field values of the reference
    rows = _all_rows(db_uri)
    assert len(rows) == 576 and {r["fname"] for r in rows} == stored
    assert {r["pacs"] for r in rows} == {ORTHANC_AET}
    if corpus["real"]:
        sag = next(r for r in rows if r["PatientID"] == "1449c1d")
        assert sag["PatientName"] == "anonymized"
        assert sag["PatientBirthDate"] == dt.date(2009, 7, 1)
        assert sag["PatientAge"] == 1096
        assert sag["PatientSex"] == "M"
        assert sag["StudyDate"] == dt.date(2013, 3, 8)
        assert sag["AccessionNumber"] == "98edede8b2"
        assert sag["Modality"] == "MR"
        assert sag["ProtocolName"] == "SAG MPRAGE 220 FOV"
        assert sag["StudyDescription"] == "MR-Brain w/o Contrast"
        assert sag["SeriesDescription"] == "SAG MPRAGE 220 FOV"
        jane = next(r for r in rows if r["PatientID"] == "02")
        assert jane["AccessionNumber"] == "" and jane["PatientAge"] is None and jane["PatientSex"] == "F"
        assert jane["StudyDescription"] == "Hanke_Stadler^0024_transrep"

    # pushing again changes nothing: same files, same rows (no duplicates), no errors
    before = {p: (files_root / p).read_bytes() for p in sorted(stored)[:20]}
    ids_before = {r["id"] for r in rows}
    for result in push_all():
        assert result["FailedInstancesCount"] == 0
    wait_until(lambda: sum(1 for line in rx.lines if line.get("msg", "").startswith("association ended")) >= 4, 30)
    assert _stored_paths(files_root) == stored
    assert {p: (files_root / p).read_bytes() for p in before} == before
    assert {r["id"] for r in _all_rows(db_uri)} == ids_before
    assert rx.messages("error") == []


def _dataset_of(part10: bytes) -> bytes:
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_storescu_pushes_a_synthetic_folder(tmp_path: Path, db_uri: str, implementation: str) -> None:
    synthetic = load_script("synthetic")
    files = synthetic.generate(tmp_path / "src", n_series=3, slices=20, rows=128, cols=128, modality="CT")
    files_root = tmp_path / "files"
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(files_root),
        "OXIDICOM_SCP_AET": OUR_AET,
        "OXIDICOM_SCP_IMPLEMENTATION": implementation,
    }
    with ServeProcess(env, tmp_path) as rx:
        proc = subprocess.run(
            [
                "/usr/bin/storescu",
                "-aet",
                "DCMTKSCU",
                "-aec",
                OUR_AET,
                "+sd",
                "+r",
                LOOPBACK,
                str(rx.port),
                str(tmp_path / "src"),
            ],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        series = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files}
        for uid in series:
            wait_until(lambda uid=uid: _count(db_uri, uid, "DCMTKSCU") == 20, 30, what=f"rows of {uid}")
        assert len(_stored_paths(files_root)) == 60
        assert {r["Modality"] for r in _all_rows(db_uri)} == {"CT"}
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        for path in (files_root / "SERVICES").rglob("*.dcm"):
            meta = pydicom.filereader.read_file_meta_info(path)
            source = sources[str(meta.MediaStorageSOPInstanceUID)]
            assert meta.TransferSyntaxUID == pydicom.filereader.read_file_meta_info(source).TransferSyntaxUID
            assert dataset_bytes(path) == dataset_bytes(source)
    assert rx.proc is not None and rx.proc.returncode == 0
