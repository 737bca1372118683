"""Results back to the PACS with a real Orthanc: the HippoVolume workflow with auto-routing both
ways (no loop), a destination that is down for a while, and one that refuses every instance."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import LOOPBACK, load_script, query, storescu, wait_until
from peers import Orthanc, ServeProcess, free_port

pytestmark = pytest.mark.integration

AET = "OXIPACS"

_ROUTE_ALL = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'OXI')
end
"""


def _env(tmp: Path, db_uri: str, rules: dict[str, Any], pacs: Orthanc | None = None) -> dict[str, str]:
    (tmp / "rules.yaml").write_text(json.dumps(rules))
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_RULES": str(tmp / "rules.yaml"),
    }
    if pacs is not None:
        env["OXIDICOM_PACS_ADDRESS"] = f'{{{pacs.aet}="{LOOPBACK}:{pacs.dicom_port}"}}'
    return env


def _cli(rx: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxidicom_py", *args], env=rx.env, capture_output=True, text=True, timeout=60
    )


def _deliveries(db_uri: str) -> list[dict[str, Any]]:
    return query(db_uri, "SELECT * FROM oxidicom_deliveries ORDER BY id")


def _study_series(orthanc: Orthanc) -> dict[str, int]:
    """SeriesDescription -> instances, over every series Orthanc holds."""
    out = {}
    for sid in orthanc.get("/series"):
        series = orthanc.get(f"/series/{sid}")
        out[series["MainDicomTags"].get("SeriesDescription", "")] = len(series["Instances"])
    return out


def test_hippovolume_results_reach_the_pacs_once_and_come_back_without_a_loop(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=16, rows=32, cols=32, seed=41)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    lua = tmp_path / "route.lua"
    lua.write_text(_ROUTE_ALL)
    with Orthanc(tmp_path / "orthanc", aet=AET, LuaScripts=[str(lua)], DicomAssociationCloseDelay=1) as pacs:
        rules = {
            "destinations": {"pacs": {"ae_title": AET, "host": LOOPBACK, "port": pacs.dicom_port}},
            "rules": [
                {
                    "name": "hippo",
                    "when": {"Modality": "MR", "calling_ae": f"^{AET}$"},
                    "run": {"command": ["oxidicom-py", "module", "volume-report"], "timeout": 120},
                    "send_to": ["pacs"],
                }
            ],
        }
        with ServeProcess(_env(tmp_path, db_uri, rules, pacs), tmp_path) as rx:
            pacs.add_modality("OXI", "OXITEST", rx.port)
            assert pacs.upload(files) == 16  # each stored instance is routed to us at once
            wait_until(
                lambda: query(db_uri, "SELECT 1 FROM oxidicom_series_progress WHERE state = 'complete'"),
                60,
                what="the series complete",
            )
            ended = time.monotonic()
            wait_until(lambda: len(_study_series(pacs)) == 3, 120, what="the two result series in Orthanc")
            visible = time.monotonic() - ended
            # Orthanc routes the results back to us: stored, registered, and no rule fires for them
            wait_until(
                lambda: len(query(db_uri, "SELECT 1 FROM oxidicom_series_progress WHERE state = 'complete'")) == 3,
                60,
                what="our own results received back",
            )
        series = _study_series(pacs)
    (job,) = query(db_uri, "SELECT * FROM oxidicom_jobs")
    assert job["state"] == "succeeded" and job["series_uids"] == [uid]
    assert [d["state"] for d in _deliveries(db_uri)] == ["sent", "sent"]
    assert sorted(series.values()) == [1, 1, 16], series  # the original plus two result series, each once
    print(f"\nHippoVolume: series end -> results visible in Orthanc: {visible:.1f} s")


def test_a_destination_down_for_a_while_gets_every_result_exactly_once(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16, seed=42)
    tps = Orthanc(tmp_path / "tps", aet="TPS")
    rules = {
        "destinations": {
            "tps": {
                "ae_title": "TPS",
                "host": LOOPBACK,
                "port": tps.dicom_port,
                "delivery_backoff": 1,
                "delivery_retries": 20,
            }
        },
        "rules": [
            {
                "name": "burn",
                "when": {"Modality": "MR"},
                "settle": 0.5,
                "run": {"command": ["oxidicom-py", "module", "burn-in"], "timeout": 60},
                "send_to": ["tps"],
            }
        ],
    }
    with ServeProcess(_env(tmp_path, db_uri, rules), tmp_path) as rx:
        storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)  # the destination is down
        pushed = time.monotonic()
        wait_until(
            lambda: (d := _deliveries(db_uri)) and len(d) == 4 and min(x["attempts"] for x in d) >= 3,
            90,
            what="three delivery attempts while the destination is down",
        )
        down = _deliveries(db_uri)
        assert {d["state"] for d in down} == {"pending"} and "no association" in down[0]["last_error"]
        # the outage lasts 20 s at least (the scenario's length, measured from the push)
        wait_until(lambda: time.monotonic() - pushed >= 20, 30, interval=0.5, what="a 20 s outage")
        with tps:
            wait_until(lambda: {d["state"] for d in _deliveries(db_uri)} == {"sent"}, 90, what="all delivered")
            held = _study_series(tps)
    assert list(held.values()) == [4], held  # every result once
    assert all(d["last_status"] == 0 for d in _deliveries(db_uri))


