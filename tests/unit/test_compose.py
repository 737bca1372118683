"""docker-compose.yml and deploy/ are valid, without a Docker engine.

* docker-compose.yml validates against the Compose Specification's JSON schema (vendored in
  deploy/schema/), every bind-mounted file exists, every published port binds 127.0.0.1 and
  every image is pinned;
* the services agree with each other: the OTLP endpoint oxidicom_py exports to is the
  collector's OTLP/HTTP receiver, the collector forwards traces to Jaeger, Prometheus scrapes
  oxidicom:$OXIDICOM_METRICS_PORT, Grafana's data sources point at those services, and each
  config file is mounted where its program reads it;
* the oxidicom healthcheck command passes on a 200 from /readyz and fails on a 503 or no answer
  (run here against a stub server on 127.0.0.1);
* the Grafana dashboard uses the provisioned data sources, and its PromQL uses only metrics of
  deploy/metric_names.txt, each of them at least once, counters and histogram series under
  rate()/increase().
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = DEPLOY / "schema" / "compose-spec.json"
METRIC_NAMES_FILE = DEPLOY / "metric_names.txt"
COLLECTOR_FILE = DEPLOY / "otel-collector.yaml"
PROMETHEUS_FILE = DEPLOY / "prometheus.yml"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILE = DASHBOARDS_DIR / "oxidicom.json"

METRIC_TYPES = {"counter", "gauge", "histogram"}
METRIC_NAME = re.compile(r"oxidicom_[a-z_]+")


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def parse_metric_names(text: str) -> dict[str, str]:
    """``deploy/metric_names.txt``: family name -> type (see the file's header)."""
    families: dict[str, str] = {}
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        assert len(fields) == 2, f"expected '<family> <type>': {raw!r}"
        name, kind = fields
        assert name not in families, f"listed twice: {name}"
        families[name] = kind
    return families


def exposition_names(families: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every series name that appears in the text exposition -> (family, type)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {name + suffix: (name, kind) for name, kind in families.items() for suffix in suffixes[kind]}


def unknown_metric_names(expr: str, exposed: dict[str, tuple[str, str]]) -> set[str]:
    return {m for m in METRIC_NAME.findall(expr) if m not in exposed}


def misused_metric_names(expr: str, exposed: dict[str, tuple[str, str]]) -> list[str]:
    """Counter and histogram series must be read through rate()/increase(), gauges must not."""
    problems = []
    for m in METRIC_NAME.finditer(expr):
        if m.group() not in exposed:
            continue
        _, kind = exposed[m.group()]
        under_rate = re.search(r"\b(?:rate|increase)\(\s*$", expr[: m.start()]) is not None
        if kind in {"counter", "histogram"} and not under_rate:
            problems.append(f"{m.group()} ({kind}) outside rate()/increase()")
        if kind == "gauge" and under_rate:
            problems.append(f"{m.group()} (gauge) under rate()/increase()")
    return problems


def brackets_balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and not in_string


PORT_SPEC = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|::):)?"
    r"(?:(?P<host>[0-9-]*):)?(?P<container>[0-9]+(?:-[0-9]+)?)(?:/(?P<proto>tcp|udp|sctp))?$"
)


def published_host_ip(port: Any) -> str | None:
    """The host address a ``ports:`` entry binds; None when it binds every address."""
    if isinstance(port, dict):
        return port.get("host_ip")
    m = PORT_SPEC.match(str(port))
    assert m, f"unparsable port entry {port!r}"
    return m.group("ip")


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    _, sep, tag = last.rpartition(":")
    return bool(sep) and bool(tag) and tag != "latest" and "$" not in image


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source as written, container target) of a service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def mount_target_of(service: dict[str, Any], host_path: Path) -> str:
    """Where ``host_path`` is visible in the container (it or a folder above it is bind-mounted)."""
    for source, target in bind_mounts(service):
        src = (ROOT / source).resolve()
        if host_path == src:
            return target
        if src in host_path.parents:
            return str(PurePosixPath(target) / host_path.relative_to(src).as_posix())
    raise AssertionError(f"{host_path.relative_to(ROOT)} is not mounted into the service")


