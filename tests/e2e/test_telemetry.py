"""What operators see: Prometheus metrics summed over the worker processes, OpenTelemetry spans
sent to a real OTLP receiver, health endpoints, and logs that carry no patient data.

One receiver run (two workers) takes a known push and every figure is checked against it.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pydicom
import pytest
from harness import PROJECT, RawClient, RawScu, associate_rq, encode_dataset, load_script, wait_until
from otlp_receiver import OtlpReceiver
from peers import ServeProcess, free_port
from prometheus_client.parser import text_string_to_metric_families

from oxidicom_py.dicom import pdu

pytestmark = pytest.mark.integration

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
CONTEXTS = [(1, MR, [EXPLICIT])]
SECRET_NAME = "Secretname^Patient"
SECRET_ID = "SECRET-PID-4711"


@dataclass
class Instance:
    sop: str
    data: bytes


def _instances(folder: Path, n: int, series_seed: int) -> list[Instance]:
    synthetic = load_script("synthetic")
    files = synthetic.generate(folder, n_series=1, slices=n, rows=32, cols=32, seed=series_seed)
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = SECRET_NAME
        ds.PatientID = SECRET_ID
        ds.PatientBirthDate = "19700101"
        out.append(Instance(str(ds.SOPInstanceUID), encode_dataset(ds)))
    return out


def _without_patient_id(folder: Path) -> Instance:
    synthetic = load_script("synthetic")
    ds = pydicom.dcmread(synthetic.generate(folder, n_series=1, slices=1, rows=8, cols=8, seed=99)[0])
    del ds.PatientID
    return Instance(str(ds.SOPInstanceUID), encode_dataset(ds))


def _push(port: int, calling: str, instances: list[Instance]) -> list[int]:
    scu = RawScu(port, CONTEXTS, calling=calling, called="OXIDICOMTEST")
    statuses = [scu.store(1, MR, i.sop, i.data)[0] for i in instances]
    scu.release()
    return statuses


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _said(rx: ServeProcess, message: str) -> bool:
    return any(line.get("msg") == message for line in rx.lines)


def _metric_names_file() -> set[str]:
    names = set()
    for line in (PROJECT / "deploy" / "metric_names.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.add(line.split()[0])
    return names


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def test_metrics_and_traces_match_a_known_push(tmp_path: Path, db_uri: str, otlp: OtlpReceiver) -> None:
    series_a = _instances(tmp_path / "a", 10, series_seed=1)
    series_b = _instances(tmp_path / "b", 5, series_seed=2)
    bad = _without_patient_id(tmp_path / "bad")
    closed_port = free_port()  # nothing listens: every C-FIND ends "unknown" at once
    metrics_port = free_port()
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_SCP_CHECK_CALLED_AET": "true",
        "OXIDICOM_LISTENER_PROCESSES": "2",
        "OXIDICOM_METRICS_PORT": str(metrics_port),
        "OXIDICOM_METRICS_ADDRESS": "127.0.0.1",
        "OXIDICOM_PACS_ADDRESS": f"PACSA=127.0.0.1:{closed_port},PACSB=127.0.0.1:{closed_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "oxidicom-under-test",
        "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),  # a rule that matches nothing: its job series at zero
        "OXIDICOM_PROCESS_IN_SERVE": "false",
    }
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: none\n    when: {Modality: XX}\n    run: {command: ['true']}\n    send_to: [sender]\n"
    )
    with ServeProcess(env, tmp_path) as rx:
        assert _push(rx.port, "PACSA", series_a) == [0] * 10
        # let that association end its series before the re-send opens it again
        wait_until(lambda: _said(rx, "OxidicomAttemptedPushCount=10 registered"), 30, what="first push counted")
        # the second association re-sends 3 instances (duplicates) and one without PatientID
        statuses = _push(rx.port, "PACSA", [*series_a[:3], bad])
        assert statuses[:3] == [0] * 3 and statuses[3] != 0
        assert _push(rx.port, "PACSB", series_b) == [0] * 5
        refused = RawClient(rx.port)
        refused.send(associate_rq(CONTEXTS, calling="PACSA", called="NOTUS"))
        assert refused.recv_pdu()[0] == pdu.A_ASSOCIATE_RJ
        refused.close()

        wire_bytes_a = sum(len(i.data) for i in series_a) + sum(len(i.data) for i in [*series_a[:3], bad])
        expected = {
            ("oxidicom_instances_received_total", (("calling_ae", "PACSA"),)): 14,
            ("oxidicom_instances_stored_total", (("calling_ae", "PACSA"),)): 13,
            ("oxidicom_instances_rejected_total", (("calling_ae", "PACSA"),)): 1,
            ("oxidicom_instances_duplicate_total", (("calling_ae", "PACSA"),)): 3,
            ("oxidicom_received_bytes_total", (("calling_ae", "PACSA"),)): wire_bytes_a,
            ("oxidicom_instances_received_total", (("calling_ae", "PACSB"),)): 5,
            ("oxidicom_instances_stored_total", (("calling_ae", "PACSB"),)): 5,
            ("oxidicom_received_bytes_total", (("calling_ae", "PACSB"),)): sum(len(i.data) for i in series_b),
            ("oxidicom_associations_total", (("calling_ae", "PACSA"),)): 2,
            ("oxidicom_associations_total", (("calling_ae", "PACSB"),)): 1,
            ("oxidicom_associations_active", ()): 0,
            ("oxidicom_association_duration_seconds_count", ()): 3,
            ("oxidicom_associations_rejected_total", (("reason", "called_ae_not_recognized"),)): 1,
            # 15 new instance rows + 2 markers per series per association (3 of them)
            ("oxidicom_registration_rows_total", (("result", "inserted"),)): 21,
            ("oxidicom_registration_rows_total", (("result", "already_registered"),)): 3,
            ("oxidicom_cfind_total", (("result", "unknown"),)): 3,
            ("oxidicom_cfind_seconds_count", ()): 3,
            # no count from the PACS, every association released: each end closes its series complete
            ("oxidicom_series_ended_total", (("state", "complete"),)): 3,
            ("oxidicom_workers_alive", ()): 2,
            ("oxidicom_worker_restarts_total", ()): 0,
            ("oxidicom_registration_queue_depth", ()): 0,
            ("oxidicom_jobs_total", (("rule", "none"), ("state", "queued"))): 0,
            ("oxidicom_jobs_late_total", (("rule", "none"),)): 0,
            ("oxidicom_job_seconds_count", (("rule", "none"),)): 0,
            ("oxidicom_jobs_trigger_errors_total", ()): 0,
            ("oxidicom_delivered_total", (("destination", "sender"), ("result", "sent"))): 0,
        }

        def observed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float | None]:
            scraped = _scrape(metrics_port)
            return {key: scraped.get((key[0], frozenset(key[1]))) for key in expected}

        def matches() -> bool:
            return observed() == expected

        try:
            wait_until(matches, 30, interval=0.2, what="metrics equal to what was sent")
        except AssertionError:
            got = observed()
            raise AssertionError({k: (got[k], v) for k, v in expected.items() if got[k] != v}) from None

        scraped = _scrape(metrics_port)
        families = {name for name, _labels in scraped}
        exported = {n.removesuffix(s) for n in families for s in ("_total", "_bucket", "_sum", "_count", "_created")}
        declared = _metric_names_file()
        assert declared <= exported, declared - exported
        assert {n for n in families if n.startswith("oxidicom_")} <= {
            n + s for n in declared for s in ("", "_total", "_bucket", "_sum", "_count", "_created")
        }
        assert scraped[("oxidicom_registration_batch_seconds_count", frozenset())] >= 1

        accepted = [
            line for line in rx.lines if str(line.get("msg", "")).startswith("association accepted")
        ]  # one per association, with its ULID
        wait_until(lambda: len(otlp.named("dicom.association")) == 3, 30, what="3 association spans")
        wait_until(lambda: len(otlp.named("dicom.c-find series count")) == 3, 30, what="3 C-FIND spans")

        assert rx.stop() == 0
        logs = list(rx.lines)

    by_ulid = {s.attributes["oxidicom.association.ulid"]: s for s in otlp.named("dicom.association")}
    assert set(by_ulid) == {line["association"] for line in accepted}
    for span in by_ulid.values():
        assert span.attributes["dicom.called_ae_title"] == "OXIDICOMTEST"
        assert span.attributes["client.address"] == "127.0.0.1" and span.attributes["client.port"] > 0
        assert span.attributes["oxidicom.association.outcome"] == "released"
        assert span.kind == 2  # SERVER
        assert span.resource["service.name"] == "oxidicom-under-test"
    counts = sorted(
        (
            s.attributes["dicom.calling_ae_title"],
            s.attributes["oxidicom.instances.received"],
            s.attributes["oxidicom.instances.stored"],
            s.attributes["oxidicom.instances.rejected"],
            s.attributes["oxidicom.instances.duplicate"],
        )
        for s in by_ulid.values()
    )
    assert counts == [("PACSA", 4, 3, 1, 3), ("PACSA", 10, 10, 0, 0), ("PACSB", 5, 5, 0, 0)]

    spans_by_id = {s.span_id: s for s in by_ulid.values()}
    for cfind in otlp.named("dicom.c-find series count"):
        parent = spans_by_id[cfind.parent_span_id]  # a child of its association's span
        assert cfind.trace_id == parent.trace_id
        assert cfind.attributes["oxidicom.pacs.address"] == f"127.0.0.1:{closed_port}"
        assert cfind.attributes["oxidicom.cfind.result"] == "unknown"
        assert cfind.attributes["dicom.SeriesInstanceUID"] and cfind.attributes["dicom.StudyInstanceUID"]
        assert cfind.status_code == 2  # ERROR: the PACS could not be asked

    batches = otlp.named("registration batch")
    assert sum(b.attributes["oxidicom.batch.inserted"] for b in batches) == 21
    assert sum(b.attributes["oxidicom.batch.already_registered"] for b in batches) == 3
    assert {u for b in batches for u in b.attributes["oxidicom.batch.associations"]} == set(by_ulid)

    # Logs: JSON, the association ULID on every line about one, no patient data at INFO.
    assert all(isinstance(line, dict) and line.get("level") != "raw" for line in logs)
    about_associations = [line for line in logs if "calling_ae" in line and "msg" in line]
    assert about_associations and all("association" in line for line in about_associations)
    text = json.dumps(logs)
    assert SECRET_NAME.split("^")[0] not in text and SECRET_ID not in text and "19700101" not in text


def test_health_follows_the_database_and_the_workers(tmp_path: Path, embedded_pg: Any) -> None:
    server = embedded_pg()
    uri = server.start()
    metrics_port = free_port()
    env = {
        "OXIDICOM_DB_CONNECTION": uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_LISTENER_PROCESSES": "2",
        "OXIDICOM_METRICS_PORT": str(metrics_port),
        "OXIDICOM_METRICS_ADDRESS": "127.0.0.1",
    }

    def ready() -> tuple[int, dict[str, Any]]:
        return _get(metrics_port, "/readyz")

    with ServeProcess(env, tmp_path) as rx:
        wait_until(lambda: ready()[0] == 200, 20, interval=0.2, what="ready")
        _status, body = ready()
        assert body["ready"] and all(c["ok"] for c in body["checks"].values())
        assert set(body["checks"]) == {"alive", "workers", "storage", "database"}
        assert _get(metrics_port, "/livez")[0] == 200

        server.stop()
        wait_until(lambda: ready()[0] == 503, 20, interval=0.2, what="not ready with the database down")
        _status, body = ready()
        assert not body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
        assert _get(metrics_port, "/livez")[0] == 200  # alive: restarting it would not help

        server.start()
        wait_until(lambda: ready()[0] == 200, 30, interval=0.2, what="ready again")

        assert rx.proc is not None
        workers = [p for p in psutil.Process(rx.proc.pid).children() if "worker" in p.cmdline()]
        os.kill(workers[0].pid, signal.SIGKILL)
        # (the replacement is usually up within the readiness cache second: the window where
        # a worker is missing is covered by test_readiness_checks_each_part below)
        wait_until(lambda: _said(rx, "worker died; starting a new one"), 10, what="the restart")
        alive = ("oxidicom_workers_alive", frozenset())
        wait_until(lambda: _scrape(metrics_port)[alive] == 2, 30, interval=0.1, what="the new worker up")
        wait_until(lambda: ready()[0] == 200, 30, interval=0.2, what="ready after the restart")
        assert _scrape(metrics_port)[("oxidicom_worker_restarts_total", frozenset())] == 1


def test_readiness_checks_each_part(tmp_path: Path, db_uri: str) -> None:
    from oxidicom_py.telemetry.health import Health, report

    (tmp_path / "files" / ".oxidicom-staging").mkdir(parents=True)
    workers = [2, 2]
    health = Health(db_uri, tmp_path / "files" / ".oxidicom-staging", lambda: (workers[0], workers[1]))
    assert report(health.ready())["ready"]

    workers[0] = 1
    health._cached = None  # the one-second cache would hide the change
    checks = health.ready()
    assert not checks["workers"].ok and checks["workers"].detail == "1 of 2 listener processes running"

    workers[0] = 2
    (tmp_path / "files" / ".oxidicom-staging").rmdir()
    (tmp_path / "files" / ".oxidicom-staging").write_text("not a folder")
    health._cached = None
    checks = health.ready()
    assert not checks["storage"].ok and "cannot write" in checks["storage"].detail
    assert checks["database"].ok

    bad = Health("postgresql://nobody@127.0.0.1:1/none", tmp_path / "files" / ".oxidicom-staging", lambda: (1, 1))
    assert not bad.ready()["database"].ok


@pytest.mark.parametrize("processes", ["1", "2"])
def test_readiness_fails_at_once_when_draining_while_an_association_still_runs(
    tmp_path: Path, db_uri: str, processes: str
) -> None:
    """SIGTERM with an association open: ``/readyz`` answers 503 ("draining") while the receiver
    still finishes that association, so a balancer stops sending before the listener closes."""
    metrics_port = free_port()
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_LISTENER_PROCESSES": processes,
        "OXIDICOM_METRICS_PORT": str(metrics_port),
        "OXIDICOM_METRICS_ADDRESS": "127.0.0.1",
    }
    with ServeProcess(env, tmp_path) as rx:
        wait_until(lambda: _get(metrics_port, "/readyz")[0] == 200, 20, interval=0.2, what="ready")
        scu = RawScu(rx.port, [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])], called="OXIDICOMTEST")
        assert rx.proc is not None
        rx.proc.send_signal(signal.SIGTERM)
        _status, body = wait_until(
            lambda: (answer := _get(metrics_port, "/readyz"))[0] == 503 and answer, 10, interval=0.05, what="503"
        )
        assert body["checks"] == {"draining": {"ok": False, "detail": body["checks"]["draining"]["detail"]}}
        assert rx.proc.poll() is None  # still serving the open association
        scu.release()
        assert rx.stop() == 0
