"""Processing end to end: a real receiver (``serve``), real PostgreSQL, real procrastinate
workers (``oxidicom-py process``) and a command module (tests/job_module.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import load_script, query, storescu, wait_until
from peers import ProcessWorker, ServeProcess

pytestmark = pytest.mark.integration

MODULE = str(Path(__file__).parents[1] / "job_module.py")
SETTLE = 0.5


def rule(name: str, mode: str, *args: str, **more: Any) -> dict[str, Any]:
    run = {"command": [sys.executable, MODULE, mode, *args], "timeout": 60, "retries": 2, "backoff": 1}
    run.update(more.pop("run", {}))
    return {"name": name, "when": {"Modality": "MR"}, "settle": SETTLE, "run": run, **more}


@dataclass
class Node:
    tmp: Path
    db_uri: str
    env: dict[str, str]
    rx: ServeProcess

    def push(self, files: list[Path], calling: str = "PUSHER") -> None:
        storescu(self.rx.port, calling=calling, called="OXITEST", files=files)

    def jobs(self, **where: Any) -> list[dict[str, Any]]:
        rows = query(self.db_uri, "SELECT * FROM oxidicom_jobs ORDER BY id")
        return [r for r in rows if all(r[k] == v for k, v in where.items())]

    def wait_jobs(self, n: int, state: str = "succeeded", timeout: float = 60) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.jobs(state=state)) >= n, timeout, what=f"{n} {state} jobs (have {self.jobs()})")
        return self.jobs(state=state)

    def worker(self, *args: str, **env: str) -> ProcessWorker:
        return ProcessWorker({**self.env, **env}, self.tmp, *args)


@pytest.fixture
def node(tmp_path: Path, db_uri: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    rules = getattr(request, "param", None) or {"rules": [rule("copy", "copy")]}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(json.dumps(rules))  # JSON is YAML
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_RULES": str(rules_file),
        "OXIDICOM_PROCESS_IN_SERVE": "false",
        "OXIDICOM_JOBS_STALLED_AFTER": "2",
        "OXIDICOM_PROCESS_GRACE": "2",
    }
    with ServeProcess(env, tmp_path) as rx:
        yield Node(tmp_path, db_uri, env, rx)


def series(tmp: Path, n_series: int = 1, slices: int = 4, seed: int = 0) -> list[Path]:
    return load_script("synthetic").generate(
        tmp / f"src{seed}", n_series=n_series, slices=slices, rows=16, cols=16, seed=seed
    )


def test_a_pushed_series_fires_one_job_per_matching_rule_and_its_outputs_are_recorded(node: Node) -> None:
    files = series(node.tmp)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with node.worker():
        node.push(files)
        (job,) = node.wait_jobs(1)
    assert job["rule"] == "copy" and job["series_uids"] == [uid] and job["attempts"] == 1
    assert job["result"]["inputs"] == {uid: len(files)}
    assert len(job["outputs"]) == 1
    out = job["outputs"][0]
    assert out["SeriesInstanceUID"] != uid
    recorded = query(node.db_uri, "SELECT sop_instance_uid, job_id FROM oxidicom_job_outputs")
    assert recorded == [{"sop_instance_uid": out["SOPInstanceUID"], "job_id": job["id"]}]
    assert job["result"]["env"]["MERCURE_IN_DIR"].endswith(f"job-{job['id']}/input")


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.parametrize(
    "node",
    [
        {
            "rules": [
                rule("flaky", "fail-until", "3"),
                rule("never", "copy", when={"Modality": "CT"}),
                rule("small", "copy", min_instances=100),
            ]
        }
    ],
    indirect=True,
)
def test_a_module_failing_twice_then_succeeding_takes_three_attempts(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        (job,) = node.wait_jobs(1)
    assert [j["rule"] for j in node.jobs()] == ["flaky"]  # the other rules do not match
    assert job["attempts"] == 3 and job["result"]["attempt"] == 3
    states = [(e["attempt"], e["state"]) for e in job["history"]]
    assert states == [
        (0, "queued"),
        (1, "running"),
        (1, "queued"),
        (2, "running"),
        (2, "queued"),
        (3, "running"),
        (3, "succeeded"),
    ]
    failed = [e for e in job["history"] if e["state"] == "queued" and e["attempt"]]
    assert all(e["error"] == "exit code 3" for e in failed)
    # the second retry waited about twice the first (backoff 1 s, doubling)
    starts = [e["at"] for e in job["history"] if e["state"] == "running"]
    assert len(starts) == 3


@pytest.mark.parametrize(
    "node", [{"rules": [rule("stuck", "hang", run={"timeout": 1.5, "retries": 1, "backoff": 0})]}], indirect=True
)
def test_a_hanging_module_is_killed_at_its_time_limit_retried_and_finally_failed(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        (job,) = node.wait_jobs(1, state="failed")
    assert job["attempts"] == 2 and job["reason"] == "timed out"
    assert job["last_error"].startswith("timed out after 1.5 s")
    pids = [int(p) for p in (Path(job["folder"]) / "pids").read_text().split()]
    wait_until(lambda: not any(_alive(p) for p in pids), 10, what="the module and its child killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("node", [{"rules": [rule("resilient", "hang-first")]}], indirect=True)
def test_a_job_whose_worker_was_killed_is_completed_by_another_worker(node: Node) -> None:
    first = node.worker()
    with first:
        node.push(series(node.tmp))
        wait_until(lambda: node.jobs(state="running"), 30, what="the job running")
        (job,) = node.jobs()
        wait_until(lambda: (Path(job["folder"]) / "pids").exists(), 30, what="the module started")
        pids = [int(p) for p in (Path(job["folder"]) / "pids").read_text().split()]
        first.kill()  # SIGKILL: no goodbye, the heartbeat just stops
        wait_until(lambda: not _alive(pids[0]), 10, what="the module died with its worker")
    with node.worker():
        (done,) = node.wait_jobs(1, timeout=60)
    assert done["attempts"] == 2 and done["result"]["attempt"] == 2
    assert any(e.get("reason") == "worker died" for e in done["history"]), done["history"]


@pytest.mark.parametrize("node", [{"rules": [rule("split", "copy", settle=3)]}], indirect=True)
def test_a_series_split_over_two_associations_inside_the_settle_window_fires_once(node: Node) -> None:
    files = series(node.tmp, slices=6)
    with node.worker():
        node.push(files[:3])
        node.push(files[3:])
        (job,) = node.wait_jobs(1)
    assert job["result"]["inputs"] == {_uid(files): 6}
    assert len(node.jobs()) == 1
    assert any("re-armed" in (e.get("why") or "") for e in job["history"]), job["history"]


def test_our_own_outputs_pushed_back_fire_nothing(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        (job,) = node.wait_jobs(1)
        outputs = [Path(job["folder"]) / "output" / o["path"] for o in job["outputs"]]
        node.push(outputs, calling="PUSHER")
        out_series = job["outputs"][0]["SeriesInstanceUID"]
        wait_until(
            lambda: query(
                node.db_uri,
                "SELECT 1 FROM oxidicom_series_progress WHERE \"SeriesInstanceUID\" = %s AND state = 'complete'",
                out_series,
            ),
            30,
            what="the output series ended",
        )
    assert len(node.jobs()) == 1  # the end and its jobs commit together: none came
    assert any(
        line.get("msg") == "series is the output of one of our jobs: no rule fires for it" for line in node.rx.lines
    )


@pytest.mark.parametrize(
    "node",
    [
        {
            "rules": [
                {
                    "name": "pair",
                    "level": "study",
                    "settle": SETTLE,
                    "select": {
                        "first": {"when": {"SeriesDescription": "phantom 1$"}},
                        "second": {"when": {"SeriesDescription": "phantom 2$"}},
                    },
                    "run": {"command": [sys.executable, MODULE, "copy"], "timeout": 60},
                }
            ]
        }
    ],
    indirect=True,
)
def test_a_study_level_two_role_rule_fires_once_when_both_series_are_complete(node: Node) -> None:
    files = series(node.tmp, n_series=2)
    by_series: dict[str, list[Path]] = {}
    for f in files:
        by_series.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID), []).append(f)
    (a, fa), (b, fb) = sorted(by_series.items())
    with node.worker():
        node.push(fa)
        node.push(fb)
        (job,) = node.wait_jobs(1)
    assert len(node.jobs()) == 1
    assert job["level"] == "study" and sorted(job["roles"].values()) == sorted([a, b])
    assert job["result"]["inputs"] == {a: len(fa), b: len(fb)}
    assert len(job["outputs"]) == 2


@pytest.mark.parametrize("node", [{"rules": [rule("bad", "same-uids", run={"retries": 0})]}], indirect=True)
def test_outputs_reusing_an_inputs_uids_fail_the_job_with_that_reason(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        (job,) = node.wait_jobs(1, state="failed")
    assert job["reason"] == "outputs rejected" and "is an input's" in job["last_error"], job["last_error"]
    assert query(node.db_uri, "SELECT * FROM oxidicom_job_outputs") == []


def test_an_invalid_rules_file_on_hot_reload_keeps_the_old_rules(node: Node) -> None:
    rules_file = Path(node.env["OXIDICOM_RULES"])
    rules_file.write_text("rules:\n  - name: broken\n    run: {command: [x], timeout: soon}\n")
    wait_until(
        lambda: any("rules file not taken" in (line.get("msg") or "") for line in node.rx.lines),
        10,
        what="the reload error",
    )
    (error,) = [line for line in node.rx.lines if "rules file not taken" in (line.get("msg") or "")]
    assert f"{rules_file}:3: rules/0/run/timeout" in error["msg"] and error["level"] == "error"
    with node.worker():
        node.push(series(node.tmp, seed=1))
        (job,) = node.wait_jobs(1)
        assert job["rule"] == "copy"  # the old rules stayed in force
        rules_file.write_text(json.dumps({"rules": [rule("renamed", "copy")]}))
        wait_until(
            lambda: any(
                line.get("msg") == "rules in force" and line.get("rules") == ["renamed"] for line in node.rx.lines
            ),
            10,
            what="the new rules",
        )
        node.push(series(node.tmp, seed=2))
        node.wait_jobs(2)
    assert [j["rule"] for j in node.jobs()] == ["copy", "renamed"]


def _jobs_cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "jobs", *args],
        env={**os.environ, **node.env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("node", [{"rules": [rule("slow", "hang-first", run={"retries": 0})]}], indirect=True)
def test_jobs_cancel_stops_a_running_module_and_retry_runs_it_again(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        wait_until(lambda: node.jobs(state="running"), 30, what="the job running")
        (job,) = node.jobs()
        wait_until(lambda: (Path(job["folder"]) / "pids").exists(), 30, what="the module started")
        pids = [int(p) for p in (Path(job["folder"]) / "pids").read_text().split()]
        cancelled = _jobs_cli(node, "cancel", str(job["id"]))
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
        wait_until(lambda: not _alive(pids[0]), 15, what="the module stopped")
        assert node.jobs()[0]["state"] == "cancelled"
        again = _jobs_cli(node, "cancel", str(job["id"]))
        assert again.returncode == 1 and "nothing to cancel" in again.stderr
        retried = _jobs_cli(node, "retry", str(job["id"]))
        assert retried.returncode == 0, retried.stderr
        (done,) = node.wait_jobs(1)
    assert done["id"] == job["id"] and done["attempts"] == 2 and done["result"]["attempt"] == 2
    listed = _jobs_cli(node, "list", "--state", "succeeded")
    assert listed.returncode == 0 and f"{job['id']:>6}  succeeded  slow" in listed.stdout, listed.stdout
    missing = _jobs_cli(node, "show", "999999")
    assert missing.returncode == 1 and "no job 999999" in missing.stderr


@pytest.mark.parametrize("node", [{"rules": [rule("bad", "not-dicom", run={"retries": 0})]}], indirect=True)
def test_an_output_that_is_not_dicom_fails_the_job(node: Node) -> None:
    with node.worker():
        node.push(series(node.tmp))
        (job,) = node.wait_jobs(1, state="failed")
    assert job["reason"] == "outputs rejected" and job["last_error"].startswith(
        "outputs rejected: notes.txt: not a DICOM file"
    )


@pytest.mark.parametrize(
    "node", [{"rules": [rule("quiet", "copy"), rule("again", "copy", on_late="rerun")]}], indirect=True
)
def test_instances_arriving_after_the_job_ran_rerun_only_where_the_rule_says_so(node: Node) -> None:
    files = series(node.tmp, slices=6)
    with node.worker():
        node.push(files[:4])
        node.wait_jobs(2)
        node.push(files[4:])  # the series reopens and ends again, after both jobs ran
        node.wait_jobs(3)
        wait_until(
            lambda: any(
                line.get("msg", "").startswith("more instances arrived after the job ran") for line in node.rx.lines
            ),
            10,
            what="the late-arrival warning",
        )
    by_rule = [(j["rule"], j["result"]["inputs"][_uid(files)]) for j in node.jobs()]
    assert sorted(by_rule) == [("again", 4), ("again", 6), ("quiet", 4)]
    (late,) = [line for line in node.rx.lines if line.get("msg", "").startswith("more instances arrived")]
    assert late["rule"] == "quiet" and late["level"] == "warning"


@pytest.mark.parametrize(
    "node",
    [{"rules": [rule("on-a", "copy", run={"queue": "a"}), rule("on-b", "copy", run={"queue": "b"})]}],
    indirect=True,
)
def test_a_worker_takes_only_the_queues_it_is_given(node: Node) -> None:
    with node.worker("--queues", "a", "--concurrency", "2"):
        node.push(series(node.tmp))
        (done,) = node.wait_jobs(1)
        wait_until(lambda: len(node.jobs()) == 2, 10, what="both jobs created")
    assert done["rule"] == "on-a"
    assert [j["state"] for j in node.jobs(rule="on-b")] == ["queued"]
    with node.worker("--queues", "b"):
        node.wait_jobs(2)


@pytest.mark.parametrize("node", [{"rules": [rule("short", "sleep", "1.5")]}], indirect=True)
def test_sigterm_lets_a_running_job_finish_within_the_grace_period(node: Node) -> None:
    worker = node.worker(OXIDICOM_PROCESS_GRACE="20")
    with worker:
        node.push(series(node.tmp))
        wait_until(lambda: node.jobs(state="running"), 30, what="the job running")
        assert worker.stop() == 0
    (job,) = node.jobs()
    assert job["state"] == "succeeded" and job["attempts"] == 1


@pytest.mark.parametrize("node", [{"rules": [rule("long", "sleep", "600")]}], indirect=True)
def test_sigterm_returns_a_job_still_running_after_the_grace_period_to_the_queue(node: Node) -> None:
    worker = node.worker(OXIDICOM_PROCESS_GRACE="1")
    with worker:
        node.push(series(node.tmp))
        wait_until(lambda: node.jobs(state="running"), 30, what="the job running")
        (job,) = node.jobs()
        wait_until(lambda: (Path(job["folder"]) / "pids").exists(), 30, what="the module started")
        pid = int((Path(job["folder"]) / "pids").read_text())
        worker.stop()
    assert not _alive(pid)
    (job,) = node.jobs()
    assert job["state"] == "queued" and job["reason"] == "returned" and job["attempts"] == 0, job
    pj = query(node.db_uri, "SELECT status FROM procrastinate_jobs WHERE id = %s", job["procrastinate_job_id"])
    assert pj == [{"status": "todo"}]