@contextlib.contextmanager
def _scp(status: int, delay: float = 0.0) -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom Storage SCP (MR) answering every C-STORE with ``status`` after ``delay``
    seconds (a slow destination: the scenario, not a wait); it records the SOP Instance UIDs."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    seen: list[str] = []

    def handle(event: Any) -> int:
        if delay:
            time.sleep(delay)
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return status

    ae = AE(ae_title="DEST")
    ae.add_supported_context(MRImageStorage)
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield port, seen
    finally:
        server.shutdown()


def test_a_destination_answering_failure_statuses_ends_failed_with_the_status(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=2, rows=16, cols=16, seed=43)
    with _scp(0xA700) as (port, seen):
        rules = {
            "destinations": {
                "dest": {
                    "ae_title": "REFUSER",
                    "host": LOOPBACK,
                    "port": port,
                    "delivery_backoff": 0.5,
                    "delivery_retries": 2,
                }
            },
            "rules": [{"name": "fwd", "when": {"Modality": "MR"}, "settle": 0.5, "send_to": ["dest"]}],
        }
        with ServeProcess(_env(tmp_path, db_uri, rules), tmp_path) as rx:
            storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)
            wait_until(
                lambda: (d := _deliveries(db_uri)) and {x["state"] for x in d} == {"failed"},
                60,
                what="failed deliveries",
            )
            assert any(line.get("msg") == "delivery failed: no attempt left" for line in rx.lines)
            rows = _deliveries(db_uri)
            assert len(rows) == 2 and all(r["attempts"] == 3 and r["last_status"] == 0xA700 for r in rows), rows
            assert all(r["last_error"].startswith("status 0xA700") for r in rows)
            assert len(seen) == 6  # 2 instances x 3 attempts, then no more
            listed = _cli(rx, "deliveries", "list", "--state", "failed")
            assert listed.returncode == 0 and listed.stdout.count(" failed ") == 2 and "0xA700" in listed.stdout
            retried = _cli(rx, "deliveries", "retry", str(rows[0]["job_id"]))
            assert retried.returncode == 0, retried.stderr
            wait_until(lambda: len(seen) == 12, 60, what="a fresh set of attempts")
            wait_until(lambda: {x["state"] for x in _deliveries(db_uri)} == {"failed"}, 30, what="failed again")
            assert _cli(rx, "deliveries", "retry", "999").returncode == 1
            shown = _cli(rx, "jobs", "show", str(rows[0]["job_id"]))
            assert shown.returncode == 0 and "deliveries (2):" in shown.stdout and "failed" in shown.stdout
    assert query(db_uri, "SELECT state FROM oxidicom_jobs") == [{"state": "succeeded"}]  # the forward itself ran


def test_a_rule_on_the_called_ae_title_sends_its_report_back_to_the_sender(tmp_path: Path, db_uri: str) -> None:
    """data-transfer-station's workflow: the PACS sends to AICORE1; the report bounces back to it."""
    files = load_script("synthetic").generate(tmp_path / "src", slices=3, rows=16, cols=16, seed=44)
    module = str(Path(__file__).parents[1] / "job_module.py")
    with Orthanc(tmp_path / "orthanc", aet=AET) as pacs:
        rules = {
            "rules": [
                {
                    "name": "aicore",
                    "when": {"called_ae": "^AICORE1$"},
                    "run": {"command": [sys.executable, module, "copy"], "timeout": 60},
                    "send_to": ["sender"],
                },
                {"name": "elsewhere", "when": {"called_ae": "^OTHER$"}, "run": {"command": ["false"]}},
            ]
        }
        with ServeProcess(_env(tmp_path, db_uri, rules, pacs), tmp_path) as rx:
            assert pacs.upload(files) == 3
            pacs.add_modality("AI", "AICORE1", rx.port)
            pacs.store("AI", list(pacs.series_ids().values()))  # synchronous: returns after the last instance
            sent = time.monotonic()
            wait_until(lambda: len(_study_series(pacs)) == 2, 60, what="the report back in the PACS")
            print(f"\ndata-transfer-station: last instance sent -> report visible: {time.monotonic() - sent:.1f} s")
            series = _study_series(pacs)
    jobs = query(db_uri, "SELECT rule, state FROM oxidicom_jobs")
    assert jobs == [{"rule": "aicore", "state": "succeeded"}]
    assert sorted(series.values()) == [1, 3] and "processed aicore" in series, series
    (delivery,) = _deliveries(db_uri)
    assert delivery["destination"] == "sender" and delivery["ae_title"] == AET and delivery["state"] == "sent"


