"""The console's actions on a real failed job: a real receiver, a real processing worker and a
module that fails its first attempt; the token and origin checks come before anything else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from harness import load_script, query, storescu, wait_until
from peers import ConsoleProcess, ProcessWorker, ServeProcess

from oxidicom_py.console.api import make_app
from oxidicom_py.registry.schema import ensure_schema_sync

pytestmark = pytest.mark.integration

MODULE = str(Path(__file__).parents[1] / "job_module.py")
TOKEN = "s3cret-token"


def _jobs(db: str) -> list[dict[str, object]]:
    return query(db, "SELECT id, state, attempts FROM oxidicom_jobs ORDER BY id")


def test_a_failed_job_is_retried_through_the_console_only_with_the_token(tmp_path: Path, db_uri: str) -> None:
    rule = {
        "name": "flaky",
        "when": {"Modality": "MR"},
        "settle": 0.5,
        "run": {"command": [sys.executable, MODULE, "fail-until", "2"], "timeout": 60, "retries": 0},
    }
    (tmp_path / "rules.yaml").write_text(json.dumps({"rules": [rule]}))
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),
        "OXIDICOM_PROCESS_IN_SERVE": "false",
    }
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16, seed=81)
    with ServeProcess(env, tmp_path) as rx, ProcessWorker(env, tmp_path):
        storescu(rx.port, calling="PUSHER", called="OXITEST", files=files)
        wait_until(lambda: [j["state"] for j in _jobs(db_uri)] == ["failed"], 60, what="the job failed")
        (job,) = _jobs(db_uri)
        console = ConsoleProcess({**env, "OXIDICOM_CONSOLE_TOKEN": TOKEN}, tmp_path)
        with console, httpx.Client(base_url=f"http://127.0.0.1:{console.port}", timeout=30) as http:
            retry = f"/api/jobs/{job['id']}/retry"
            assert http.post(retry).status_code == 401
            assert http.post("/api/jobs/not-a-number/retry").status_code == 401  # before validation
            assert http.post(retry, headers={"Authorization": "Bearer wrong"}).status_code == 403
            good = {"Authorization": f"Bearer {TOKEN}"}
            elsewhere = http.post(retry, headers={**good, "Origin": "http://evil.example"})
            assert elsewhere.status_code == 403 and "only from" in elsewhere.json()["detail"]
            assert _jobs(db_uri)[0]["state"] == "failed"  # nothing refused changed anything
            done = http.post(retry, headers={**good, "Origin": console.url})
            assert done.status_code == 200, done.text
            assert "queued again" in done.json()["detail"]
            wait_until(lambda: _jobs(db_uri)[0]["state"] == "succeeded", 60, what="the retried job succeeded")
            assert _jobs(db_uri)[0]["attempts"] == 2
            again = http.post(retry, headers=good)
            assert again.status_code == 409 and "succeeded" in again.json()["detail"]
            assert http.post("/api/jobs/999999/cancel", headers=good).status_code == 404
            assert http.post("/api/deliveries/1/retry", headers=good).status_code == 404
            assert http.get(f"/api/jobs/{job['id']}").json()["state"] == "succeeded"
    acted = [ln for ln in console.lines if ln.get("msg") == "console action"]
    assert len(acted) == 1 and acted[0]["action"] == f"retry job {job['id']}" and acted[0]["client"] == "127.0.0.1"
    refused = [ln for ln in console.lines if ln.get("msg") == "console action refused"]
    assert len(refused) == 4


def test_without_a_token_the_console_is_read_only(db_uri: str) -> None:
    with TestClient(make_app(db_uri)) as client:
        missing = client.get("/api/jobs")
        assert missing.status_code == 503 and "oxidicom-py migrate" in missing.json()["detail"]  # no tables yet
        with psycopg.connect(db_uri) as conn:
            ensure_schema_sync(conn)
        answer = client.post("/api/jobs/1/retry")
        assert answer.status_code == 403 and "OXIDICOM_CONSOLE_TOKEN" in answer.json()["detail"]
        assert client.get("/api/jobs").status_code == 200
