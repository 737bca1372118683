"""IS-DN's workflow on oxidicom_py: a fingerprint (imported from IS-DN's JSON) sends a matching
series to an InferenceServer (the http runner against the test server speaking its protocol),
and the predictions go to a second Orthanc standing for the treatment-planning system."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from harness import LOOPBACK, load_script, query, storescu, wait_until
from inference_server import InferenceServer
from peers import Orthanc, ServeProcess
from pydicom.uid import generate_uid

pytestmark = pytest.mark.integration


def _predict(input_dir: Path, output_dir: Path) -> None:
    """The "model": one prediction object per input series (a copy of its first slice, new UIDs)."""
    first = sorted(input_dir.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = "AI prediction"
    ds.save_as(output_dir / "prediction.dcm", enforce_file_format=True)
    return None


def _rules(server: InferenceServer, tps: Orthanc, tmp: Path) -> dict:
    from oxidicom_py.commands.rules_import import from_isdn

    fingerprint = {
        "modality_regex": "MR",
        "series_description_regex": "phantom",
        "inference_server_url": server.url,
        "model_human_readable_id": "segmenter",
        "scus": [{"scu_ae_title": "TPS", "scu_ip": LOOPBACK, "scu_port": tps.dicom_port}],
    }
    rules, _warnings = from_isdn([(str(tmp / "fingerprint.json"), fingerprint)])
    for rule in rules["rules"]:
        rule["settle"] = 0.5
    return rules


def test_an_isdn_fingerprint_runs_the_inference_server_and_delivers_to_the_tps(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=5, rows=16, cols=16, seed=51)
    with InferenceServer({"segmenter": _predict}) as server, Orthanc(tmp_path / "tps", aet="TPS") as tps:
        rules = _rules(server, tps, tmp_path)
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
        env = {
            "OXIDICOM_DB_CONNECTION": db_uri,
            "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
            "OXIDICOM_SCP_AET": "OXITEST",
            "OXIDICOM_LISTENER_PROCESSES": "1",
            "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),
        }
        with ServeProcess(env, tmp_path) as rx:
            storescu(rx.port, calling="SCANNER", called="OXITEST", files=files)
            pushed = time.monotonic()
            wait_until(lambda: len(tps.get("/instances")) == 1, 60, what="the prediction in the TPS")
            visible = time.monotonic() - pushed
        (instance,) = tps.get("/instances")
        tags = tps.get(f"/instances/{instance}/simplified-tags")
    (job,) = query(db_uri, "SELECT * FROM oxidicom_jobs")
    assert job["state"] == "succeeded" and job["run"]["http"]["model"] == "segmenter"
    assert tags["SeriesDescription"] == "AI prediction"
    assert tags["StudyInstanceUID"] == str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert [d["state"] for d in query(db_uri, "SELECT state FROM oxidicom_deliveries")] == ["sent"]
    print(f"\nIS-DN: last instance sent -> prediction visible in the TPS: {visible:.1f} s")
    assert json.dumps(rules)  # the imported rules are what ran