def test_a_forward_never_sends_a_series_back_to_the_ae_it_came_from(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=2, rows=16, cols=16, seed=45)
    with Orthanc(tmp_path / "orthanc", aet=AET) as pacs:
        rules = {
            "destinations": {"pacs": {"ae_title": AET, "host": LOOPBACK, "port": pacs.dicom_port}},
            "rules": [{"name": "mirror", "when": {"Modality": "MR"}, "settle": 0.5, "send_to": ["sender", "pacs"]}],
        }
        with ServeProcess(_env(tmp_path, db_uri, rules, pacs), tmp_path) as rx:
            storescu(rx.port, calling=AET, called="OXITEST", files=files)  # as if the PACS had sent it
            wait_until(
                lambda: query(db_uri, "SELECT 1 FROM oxidicom_jobs WHERE state = 'succeeded'"), 60, what="the forward"
            )
            assert _deliveries(db_uri) == []
            skipped = [line for line in rx.lines if line.get("msg", "").startswith("not sent back to the AE title")]
            assert [line["destination"] for line in skipped] == ["sender", "pacs"] and skipped[0]["instances"] == 2
            assert pacs.get("/series") == []


def _kill_all(rx: ServeProcess) -> None:
    """SIGKILL the receiver and every process under it (its processing worker): a crash."""
    import psutil

    assert rx.proc is not None
    tree = psutil.Process(rx.proc.pid)
    for p in [*tree.children(recursive=True), tree]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    rx.proc.wait(10)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_receiver_restarted_mid_delivery_never_sends_an_acknowledged_instance_again(
    tmp_path: Path, db_uri: str, how: str
) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=12, rows=16, cols=16, seed=46)
    with _scp(0x0000, delay=0.25) as (port, seen):
        rules = {
            "destinations": {"slow": {"ae_title": "SLOW", "host": LOOPBACK, "port": port, "delivery_backoff": 1}},
            "rules": [{"name": "fwd", "when": {"Modality": "MR"}, "settle": 0.5, "send_to": ["slow"]}],
        }
        env = {**_env(tmp_path, db_uri, rules), "OXIDICOM_PROCESS_GRACE": "0.5", "OXIDICOM_JOBS_STALLED_AFTER": "3"}
        with ServeProcess(env, tmp_path) as rx:
            storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)
            wait_until(lambda: len(seen) >= 3, 60, what="the delivery under way")
            if how == "sigkill":
                _kill_all(rx)  # the delivery job stays 'doing' until the stalled-job recovery (3 s)
        # stopped mid-delivery (SIGTERM: drain, the worker's grace is over in 0.5 s; or killed)
        acknowledged = {d["sop_instance_uid"] for d in _deliveries(db_uri) if d["state"] == "sent"}
        assert 0 < len(acknowledged) < 12, acknowledged
        with ServeProcess(env, tmp_path):
            wait_until(lambda: {d["state"] for d in _deliveries(db_uri)} == {"sent"}, 90, what="the rest delivered")
    assert len(set(seen)) == 12  # every instance arrived
    assert all(seen.count(sop) == 1 for sop in acknowledged), seen  # none acknowledged was sent again


def test_creni_burned_in_copies_reach_the_configured_pacs_exactly_once(tmp_path: Path, db_uri: str) -> None:
    """creni.org's workflow done right: every instance burned in, delivered to the PACS once."""
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=32, cols=32, seed=47)
    with Orthanc(tmp_path / "pacs", aet="CRENIPACS") as pacs:
        rules = {
            "destinations": {"pacs": {"ae_title": "CRENIPACS", "host": LOOPBACK, "port": pacs.dicom_port}},
            "rules": [
                {
                    "name": "creni",
                    "when": {"Modality": "MR"},
                    "settle": 0.5,
                    "settings": {"text": "RESEARCH ONLY"},
                    "run": {"command": ["oxidicom-py", "module", "burn-in"], "timeout": 60},
                    "send_to": ["pacs"],
                }
            ],
        }
        with ServeProcess(_env(tmp_path, db_uri, rules), tmp_path) as rx:
            storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)
            sent = time.monotonic()
            wait_until(lambda: len(pacs.get("/instances")) == 4, 60, what="the burned-in copies in the PACS")
            print(f"\ncreni.org: last instance sent -> burned-in copies visible: {time.monotonic() - sent:.1f} s")
            held = _study_series(pacs)
            tags = pacs.get(f"/instances/{pacs.get('/instances')[0]}/simplified-tags")
    assert list(held.values()) == [4] and tags["BurnedInAnnotation"] == "YES", (held, tags)
    assert {d["state"] for d in _deliveries(db_uri)} == {"sent"} and len(_deliveries(db_uri)) == 4
