"""``./start.sh`` with the repository's example rules (examples/rules.yaml): a pushed series is
processed by the worker ``serve`` starts itself, with no other command; ``oxidicom-py jobs``
shows what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from harness import PROJECT, load_script, query, storescu, wait_until
from peers import ServeProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("processes", ["1", "2"])  # one process, and a supervisor with its workers
def test_the_example_rules_process_a_pushed_series_with_no_other_command(
    tmp_path: Path, db_uri: str, processes: str
) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=12, rows=32, cols=32, seed=31)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": processes,
        "OXIDICOM_RULES": str(PROJECT / "examples" / "rules.yaml"),
        "PATH": "/usr/bin:/bin",  # the module command is found beside the worker's Python, not on PATH
    }
    with ServeProcess(env, tmp_path) as rx:
        storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)
        storescu(rx.port, calling="BURNIN", called="OXITEST", files=files[:3])  # a second sender, the other rule
        wait_until(
            lambda: len(query(db_uri, "SELECT id FROM oxidicom_jobs WHERE state IN ('succeeded', 'failed')")) == 2,
            90,
            what="both jobs done (settle 10 s)",
        )
        listed = subprocess.run(
            [sys.executable, "-m", "oxidicom_py", "jobs", "list", "--json"],
            env=rx.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        volume_id = next(j["id"] for j in json.loads(listed.stdout) if j["rule"] == "volume")
        shown = subprocess.run(
            [sys.executable, "-m", "oxidicom_py", "jobs", "show", str(volume_id)],
            env=rx.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert listed.returncode == 0, listed.stderr
    jobs = {j["rule"]: j for j in json.loads(listed.stdout)}
    assert {r: j["state"] for r, j in jobs.items()} == {"volume": "succeeded", "burn-in": "succeeded"}, jobs
    volume = jobs["volume"]
    assert volume["series_uids"] == [uid] and volume["result"]["volume_ml"] > 0
    classes = sorted(o["SOPClassUID"] for o in volume["outputs"])
    assert classes == ["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.34"]  # SC figure, Comprehensive 3D SR
    assert len(jobs["burn-in"]["outputs"]) == 3  # a series job takes its sender's instances
    assert shown.returncode == 0 and f"job {volume_id}: succeeded" in shown.stdout, shown.stdout
    assert "history:" in shown.stdout and "outputs (2):" in shown.stdout
