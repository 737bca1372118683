"""Series completion against a real Orthanc: counts from its C-FIND, markers, progress, watch."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import LOOPBACK, load_script, marker_values, query, wait_until
from peers import Orthanc, ServeProcess, free_port

pytestmark = pytest.mark.integration

AET = "OXITESTORTHANC"


def _instances(db: str, uid: str) -> int:
    return int(
        query(
            db,
            "SELECT count(*) AS n FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
            'WHERE p.identifier = %s AND f."SeriesInstanceUID" = %s',
            AET,
            uid,
        )[0]["n"]
    )


def _progress(db: str, uid: str) -> dict[str, Any] | None:
    rows = query(db, 'SELECT * FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s', uid)
    return rows[0] if rows else None


@pytest.fixture(scope="module")
def synthetic_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    synthetic = load_script("synthetic")
    files = synthetic.generate(tmp_path_factory.mktemp("cs"), n_series=2, slices=30, rows=32, cols=32, seed=77)
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID), []).append(f)
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, synthetic_series: dict[str, list[Path]]) -> Iterator[Orthanc]:
    with Orthanc(tmp_path_factory.mktemp("orthanc"), aet=AET) as o:
        o.upload(f for files in synthetic_series.values() for f in files)
        yield o


def _serve_env(db: str, tmp_path: Path, pacs_port: int, **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_PACS_ADDRESS": f'{{{AET}="{LOOPBACK}:{pacs_port}"}}',
        **extra,
    }


def _instance_ids(orthanc: Orthanc, series_id: str) -> list[str]:
    return [i["ID"] for i in orthanc.get(f"/series/{series_id}/instances")]


def test_counts_from_orthanc_markers_and_progress(
    tmp_path: Path, db_uri: str, orthanc: Orthanc, synthetic_series: dict[str, list[Path]]
) -> None:
    with ServeProcess(_serve_env(db_uri, tmp_path, orthanc.dicom_port), tmp_path) as rx:
        orthanc.add_modality("OXI", "OXIDICOMTEST", rx.port)
        ids = orthanc.series_ids()
        results: list[dict[str, Any]] = []
        threads = [
            threading.Thread(target=lambda uid=uid: results.append(orthanc.store("OXI", [ids[uid]])))
            for uid in synthetic_series
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [r["FailedInstancesCount"] for r in results] == [0, 0]
        for uid, files in synthetic_series.items():
            wait_until(lambda uid=uid: marker_values(db_uri, uid, "OxidicomAttemptedPushCount"), 30, what="push count")
            assert marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances") == [str(len(files))]
            assert marker_values(db_uri, uid, "OxidicomAttemptedPushCount") == [str(len(files))]
            p = _progress(db_uri, uid)
            assert p is not None
            assert (p["expected"], p["received"], p["state"]) == (len(files), len(files), "complete")
            assert p["end_reason"] == "count"
            assert p["count_queries"] == 1  # a PACS that holds the whole series: asked once
            assert _instances(db_uri, uid) == len(files)
    assert rx.messages("error") == []
    ended = sorted(
        (line["SeriesInstanceUID"], line["reason"]) for line in rx.lines if line.get("msg") == "series ended"
    )
    assert ended == sorted((uid, "count") for uid in synthetic_series)  # each told once


def test_split_across_two_associations_then_partial(
    tmp_path: Path, db_uri: str, orthanc: Orthanc, synthetic_series: dict[str, list[Path]]
) -> None:
    uid = next(iter(synthetic_series))
    with ServeProcess(_serve_env(db_uri, tmp_path, orthanc.dicom_port), tmp_path) as rx:
        orthanc.add_modality("OXI", "OXIDICOMTEST", rx.port)
        instances = sorted(_instance_ids(orthanc, orthanc.series_ids()[uid]))
        first, second = instances[:12], instances[12:]
        assert orthanc.store("OXI", first)["FailedInstancesCount"] == 0
        # a partial push ends incomplete, with the right numbers
        wait_until(lambda: (p := _progress(db_uri, uid)) is not None and p["state"] == "incomplete", 30)
        p = _progress(db_uri, uid)
        assert p is not None and (p["received"], p["expected"], p["end_reason"]) == (12, 30, "released")
        assert marker_values(db_uri, uid, "OxidicomAttemptedPushCount") == ["12"]
        # the rest arrives in a second association: reopened, counted, complete
        assert orthanc.store("OXI", second)["FailedInstancesCount"] == 0
        wait_until(lambda: len(marker_values(db_uri, uid, "OxidicomAttemptedPushCount")) == 2, 30)
        p = _progress(db_uri, uid)
        assert p is not None and (p["received"], p["expected"], p["state"]) == (30, 30, "complete")
        assert p["end_reason"] == "count"
        assert sorted(marker_values(db_uri, uid, "OxidicomAttemptedPushCount")) == ["12", "18"]
        assert marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances") == ["30", "30"]
        assert _instances(db_uri, uid) == 30


class SilentPeer:
    """Accepts TCP connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("peer", ["silent", "unreachable"])
def test_unanswered_count_is_unknown_and_never_stalls_registration(
    tmp_path: Path, db_uri: str, orthanc: Orthanc, synthetic_series: dict[str, list[Path]], peer: str
) -> None:
    silent = SilentPeer() if peer == "silent" else None
    port = silent.port if silent is not None else free_port()
    uid = next(iter(synthetic_series))
    n = len(synthetic_series[uid])
    env = _serve_env(db_uri, tmp_path, port, OXIDICOM_CFIND_CONNECT_TIMEOUT="2", OXIDICOM_CFIND_TIMEOUT="3")
    try:
        with ServeProcess(env, tmp_path) as rx:
            orthanc.add_modality("OXI", "OXIDICOMTEST", rx.port)
            started = time.monotonic()
            assert orthanc.store("OXI", [orthanc.series_ids()[uid]])["FailedInstancesCount"] == 0
            wait_until(lambda: _instances(db_uri, uid) == n, 30, what="instance rows")
            if silent is not None:  # every instance registered while the C-FIND still waits
                assert marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances") == []
            wait_until(lambda: marker_values(db_uri, uid, "OxidicomAttemptedPushCount"), 30, what="push count")
            elapsed = time.monotonic() - started
            assert marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances") == ["unknown"]
            assert elapsed < 2 + 3 + 5, elapsed  # the configured timeouts bound the wait
            p = _progress(db_uri, uid)
            assert p is not None and (p["received"], p["expected"], p["state"]) == (n, None, "complete")
            assert p["end_reason"] == "released"
    finally:
        if silent is not None:
            silent.close()


def test_watch_exits_0_when_the_push_completes(
    tmp_path: Path, db_uri: str, orthanc: Orthanc, synthetic_series: dict[str, list[Path]]
) -> None:
    uids = list(synthetic_series)
    with ServeProcess(_serve_env(db_uri, tmp_path, orthanc.dicom_port), tmp_path) as rx:
        orthanc.add_modality("OXI", "OXIDICOMTEST", rx.port)
        selection = ["--series", uids[0], "--series", uids[1]]
        watch = subprocess.Popen(
            [sys.executable, "-m", "oxidicom_py", "watch", *selection, "--timeout", "120"],
            env={**rx.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ids = orthanc.series_ids()
        for uid in uids:
            assert orthanc.store("OXI", [ids[uid]])["FailedInstancesCount"] == 0
        out, err = watch.communicate(timeout=150)
        assert watch.returncode == 0, (out, err)
        assert "30/30" in out
