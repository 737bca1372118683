"""Load: 16 concurrent associations; no errors, memory bounded, every instance registered once.

The default run pushes 16 x 100 instances; ``OXIDICOM_SOAK=1`` runs the full 16 x 500.
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from pathlib import Path

import psutil
import psycopg
import pytest
from harness import LOOPBACK, load_script, peer_env, wait_until
from peers import ServeProcess

pytestmark = pytest.mark.integration

ASSOCIATIONS = 16
PER_ASSOCIATION = 500 if os.environ.get("OXIDICOM_SOAK") else 100


def _tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 1e6


def test_sixteen_concurrent_associations(tmp_path: Path, db_uri: str) -> None:
    synthetic = load_script("synthetic")
    groups = [
        synthetic.generate(tmp_path / f"src{i}", n_series=1, slices=PER_ASSOCIATION, rows=32, cols=32, seed=500 + i)
        for i in range(ASSOCIATIONS)
    ]
    total = ASSOCIATIONS * PER_ASSOCIATION
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
    }
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        idle_rss = _tree_rss_mb(rx.proc.pid)
        peak_rss = idle_rss
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                ["storescu", "-aet", f"LOAD{i:02d}", "-aec", "OXIDICOMTEST", LOOPBACK, str(rx.port), *map(str, files)],
                env=peer_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, files in enumerate(groups)
        ]
        deadline = time.monotonic() + 600
        while any(s.poll() is None for s in senders):
            assert time.monotonic() < deadline, "senders did not finish in 10 minutes"
            peak_rss = max(peak_rss, _tree_rss_mb(rx.proc.pid))
            time.sleep(0.05)  # the RSS sampling interval
        elapsed = time.monotonic() - started
        assert [s.returncode for s in senders] == [0] * ASSOCIATIONS, [s.stderr.read() for s in senders if s.stderr]

        def registered() -> int:
            with psycopg.connect(db_uri) as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT fname) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p "
                    "ON p.id = f.pacs_id WHERE p.identifier LIKE 'LOAD%%'"
                ).fetchone()
            assert row is not None and row[0] == row[1]  # never twice
            return int(row[0])

        wait_until(lambda: registered() == total, 60, what="every instance registered")
        assert len(list((tmp_path / "files" / "SERVICES").rglob("*.dcm"))) == total
        assert rx.messages("error") == []
        assert peak_rss - idle_rss < 200, f"memory grew by {peak_rss - idle_rss:.0f} MB"
        warnings.warn(
            f"load: {ASSOCIATIONS} associations x {PER_ASSOCIATION} instances in {elapsed:.1f} s "
            f"({total / elapsed:.0f} inst/s); receiver RSS {idle_rss:.0f} -> peak {peak_rss:.0f} MB",
            stacklevel=1,
        )
    assert rx.proc.returncode == 0
