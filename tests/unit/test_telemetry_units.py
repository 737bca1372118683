"""Telemetry pieces that need no receiver: when tracing turns on, metric label caps, the
multiprocess folder's life cycle, and the endpoint's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from oxidicom_py.telemetry import metrics, multiproc, tracing
from oxidicom_py.telemetry.endpoint import Endpoint
from oxidicom_py.telemetry.health import Health


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # naming the service asks for nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def test_start_span_costs_nothing_when_off() -> None:
    assert not tracing.ENABLED
    assert tracing.start_span(tracing.ASSOCIATION, {"a": 1}) is None


def test_console_exporter_prints_spans() -> None:
    code = (
        "from oxidicom_py.telemetry import tracing\n"
        "assert tracing.configure()\n"
        "s = tracing.start_span(tracing.ASSOCIATION, {'oxidicom.association.ulid': 'U1'}, kind='SERVER')\n"
        "s.end()\n"
        "tracing.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "console"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    span = json.loads(out.stdout)
    assert span["name"] == "dicom.association" and span["attributes"]["oxidicom.association.ulid"] == "U1"
    assert span["kind"] == "SpanKind.SERVER" and span["resource"]["attributes"]["service.name"] == "oxidicom_py"


def test_calling_ae_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_ae_labels", set())
    labels = [metrics.ae_label(f"AE{i}") for i in range(metrics.MAX_AE_LABELS + 10)]
    assert labels[: metrics.MAX_AE_LABELS] == [f"AE{i}" for i in range(metrics.MAX_AE_LABELS)]
    assert set(labels[metrics.MAX_AE_LABELS :]) == {metrics.OTHER_AE}
    assert metrics.ae_label("AE0") == "AE0"  # a title seen before keeps its label


def test_multiprocess_folder_sums_processes_and_orphans_are_removed(tmp_path: Path) -> None:
    orphan = tmp_path / "oxidicom-metrics-999999999-abc"  # no such pid
    orphan.mkdir()
    code = (
        "import sys, subprocess\n"
        "from pathlib import Path\n"
        "from oxidicom_py.telemetry import multiproc\n"
        f"folder = multiproc.enable(Path({str(tmp_path)!r}))\n"
        "child = 'from oxidicom_py.telemetry import metrics; metrics.INSTANCES_STORED.labels(\"A\").inc(5)'\n"
        "for _ in range(3):\n"
        "    subprocess.run([sys.executable, '-c', child], check=True)\n"
        "from prometheus_client import CollectorRegistry, generate_latest, multiprocess\n"
        "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r)\n"
        "print(generate_latest(r).decode())\n"
        "multiproc.remove(folder)\n"
        "print('REMOVED', not folder.exists())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != multiproc.ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'oxidicom_instances_stored_total{calling_ae="A"} 15.0' in out.stdout
    assert "REMOVED True" in out.stdout
    assert not orphan.exists()


def test_endpoint_answers_and_refuses_unknown_paths(tmp_path: Path) -> None:
    (tmp_path / ".oxidicom-staging").mkdir()
    health = Health("postgresql://nobody@127.0.0.1:1/none", tmp_path / ".oxidicom-staging", lambda: (1, 1))
    endpoint = Endpoint(health, "127.0.0.1", 0)
    endpoint.start()
    try:
        base = f"http://127.0.0.1:{endpoint.address[1]}"
        with urllib.request.urlopen(base + "/livez", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["alive"]
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(base + "/readyz", timeout=10)
        assert unready.value.code == 503
        body = json.loads(unready.value.read())
        assert not body["ready"] and not body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
        with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
            assert answer.status == 200 and b"oxidicom_instances_stored_total" in answer.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nothing", timeout=10)
        assert missing.value.code == 404
    finally:
        endpoint.stop()


def test_the_declared_metric_list_is_what_the_code_defines() -> None:
    """deploy/metric_names.txt (which the Grafana dashboard is checked against) = the code's metrics."""
    from prometheus_client import REGISTRY

    listed = {}
    text = (Path(__file__).resolve().parents[2] / "deploy" / "metric_names.txt").read_text()
    for line in text.splitlines():
        if line.split() and not line.lstrip().startswith("#"):
            name, kind = line.split()[:2]
            listed[name] = kind
    defined = {m.name: m.type for m in REGISTRY.collect() if m.name.startswith("oxidicom_")}
    assert listed == defined
    assert set(metrics.NAMES) == set(defined)


def test_an_extra_field_never_hides_the_log_level_or_message() -> None:
    import io
    import json
    import logging

    from oxidicom_py.telemetry import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("oxidicom_py.test.extra")
    logger.addHandler(handler)
    try:
        logger.warning("said", extra={"level": "series", "msg2": 1})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["level"] == "warning" and line["msg"] == "said" and line["extra_level"] == "series"


def test_a_hung_storage_probe_makes_readiness_fail_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from oxidicom_py.telemetry import health as health_mod
    from oxidicom_py.telemetry.health import Check, Health

    monkeypatch.setattr(health_mod, "STORAGE_TIMEOUT_SECONDS", 0.2)
    unblock = threading.Event()
    health = Health("postgresql://nobody@127.0.0.1:1/none", tmp_path, lambda: (1, 1))
    monkeypatch.setattr(health, "_write_probe", lambda: (unblock.wait(30), Check(True, "written"))[1])
    started = time.monotonic()
    first = health._storage()
    assert not first.ok and "took over 0.2 s" in first.detail
    second = health._storage()  # the first probe is still stuck: no second thread, an answer at once
    assert not second.ok and "has not finished" in second.detail
    assert time.monotonic() - started < 5
    unblock.set()
    assert health._probe is not None
    health._probe.join(10)
    assert health._storage().ok  # the mount answers again
    health.draining = True
    assert list(health.ready()) == ["draining"]