def host_port(url_or_address: str) -> tuple[str, int]:
    parts = urlsplit(url_or_address if "//" in url_or_address else f"//{url_or_address}")
    assert parts.hostname and parts.port, f"no host:port in {url_or_address!r}"
    return parts.hostname, parts.port


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    return parse_metric_names(METRIC_NAMES_FILE.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture(scope="module")
def datasources() -> list[dict[str, Any]]:
    found = []
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        doc = load_yaml(path)
        assert doc["apiVersion"] == 1, path
        found += doc["datasources"]
    assert found, "no provisioned data source"
    return found


# --------------------------------------------------------------------------- compose file


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(compose)]
    assert not errors, "\n".join(errors)

    # The validator really rejects what Compose rejects.
    broken = json.loads(json.dumps(compose))
    broken["services"]["oxidicom"]["healthchek"] = broken["services"]["oxidicom"].pop("healthcheck")
    assert any("healthchek" in e.message for e in cls(schema).iter_errors(broken))
    broken = json.loads(json.dumps(compose))
    broken["services"]["grafana"]["depends_on"] = "prometheus"  # a list or a mapping
    assert list(cls(schema).iter_errors(broken))


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"db", "orthanc", "oxidicom", "otel-collector", "jaeger", "prometheus", "grafana"} <= set(services)
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_every_bind_mounted_file_and_build_context_exists(compose: dict[str, Any]) -> None:
    mounted = 0
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert not source.startswith(("/", "~")), f"{name}: host path outside the repository: {source}"
            path = (ROOT / source).resolve()
            assert ROOT in path.parents, f"{name}: {source} leaves the repository"
            assert path.exists(), f"{name}: {source} does not exist"
            mounted += 1
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in (compose.get("volumes") or {}), f"{name}: undeclared volume {volume}"
        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
    for section in ("configs", "secrets"):
        for key, item in (compose.get(section) or {}).items():
            if "file" in item:
                assert (ROOT / item["file"]).exists(), f"{section}.{key}: {item['file']} does not exist"
    assert mounted >= 5  # collector, prometheus and grafana's three


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    assert published_host_ip("9090:9090") is None  # the parser sees an all-addresses binding
    assert published_host_ip("0.0.0.0:9090:9090") == "0.0.0.0"
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            assert published_host_ip(port) == "127.0.0.1", f"{name}: {port!r} is not bound to 127.0.0.1"
            published += 1
    assert published >= 6


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    assert not image_is_pinned("grafana/grafana")
    assert not image_is_pinned("grafana/grafana:latest")
    assert not image_is_pinned("localhost:5000/grafana")
    assert image_is_pinned("localhost:5000/grafana:11.2.2")
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "image" in service:
            assert image_is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"


# --------------------------------------------------------------------------- oxidicom service


