"""The shipped deployment files: Kubernetes manifests valid against the Kubernetes 1.31 schemas
(offline, ``kubernetes-validate``), saying what a cluster of receivers needs; HAProxy's file
accepted by ``haproxy -c`` and set up for DICOM (layer 4, least connections, PROXY v2, health
from ``/readyz``, redispatch)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from oxidicom_py import runtime
from oxidicom_py.settings import DOCUMENTED

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBE = DEPLOY / "kubernetes"
VERSION = "1.31.0"


def _resources() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            (doc,) = list(yaml.safe_load_all(path.read_text()))
            out[path.name] = doc
    return out


def _by_kind(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _resources().values() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_manifest_is_valid_for_kubernetes_and_listed_in_the_kustomization() -> None:
    resources = _resources()
    assert len(resources) >= 9
    for name, doc in resources.items():
        kubernetes_validate.validate(doc, VERSION, strict=True), name
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(resources)
    # the check can fail
    broken = copy.deepcopy(_by_kind("Deployment", "oxidicom-receiver"))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)
    broken = copy.deepcopy(_by_kind("Deployment", "oxidicom-receiver"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPrt"] = 11111
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_receivers_are_set_up_for_a_cluster() -> None:
    deployment = _by_kind("Deployment", "oxidicom-receiver")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OXIDICOM_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["OXIDICOM_DB_CONNECTION"]["valueFrom"]["secretKeyRef"]["name"] == "oxidicom-database"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker_drain = runtime.DRAIN_TIMEOUT * 2 + 10  # what the supervisor gives its workers
    assert pod["terminationGracePeriodSeconds"] > worker_drain
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    service = _by_kind("Service", "oxidicom-receiver")
    assert (service["spec"]["type"], service["spec"]["externalTrafficPolicy"]) == ("LoadBalancer", "Local")
    pdb = _by_kind("PodDisruptionBudget", "oxidicom-receiver")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    config = _by_kind("ConfigMap", "oxidicom-config")["data"]
    assert config["OXIDICOM_DB_MIGRATE"] == "off"
    assert set(config) <= set(DOCUMENTED), sorted(set(config) - set(DOCUMENTED))
    assert _by_kind("PersistentVolumeClaim", "oxidicom-files")["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _by_kind("Job", "oxidicom-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["oxidicom-py", "migrate"]
    processing = _by_kind("Deployment", "oxidicom-processing")["spec"]["template"]["spec"]
    assert processing["containers"][0]["command"] == ["oxidicom-py", "process"]
    assert processing["nodeSelector"] and "nvidia.com/gpu" in processing["containers"][0]["resources"]["limits"]
    assert config["OXIDICOM_CONSOLE_PORT"] == "0"  # one console for the cluster, not one per receiver
    console = _by_kind("Deployment", "oxidicom-console")["spec"]["template"]["spec"]["containers"][0]
    assert console["command"] == ["oxidicom-py", "console"]
    console_env = {e["name"]: e.get("value") for e in console["env"]}
    assert (
        console_env["OXIDICOM_CONSOLE_PORT"] == "8090" and console["readinessProbe"]["httpGet"]["path"] == "/api/health"
    )
    assert _by_kind("Service", "oxidicom-console")["spec"]["type"] == "ClusterIP"


def test_the_haproxy_file_is_valid_and_balances_dicom_at_layer_4() -> None:
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    lines = {line.split("#")[0].strip() for line in text.splitlines()}
    for needed in (
        "mode tcp",
        "balance leastconn",
        "option httpchk GET /readyz",
        "option redispatch 1",
        "default-server check port 9100 inter 2s fall 1 rise 2 send-proxy-v2",
    ):
        assert needed in lines, needed
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (./test.sh installs it)")
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and "Configuration file is valid" in check.stdout + check.stderr, check.stderr
    assert "[WARNING]" not in check.stdout + check.stderr
