"""The pool of listener processes: shared port, restart of a dead worker, drain on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from harness import LOOPBACK, RawScu, dataset_bytes, instance_rows, load_script, peer_env, sop_of, wait_until
from peers import ServeProcess

pytestmark = pytest.mark.integration


def _rows(db: str) -> int:
    return instance_rows(db)


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/storescu", "-aet", "POOLTEST", "-aec", "OXIDICOMTEST", LOOPBACK, str(port), *map(str, files)],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _workers(rx: ServeProcess) -> list[psutil.Process]:
    assert rx.proc is not None
    return [p for p in psutil.Process(rx.proc.pid).children() if "worker" in p.cmdline()]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    synthetic = load_script("synthetic")
    return synthetic.generate(tmp_path_factory.mktemp("pool"), n_series=4, slices=50, rows=64, cols=64)


def _env(db_uri: str, tmp_path: Path, processes: int = 2) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_LISTENER_PROCESSES": str(processes),
    }


def test_workers_share_the_port_and_all_instances_arrive(tmp_path: Path, db_uri: str, files: list[Path]) -> None:
    with ServeProcess(_env(db_uri, tmp_path), tmp_path) as rx:
        assert len(_workers(rx)) == 2
        senders = [_storescu(rx.port, files[i::4]) for i in range(4)]
        for s in senders:
            _out, err = s.communicate(timeout=120)
            assert s.returncode == 0, err
        wait_until(lambda: _rows(db_uri) == len(files), 30, what="every row")
        assert len(list((tmp_path / "files" / "SERVICES").rglob("*.dcm"))) == len(files)
        served_by = {line.get("worker") for line in rx.lines if line.get("msg", "").startswith("association ended")}
        assert served_by <= {0, 1} and len(served_by) >= 1
    assert rx.proc is not None and rx.proc.returncode == 0


def test_a_killed_worker_is_replaced(tmp_path: Path, db_uri: str, files: list[Path]) -> None:
    with ServeProcess(_env(db_uri, tmp_path), tmp_path) as rx:
        victim = _workers(rx)[0]
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(
            lambda: any(line.get("msg") == "worker died; starting a new one" for line in rx.lines), 10, what="restart"
        )
        wait_until(lambda: len([w for w in _workers(rx) if w.pid != victim.pid]) == 2, 30, what="a new worker")
        wait_until(lambda: sum(1 for line in rx.lines if str(line.get("msg", "")).startswith("listening")) >= 3, 30)
        s = _storescu(rx.port, files[:20])
        _out, err = s.communicate(timeout=60)
        assert s.returncode == 0, err
        wait_until(lambda: _rows(db_uri) == 20, 30, what="rows after the restart")
    assert rx.proc is not None and rx.proc.returncode == 0


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_drains_running_associations(tmp_path: Path, db_uri: str, files: list[Path], processes: int) -> None:
    """An association open when SIGTERM arrives keeps working until its release; then the
    process exits 0 with every acknowledged instance registered, and the port is closed."""
    datasets = [(sop_of(f), dataset_bytes(f)) for f in files[:6]]
    with ServeProcess(_env(db_uri, tmp_path, processes), tmp_path) as rx:
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        (sop_class, sop_instance), data = datasets[0]
        assert scu.store(1, sop_class, sop_instance, data)[0] == 0
        assert rx.proc is not None
        rx.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any(line.get("msg") == "draining" for line in rx.lines), 10, what="draining")
        # the port closes at once (no drain delay): a new connection is refused, not queued
        wait_until(lambda: _echo(rx.port) != 0, 10, what="new connections refused")
        statuses = [scu.store(1, cls, inst, data)[0] for (cls, inst), data in datasets[1:]]
        assert statuses == [0] * 5
        assert rx.proc.poll() is None  # still serving the open association
        scu.release()
        assert rx.proc.wait(60) == 0
        assert _rows(db_uri) == 6  # every acknowledged instance registered before exit
        wait_until(
            lambda: any(line.get("msg") == "stopped" and line.get("clean") for line in rx.lines), 10, what="stopped"
        )
        assert _echo(rx.port) != 0


def _echo(port: int) -> int:
    return subprocess.run(
        ["/usr/bin/echoscu", "-to", "5", "-aec", "OXIDICOMTEST", LOOPBACK, str(port)],
        env=peer_env(),
        capture_output=True,
        timeout=30,
    ).returncode


@pytest.mark.parametrize("processes", [1, 2])
def test_the_drain_delay_keeps_accepting_until_it_ends_or_a_second_signal(
    tmp_path: Path, db_uri: str, processes: int
) -> None:
    """``OXIDICOM_DRAIN_DELAY``: after SIGTERM new associations are still accepted (a balancer
    needs a few seconds to see /readyz fail); a second signal ends the delay, then the port is
    closed while an open association still finishes."""
    env = {**_env(db_uri, tmp_path, processes), "OXIDICOM_DRAIN_DELAY": "600"}
    with ServeProcess(env, tmp_path) as rx:
        scu = RawScu(rx.port, [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])], called="OXIDICOMTEST")
        assert rx.proc is not None
        rx.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: any(str(line.get("msg", "")).startswith("draining: accepting") for line in rx.lines),
            10,
            what="the drain delay",
        )
        assert [_echo(rx.port) for _ in range(3)] == [0, 0, 0]  # still accepted
        rx.proc.send_signal(signal.SIGTERM)  # the second signal: no more waiting
        wait_until(lambda: _echo(rx.port) != 0, 20, what="new connections refused")
        assert rx.proc.poll() is None  # the open association keeps it running
        assert scu.echo(1) == 0
        scu.release()
        assert rx.proc.wait(60) == 0


def test_four_simultaneous_associations_split_two_and_two(tmp_path: Path, db_uri: str) -> None:
    """The accept balance: 4 associations opened at once, 20 times (the first right after
    start-up), always land 2+2 on 2 workers. Before it, the kernel's choice (whoever waits in
    accept) split about half of such pushes 3+1, and most of the first ones 4+0 or 3+1."""
    from concurrent.futures import ThreadPoolExecutor

    contexts = [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])]
    splits: list[tuple[int, int]] = []
    with ServeProcess(_env(db_uri, tmp_path), tmp_path) as rx, ThreadPoolExecutor(4) as pool:

        def accepted() -> list[int]:
            return [
                int(line["worker"])
                for line in list(rx.lines)
                if str(line.get("msg", "")).startswith("association accepted")
            ]

        for _round in range(20):
            before = len(accepted())
            scus = list(pool.map(lambda _: RawScu(rx.port, contexts, called="OXIDICOMTEST"), range(4)))
            wait_until(lambda: len(accepted()) >= before + 4, 10, what="4 association lines")  # noqa: B023
            new = accepted()[before:]
            splits.append((new.count(0), new.count(1)))
            for scu in scus:
                scu.release()
    assert splits == [(2, 2)] * 20, splits
