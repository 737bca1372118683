"""Processing with Orthanc as the PACS: jobs fire only for series its count says are complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pydicom
import pytest
from harness import LOOPBACK, load_script, query, storescu, wait_until
from peers import Orthanc, ProcessWorker, ServeProcess

pytestmark = pytest.mark.integration

MODULE = str(Path(__file__).parents[1] / "job_module.py")
AET = "OXIPACS"

_FORWARD_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'OXI')
end
"""


def _env(tmp: Path, db_uri: str, orthanc: Orthanc) -> dict[str, str]:
    rules = {
        "rules": [
            {
                "name": "count",
                "when": {"Modality": "MR", "calling_ae": AET},
                "settle": 0.5,
                "run": {"command": [sys.executable, MODULE, "copy"], "timeout": 60},
            }
        ]
    }
    (tmp / "rules.yaml").write_text(json.dumps(rules))
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_PACS_ADDRESS": f'{{{AET}="{LOOPBACK}:{orthanc.dicom_port}"}}',
        "OXIDICOM_RULES": str(tmp / "rules.yaml"),
        "OXIDICOM_PROCESS_IN_SERVE": "false",
    }


def _series_state(db_uri: str, uid: str) -> str | None:
    rows = query(db_uri, 'SELECT state FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s', uid)
    return rows[0]["state"] if rows else None


def test_an_incomplete_series_fires_nothing(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=6, rows=16, cols=16, seed=21)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with Orthanc(tmp_path / "orthanc", aet=AET) as orthanc:
        assert orthanc.upload(files) == 6  # the PACS holds 6
        env = _env(tmp_path, db_uri, orthanc)
        with ServeProcess(env, tmp_path) as rx, ProcessWorker(env, tmp_path):
            storescu(rx.port, calling=AET, called="OXITEST", files=files[:3])  # 3 of them arrive
            wait_until(lambda: _series_state(db_uri, uid) == "incomplete", 30, what="the series ended incomplete")
            assert query(db_uri, "SELECT id FROM oxidicom_jobs") == []  # its end and its jobs commit together
            assert any(
                line.get("msg") == "series ended incomplete: rule not applied (on_incomplete: skip)"
                for line in rx.lines
            )
            storescu(rx.port, calling=AET, called="OXITEST", files=files[3:])  # the rest: now complete, by count
            wait_until(
                lambda: query(db_uri, "SELECT id FROM oxidicom_jobs WHERE state = 'succeeded'"), 60, what="a job"
            )
    (job,) = query(db_uri, "SELECT * FROM oxidicom_jobs")
    assert job["result"]["inputs"] == {uid: 6}


def test_a_series_forwarded_instance_by_instance_fires_once_after_its_last_instance(
    tmp_path: Path, db_uri: str
) -> None:
    slices = 40
    files = load_script("synthetic").generate(tmp_path / "src", slices=slices, rows=16, cols=16, seed=22)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    lua = tmp_path / "route.lua"
    lua.write_text(_FORWARD_LUA)
    with Orthanc(tmp_path / "orthanc", aet=AET, LuaScripts=[str(lua)], DicomAssociationCloseDelay=2) as orthanc:
        env = _env(tmp_path, db_uri, orthanc)
        with ServeProcess(env, tmp_path) as rx, ProcessWorker(env, tmp_path):
            orthanc.add_modality("OXI", "OXITEST", rx.port)
            assert orthanc.upload(files) == slices  # each stored instance is forwarded at once
            wait_until(
                lambda: query(db_uri, "SELECT id FROM oxidicom_jobs WHERE state = 'succeeded'"), 90, what="a job"
            )
            wait_until(lambda: _series_state(db_uri, uid) == "complete", 30, what="the series complete")
    jobs = query(db_uri, "SELECT * FROM oxidicom_jobs")
    assert len(jobs) == 1, jobs
    assert jobs[0]["result"]["inputs"] == {uid: slices}  # it ran on the whole series, once
