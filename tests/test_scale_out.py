"""Two receiver hosts behind HAProxy on one database and one files root, simulated on this
machine: hosts ``lb``, ``r1``, ``r2``, ``pacs`` and ``ai`` in network namespaces on a bridge
(TEST-NET-1 addresses, no route out), the receivers in their own PID namespaces (their PIDs
collide, as in containers), Debian's HAProxy with the shipped ``deploy/haproxy/haproxy.cfg``.
The database is the tests' PostgreSQL, reached over its Unix socket (visible in every network
namespace). Needs root; skipped elsewhere with the reason."""

from __future__ import annotations

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
from netns import Network, can_simulate_hosts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(can_simulate_hosts() is not None, reason=str(can_simulate_hosts())),
    pytest.mark.timeout(280),
]

PROJECT = Path(__file__).resolve().parents[1]
HOSTS = {"lb": 2, "r1": 11, "r2": 12, "pacs": 20, "ai": 40}  # the shipped haproxy.cfg names .11 and .12
BALANCER = "192.0.2.2"


@pytest.fixture
def cluster(tmp_path: Path, db_uri: str) -> Iterator[dict[str, Any]]:
    network = Network(HOSTS)
    try:
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OXIDICOM_DB_CONNECTION": db_uri,
            "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
            "OXIDICOM_SCP_AET": "OXI",
            "OXIDICOM_LISTENER_ADDRESS": "0.0.0.0",
            "OXIDICOM_LISTENER_PROCESSES": "2",
            "OXIDICOM_METRICS_PORT": "9100",
            "OXIDICOM_METRICS_ADDRESS": "0.0.0.0",
            "OXIDICOM_PROXY_PROTOCOL": "true",
            "OXIDICOM_PROXY_NETWORKS": f"{BALANCER}/32",
            "OXIDICOM_SCP_ALLOWED_NETWORKS": "192.0.2.20/32",  # only the PACS host
            "OXIDICOM_INSTANCE_STALE_AFTER": "3",
            "OXIDICOM_RECONCILE_INTERVAL": "1",
            "OXIDICOM_RECONCILE_GRACE": "1",
            "OXIDICOM_SERIES_QUIESCENCE": "3",
        }
        migrate = subprocess.run(
            [sys.executable, "-m", "oxidicom_py", "migrate"], env=base, capture_output=True, text=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stderr
        receivers = {}
        for name in ("r1", "r2"):
            env = {**base, "OXIDICOM_INSTANCE_ID": name, "OXIDICOM_DB_MIGRATE": "off"}
            receivers[name] = network.start(
                name, [sys.executable, "-m", "oxidicom_py", "serve"], env, tmp_path / f"{name}.log", container=True
            )
        for name, rx in receivers.items():
            wait_until(lambda rx=rx: rx.said("ready") or rx.proc.poll() is not None, 60, what=f"{name} ready")
            assert rx.proc.poll() is None, rx.lines[-5:]
        lb = network.start(
            "lb", ["haproxy", "-db", "-f", str(PROJECT / "deploy/haproxy/haproxy.cfg")], base, tmp_path / "lb.log"
        )

        def balanced() -> bool:
            probe = network.hosts["pacs"].run("/usr/bin/echoscu", "-aec", "OXI", BALANCER, "11111", env=peer_env())
            return lb.proc.poll() is None and probe.returncode == 0

        wait_until(balanced, 30, what="an echo through the balancer")
        yield {"network": network, "receivers": receivers, "db": db_uri, "root": tmp_path / "files"}
    finally:
        network.close()


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


def test_two_receiver_hosts_behind_haproxy(cluster: dict[str, Any], tmp_path: Path) -> None:
    network: Network = cluster["network"]
    receivers = cluster["receivers"]
    db, root = cluster["db"], cluster["root"]
    synthetic = load_script("synthetic")

    # (a) 10 parallel associations through the balancer: every instance stored and registered
    # once, no failure status, both hosts used (their worker PIDs are equal: PID namespaces)
    files = synthetic.generate(tmp_path / "a", n_series=10, slices=20, rows=32, cols=32, seed=1)
    groups = [files[i::10] for i in range(10)]
    pushes = _push(network, groups, "PUSHA")
    for p in pushes:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    wait_until(lambda: len(_fnames(db, "PUSHA")) == 200, 60, what="200 rows")
    assert _fnames(db, "PUSHA") == _stored(root, "PUSHA")
    used = {name for name, rx in receivers.items() if rx.said("association accepted")}
    assert used == {"r1", "r2"}
    # (PID namespaces: both hosts' workers have small PIDs that often coincide, as in containers,
    # where the old {pid}-{n}.part staging names collided; nothing depends on them any more)

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

    # (c) r1's host is killed mid-push: its acknowledged files are registered by r2 within the
    # reconciliation interval + grace, its cut series end incomplete, its staging is reaped;
    # (d) meanwhile C-ECHOs through the balancer never fail (redispatch)
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
    slow_inserts(db, 3)  # rows lag behind acknowledged files
    files = synthetic.generate(tmp_path / "c", n_series=10, slices=40, rows=128, cols=128, seed=2)
    pushes = _push(network, [files[i * 40 : (i + 1) * 40] for i in range(10)], "PUSHC")
    r1_before = len(receivers["r1"].said("association accepted"))
    wait_until(
        lambda: len(receivers["r1"].said("association accepted")) > r1_before and len(_stored(root, "PUSHC")) >= 60,
        60,
        what="r1 receiving part of the push",
    )
    receivers["r1"].signal(signal.SIGKILL)  # the whole host: its PID namespace dies with it
    killed_at = time.monotonic()
    fast_inserts(db)
    echoes = [
        network.hosts["pacs"].run("/usr/bin/echoscu", "-aec", "OXI", BALANCER, "11111", env=peer_env(), timeout=30)
        for _ in range(20)
    ]
    assert [e.returncode for e in echoes] == [0] * 20
    codes = []
    for p in pushes:
        p.communicate(timeout=120)
        codes.append(p.returncode)
    assert any(code != 0 for code in codes)  # those on r1 were cut, as expected
    wait_until(lambda: _fnames(db, "PUSHC") == _stored(root, "PUSHC"), 60, what="every stored file registered")
    bound = time.monotonic() - killed_at
    adopted = [ln for ln in receivers["r2"].said("reconciliation done") if ln.get("missing")]
    assert adopted and sum(ln["registered"] for ln in adopted) >= 1  # r1's acknowledged files, registered by r2
    wait_until(lambda: not (root / ".oxidicom-staging" / "r1").exists(), 30, what="r1's staging reaped")

    def series() -> list[tuple[str, int]]:
        with psycopg.connect(db) as conn:
            rows = conn.execute("SELECT state, received FROM oxidicom_series_progress WHERE pacs_identifier = 'PUSHC'")
            return rows.fetchall()

    wait_until(lambda: all(state != "receiving" for state, _n in series()), 30, what="every series ended")
    ended = series()
    assert all(state == "complete" for state, n in ended if n == 40)
    assert [state for state, n in ended if n < 40] == ["incomplete"] * sum(1 for _s, n in ended if n < 40)
    assert any(n < 40 for _s, n in ended), ended  # the kill did cut a series
    with psycopg.connect(db) as conn:
        counted = conn.execute(
            "SELECT sum(received) FROM oxidicom_series_progress WHERE pacs_identifier = 'PUSHC'"
        ).fetchone()
    assert counted == (len(_fnames(db, "PUSHC")),)  # nothing counted twice
    print(
        f"scale-out: r1 killed; {sum(ln['registered'] for ln in adopted)} of its acknowledged files registered by r2, "
        f"all registered {bound:.1f} s after the kill"
    )
