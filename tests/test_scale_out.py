"""Two receiver hosts behind HAProxy on one database and one files root, simulated on this
machine: hosts ``lb``, ``db``, ``r1``, ``r2``, ``pacs`` and ``ai`` in network namespaces on a
bridge (TEST-NET-1 addresses, no route out); the receivers and the processing worker in their
own PID and UTS namespaces (their PIDs collide, as in containers); Debian's HAProxy with the
shipped ``deploy/haproxy/haproxy.cfg``; a PostgreSQL server of its own on ``db``, reached over
TCP by the hosts (and by this test over its Unix socket). Needs root; skipped elsewhere with
the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import fast_inserts, load_script, peer_env, slow_inserts, wait_until
from netns import LoggedProcess, Network, can_simulate_hosts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(can_simulate_hosts() is not None, reason=str(can_simulate_hosts())),
    pytest.mark.timeout(300),
]

PROJECT = Path(__file__).resolve().parents[1]
MODULE = str(PROJECT / "tests" / "job_module.py")
# the shipped haproxy.cfg names .11 and .12
HOSTS = {"lb": 2, "r1": 11, "r2": 12, "pacs": 20, "db": 30, "ai": 40}
BALANCER = "192.0.2.2"


def _start_receiver(network: Network, name: str, base: dict[str, str], log: Path) -> LoggedProcess:
    env = {**base, "OXIDICOM_INSTANCE_ID": name, "OXIDICOM_DB_MIGRATE": "off"}
    rx = network.start(name, [sys.executable, "-m", "oxidicom_py", "serve"], env, log, container=True)
    wait_until(lambda: rx.said("ready") or rx.proc.poll() is not None, 60, what=f"{name} ready")
    assert rx.proc.poll() is None, rx.lines[-5:]
    return rx


@pytest.fixture
def cluster(tmp_path: Path, pg_server_uri: str) -> Iterator[dict[str, Any]]:
    del pg_server_uri  # only for its side effect: the embedded server's system user and binaries are set up
    network = Network(HOSTS)
    try:
        db_for_hosts, db = network.start_postgres("db", tmp_path / "postgres.log")
        wait_until(lambda: _connects(db), 60, what="PostgreSQL on the db host")
        rules = {
            "rules": [
                {
                    "name": "copy",
                    "when": {"Modality": "MR"},
                    "settle": 1,
                    "run": {"command": [sys.executable, MODULE, "copy"], "timeout": 60},
                }
            ]
        }
        (tmp_path / "rules.yaml").write_text(json.dumps(rules))
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OXIDICOM_DB_CONNECTION": db_for_hosts,
            "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
            "OXIDICOM_SCP_AET": "OXI",
            "OXIDICOM_LISTENER_ADDRESS": "0.0.0.0",
            "OXIDICOM_LISTENER_PROCESSES": "2",
            "OXIDICOM_CONSOLE_PORT": "0",
            "OXIDICOM_METRICS_PORT": "9100",
            "OXIDICOM_METRICS_ADDRESS": "0.0.0.0",
            "OXIDICOM_PROXY_PROTOCOL": "true",
            "OXIDICOM_PROXY_NETWORKS": f"{BALANCER}/32",
            "OXIDICOM_SCP_ALLOWED_NETWORKS": "192.0.2.20/32",  # only the PACS host
            "OXIDICOM_DRAIN_DELAY": "5",  # as deploy/haproxy/haproxy.cfg asks
            "OXIDICOM_INSTANCE_STALE_AFTER": "3",
            "OXIDICOM_RECONCILE_INTERVAL": "1",
            "OXIDICOM_RECONCILE_GRACE": "1",
            "OXIDICOM_SERIES_QUIESCENCE": "3",
            "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),
            "OXIDICOM_PROCESS_IN_SERVE": "false",
        }
        migrate = network.hosts["r1"].run(sys.executable, "-m", "oxidicom_py", "migrate", env=base)
        assert migrate.returncode == 0, migrate.stderr
        receivers = {name: _start_receiver(network, name, base, tmp_path / f"{name}.log") for name in ("r1", "r2")}
        worker = network.start(
            "ai", [sys.executable, "-m", "oxidicom_py", "process"], base, tmp_path / "ai.log", container=True
        )
        wait_until(lambda: worker.said("processing worker ready") or worker.proc.poll() is not None, 60, what="ai")
        assert worker.proc.poll() is None, worker.lines[-5:]
        lb = network.start(
            "lb", ["haproxy", "-db", "-f", str(PROJECT / "deploy/haproxy/haproxy.cfg")], base, tmp_path / "lb.log"
        )
        wait_until(lambda: lb.proc.poll() is None and _echo(network) == 0, 30, what="an echo through the balancer")
        yield {
            "network": network,
            "receivers": receivers,
            "base": base,
            "db": db,
            "root": tmp_path / "files",
            "ai": worker,
        }
    finally:
        network.close()


def _connects(db: str) -> bool:
    try:
        with psycopg.connect(db, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _echo(network: Network) -> int:
    probe = network.hosts["pacs"].run("/usr/bin/echoscu", "-aec", "OXI", BALANCER, "11111", env=peer_env(), timeout=30)
    return probe.returncode


def _push(network: Network, groups: list[list[Path]], calling: str) -> list[subprocess.Popen[str]]:
    pacs = network.hosts["pacs"]
    return [
        subprocess.Popen(
            pacs.command("/usr/bin/storescu", "-nh", "-aet", calling, "-aec", "OXI", BALANCER, "11111", *map(str, g)),
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]


def _fnames(db: str, calling: str) -> list[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT fname FROM pacsfiles_pacsfile WHERE fname LIKE %s", (f"SERVICES/PACS/{calling}/%",))
        return sorted(r[0] for r in rows.fetchall())


def _stored(root: Path, calling: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "SERVICES" / "PACS" / calling).rglob("*.dcm"))


def _wait_pushes(pushes: list[subprocess.Popen[str]]) -> list[int]:
    codes = []
    for p in pushes:
        p.communicate(timeout=180)
        codes.append(p.returncode)
    return codes


def _accepted(rx: LoggedProcess) -> int:
    return len(rx.said("association accepted"))


def _series(db: str, calling: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            'SELECT "SeriesInstanceUID", state, received FROM oxidicom_series_progress WHERE pacs_identifier = %s',
            (calling,),
        )
        return rows.fetchall()


def _counted(db: str, calling: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(received), 0) FROM oxidicom_series_progress WHERE pacs_identifier = %s", (calling,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_receiver_hosts_behind_haproxy(cluster: dict[str, Any], tmp_path: Path) -> None:
    network: Network = cluster["network"]
    receivers: dict[str, LoggedProcess] = cluster["receivers"]
    db, root = cluster["db"], cluster["root"]
    synthetic = load_script("synthetic")

    # (a) 10 parallel associations through the balancer, a series each: every instance stored
    # and registered once, no failure status, both hosts used (their worker PIDs are small and
    # often equal: PID namespaces, where the old {pid}-{n}.part staging names collided)
    files = synthetic.generate(tmp_path / "a", n_series=10, slices=20, rows=32, cols=32, seed=1)
    assert _wait_pushes(_push(network, [files[i * 20 : (i + 1) * 20] for i in range(10)], "PUSHA")) == [0] * 10
    wait_until(lambda: len(_fnames(db, "PUSHA")) == 200, 60, what="200 rows")
    assert _fnames(db, "PUSHA") == _stored(root, "PUSHA")
    used = {name for name, rx in receivers.items() if _accepted(rx)}
    assert used == {"r1", "r2"}

    # (e) through PROXY protocol the allow-list sees the sender: the "ai" host is refused by address
    refused = network.hosts["ai"].run("/usr/bin/echoscu", "-aec", "OXI", BALANCER, "11111", env=peer_env())
    assert refused.returncode != 0
    wait_until(
        lambda: any(rx.said("connection from a network that is not allowed") for rx in receivers.values()),
        10,
        what="the refusal logged",
    )
    (line,) = [ln for rx in receivers.values() for ln in rx.said("connection from a network that is not allowed")]
    assert line["peer"].startswith("192.0.2.40:")
    accepted = [ln for rx in receivers.values() for ln in rx.said("association accepted")]
    assert accepted and all(ln["peer"].startswith("192.0.2.20:") for ln in accepted)

    # from here the PACS sends at 20 Mbit/s, so pushes last long enough to be interrupted
    shaping = (
        "tc",
        "qdisc",
        "add",
        "dev",
        "eth0",
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "64kb",
        "latency",
        "400ms",
    )
    subprocess.run(network.hosts["pacs"].command(*shaping), check=True, timeout=30)

    # (b) r2 is restarted during a push: told to stop, it fails /readyz at once, goes on
    # accepting for the drain delay (HAProxy needs up to ~3 s to notice), then closes its
    # port, finishes its associations and exits 0; pushes started meanwhile go to r1; the new
    # r2 takes associations again. Not one push fails; nothing is lost or counted twice.
    files = synthetic.generate(tmp_path / "b", n_series=14, slices=40, rows=128, cols=128, seed=3)
    waves = [files[: 6 * 40], files[6 * 40 : 10 * 40], files[10 * 40 :]]
    pushes = _push(network, [waves[0][i * 40 : (i + 1) * 40] for i in range(6)], "PUSHB")
    old_r2 = receivers["r2"]
    r2_before = _accepted(old_r2)
    wait_until(lambda: _accepted(old_r2) > r2_before and len(_stored(root, "PUSHB")) >= 40, 60, what="r2 receiving")
    old_r2.signal(signal.SIGTERM)
    pushes += _push(network, [waves[1][i * 40 : (i + 1) * 40] for i in range(2)], "PUSHB")  # during the delay
    wait_until(lambda: [ln for ln in old_r2.lines if ln.get("msg") == "draining"], 30, what="r2's workers draining")
    pushes += _push(network, [waves[1][i * 40 : (i + 1) * 40] for i in range(2, 4)], "PUSHB")  # port closed
    assert old_r2.proc.wait(120) == 0
    assert old_r2.said("stopped") and old_r2.said("stopped")[-1]["clean"] is True
    new_r2 = _start_receiver(network, "r2", cluster["base"], tmp_path / "r2-restarted.log")
    receivers["r2"] = new_r2
    wait_until(lambda: _echo(network) == 0 and _accepted(new_r2) > 0, 60, what="the balancer using the new r2")
    pushes += _push(network, [waves[2][i * 40 : (i + 1) * 40] for i in range(4)], "PUSHB")
    assert _wait_pushes(pushes) == [0] * 14
    wait_until(lambda: len(_fnames(db, "PUSHB")) == 560, 60, what="560 rows")
    assert _fnames(db, "PUSHB") == _stored(root, "PUSHB")
    wait_until(lambda: _counted(db, "PUSHB") == 560, 30, what="560 counted")
    assert len([a for a in new_r2.said("association accepted") if a.get("calling_ae") == "PUSHB"]) >= 1

    # (c) r1's host is killed mid-push: its acknowledged files are registered by r2 within the
    # reconciliation interval + grace, its cut series end incomplete, its staging is reaped;
    # (d) meanwhile C-ECHOs through the balancer never fail (redispatch)
    slow_inserts(db, 3)  # rows lag behind acknowledged files
    files = synthetic.generate(tmp_path / "c", n_series=10, slices=40, rows=128, cols=128, seed=2)
    pushes = _push(network, [files[i * 40 : (i + 1) * 40] for i in range(10)], "PUSHC")
    r1_before = _accepted(receivers["r1"])
    wait_until(
        lambda: _accepted(receivers["r1"]) > r1_before and len(_stored(root, "PUSHC")) >= 60,
        60,
        what="r1 receiving part of the push",
    )
    receivers["r1"].signal(signal.SIGKILL)  # the whole host: its PID namespace dies with it
    killed_at = time.monotonic()
    fast_inserts(db)
    assert [_echo(network) for _ in range(20)] == [0] * 20
    codes = _wait_pushes(pushes)
    assert any(code != 0 for code in codes)  # those on r1 were cut, as expected
    wait_until(lambda: _fnames(db, "PUSHC") == _stored(root, "PUSHC"), 60, what="every stored file registered")
    bound = time.monotonic() - killed_at
    adopted = [ln for ln in receivers["r2"].said("reconciliation done") if ln.get("missing")]
    assert adopted and sum(ln["registered"] for ln in adopted) >= 1  # r1's acknowledged files, registered by r2
    wait_until(lambda: not (root / ".oxidicom-staging" / "r1").exists(), 30, what="r1's staging reaped")
    wait_until(lambda: all(state != "receiving" for _u, state, _n in _series(db, "PUSHC")), 30, what="all ended")
    ended = _series(db, "PUSHC")
    assert all(state == "complete" for _u, state, n in ended if n == 40)
    cut = [uid for uid, _s, n in ended if n < 40]
    assert cut, ended  # the kill did cut a series
    assert all(state == "incomplete" for uid, state, _n in ended if uid in cut)
    assert _counted(db, "PUSHC") == len(_fnames(db, "PUSHC"))  # nothing counted twice

    # (f) each complete series has exactly one processing job, run on the "ai" host; the cut
    # series have none
    complete = sorted(
        uid for calling in ("PUSHA", "PUSHB", "PUSHC") for uid, st, _n in _series(db, calling) if st == "complete"
    )
    # a push r1 took but had stored nothing of when it died has no series at all: neither complete nor cut
    whole_c = [uid for uid, _st, n in ended if n == 40]
    assert len(complete) == 10 + 14 + len(whole_c) and len(whole_c) + len(cut) <= 10

    def jobs() -> list[tuple[list[str], str, str | None]]:
        with psycopg.connect(db) as conn:
            return conn.execute("SELECT series_uids, state, worker FROM oxidicom_jobs").fetchall()

    wait_until(lambda: len(jobs()) >= len(complete) and all(j[1] == "succeeded" for j in jobs()), 120, what="jobs")
    done = jobs()
    assert sorted(uid for uids, _s, _w in done for uid in uids) == complete  # one each, none for the cut ones
    assert all(str(w).startswith("ai:") for _u, _s, w in done)
    print(
        f"scale-out: r2 restarted mid-push with no failed push; r1 killed: "
        f"{sum(ln['registered'] for ln in adopted)} of its acknowledged files registered by r2, all registered "
        f"{bound:.1f} s after the kill; {len(done)} jobs on ai for {len(complete)} complete series"
    )