def test_oxidicom_exports_metrics_and_traces_to_the_stack(services: dict[str, dict[str, Any]]) -> None:
    ox = services["oxidicom"]
    env = ox["environment"]
    assert env["OXIDICOM_METRICS_PORT"] == "9100"
    assert env["OTEL_SERVICE_NAME"] == "oxidicom_py"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert "127.0.0.1:9100:9100" in ox["ports"]
    collector = load_yaml(COLLECTOR_FILE)
    host, port = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host in services
    assert host_port(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1] == port


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _run_healthcheck(code: str, port: int) -> int:
    assert "http://127.0.0.1:9100/readyz" in code
    code = code.replace("127.0.0.1:9100/", f"127.0.0.1:{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


def test_oxidicom_healthcheck_follows_readyz(services: dict[str, dict[str, Any]]) -> None:
    assert "FROM python:3.11-slim" in (ROOT / "Dockerfile").read_text()  # python is there, curl is not
    test = services["oxidicom"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    code = test[3]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        _Readyz.status = 200
        assert _run_healthcheck(code, port) == 0
        _Readyz.status = 503
        assert _run_healthcheck(code, port) != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert _run_healthcheck(code, closed_port) != 0


# --------------------------------------------------------------------------- collector, prometheus


def test_collector_receives_otlp_and_sends_traces_to_jaeger(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(COLLECTOR_FILE)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", 4317)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", 4318)
    assert "batch" in config["processors"]

    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert "batch" in traces["processors"]
    for section in ("receivers", "processors", "exporters"):
        for pipeline in config["service"]["pipelines"].values():
            for component in pipeline.get(section, []):
                assert component in config[section], f"{section}: {component} used but not defined"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]

    exporters = traces["exporters"]
    assert "debug" in exporters
    otlp = [e for e in exporters if e == "otlp" or e.startswith("otlp/")]
    assert otlp, "traces are not exported over OTLP"
    host, port = host_port(config["exporters"][otlp[0]]["endpoint"])
    assert host == "jaeger" and port == 4317
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"

    collector = services["otel-collector"]
    assert f"--config={mount_target_of(collector, COLLECTOR_FILE)}" in collector["command"]


def test_prometheus_scrapes_oxidicom_every_5s(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "oxidicom"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["oxidicom:9100"]
    host, port = host_port(targets[0])
    assert host in services
    assert port == int(services["oxidicom"]["environment"]["OXIDICOM_METRICS_PORT"])
    assert mount_target_of(services["prometheus"], PROMETHEUS_FILE) == "/etc/prometheus/prometheus.yml"


# --------------------------------------------------------------------------- grafana


def test_grafana_provisioning_points_at_the_stack(
    services: dict[str, dict[str, Any]], datasources: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    uids = [ds["uid"] for ds in datasources]
    assert len(uids) == len(set(uids))
    expected = {"prometheus": ("prometheus", 9090), "jaeger": ("jaeger", 16686)}
    assert {ds["type"] for ds in datasources} == set(expected)
    for ds in datasources:
        assert host_port(ds["url"]) == expected[ds["type"]], ds["name"]
        assert ds["url"].startswith("http://")

    assert mount_target_of(grafana, PROVISIONING / "datasources") == "/etc/grafana/provisioning/datasources"
    assert mount_target_of(grafana, PROVISIONING / "dashboards") == "/etc/grafana/provisioning/dashboards"
    providers = [p for path in (PROVISIONING / "dashboards").glob("*.y*ml") for p in load_yaml(path)["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == mount_target_of(grafana, DASHBOARDS_DIR)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == mount_target_of(grafana, DASHBOARD_FILE)
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert dashboard["uid"] == "oxidicom"  # `just grafana` prints /d/oxidicom


def test_dashboard_uses_the_provisioned_datasources(
    dashboard: dict[str, Any], datasources: list[dict[str, Any]]
) -> None:
    by_uid = {ds["uid"]: ds["type"] for ds in datasources}
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    refs = [t for t in dashboard["templating"]["list"] if "datasource" in t]
    for owner in [*panels, *refs]:
        if owner.get("type") == "row":
            continue
        g = owner.get("gridPos")
        if g is not None:
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, owner["title"]
        ds = owner["datasource"]
        assert by_uid.get(ds["uid"]) == ds["type"], f"{owner.get('title', owner.get('name'))}: {ds}"
        targets = owner.get("targets", [])
        assert len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t.get("datasource", ds) == ds
    assert "jaeger" in {by_uid.get(p.get("datasource", {}).get("uid")) for p in panels}, "no trace panel"


def _prometheus_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every Prometheus query of a panel."""
    out = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("datasource", panel.get("datasource", {})).get("type") == "prometheus":
                out.append((panel["title"], target["expr"]))
    return out


def test_metric_names_file_is_well_formed(families: dict[str, str]) -> None:
    assert len(families) == 28
    for name, kind in families.items():
        assert METRIC_NAME.fullmatch(name), name
        assert kind in METRIC_TYPES, f"{name}: unknown type {kind}"
        assert not name.endswith(("_total", "_bucket", "_count", "_sum", "_created")), name
    exposed = exposition_names(families)
    assert len(exposed) == sum({"counter": 1, "gauge": 1, "histogram": 3}[k] for k in families.values())


def test_dashboard_queries_use_only_and_all_exported_metrics(
    dashboard: dict[str, Any], families: dict[str, str]
) -> None:
    exposed = exposition_names(families)
    # The checks can fail.
    assert unknown_metric_names("rate(oxidicom_instances_stored[1m])", exposed) == {"oxidicom_instances_stored"}
    assert unknown_metric_names("oxidicom_cfind_seconds", exposed) == {"oxidicom_cfind_seconds"}
    assert misused_metric_names("sum(oxidicom_instances_stored_total)", exposed)
    assert misused_metric_names("rate(oxidicom_workers_alive[1m])", exposed)
    assert not brackets_balanced("sum(rate(oxidicom_cfind_total[1m])")

    exprs = _prometheus_exprs(dashboard)
    assert len(exprs) >= 15
    used: set[str] = set()
    for title, expr in exprs:
        assert brackets_balanced(expr), f"{title}: {expr}"
        assert not unknown_metric_names(expr, exposed), f"{title}: {expr}"
        assert not misused_metric_names(expr, exposed), f"{title}: {misused_metric_names(expr, exposed)}"
        if "histogram_quantile" in expr:
            assert re.search(r"by \(le\b", expr), f"{title}: quantile not aggregated by le: {expr}"
        used |= {exposed[m][0] for m in METRIC_NAME.findall(expr)}
    assert used == set(families), f"not on any panel: {sorted(set(families) - used)}"

    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query["query"] if isinstance(query, dict) else str(query or "")
        assert not unknown_metric_names(text, exposed), variable["name"]


def test_registration_latency_shows_p50_p95_p99(dashboard: dict[str, Any]) -> None:
    exprs = [e for _, e in _prometheus_exprs(dashboard) if "oxidicom_registration_batch_seconds_bucket" in e]
    quantiles = {m for e in exprs for m in re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)}
    assert {"0.5", "0.95", "0.99"} <= quantiles
