"""``oxidicom-py rules test``: which rules match series the receiver has, and why the others do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from harness import instance_rows, load_script, storescu, wait_until
from peers import ServeProcess

pytestmark = pytest.mark.integration

RULES = """\
rules:
  - name: heads
    when: {Modality: MR, BodyPartExamined: head, ImageType: '^original$', calling_ae: RULESCU}
    min_instances: 5
    run: {command: [x]}
  - name: bodies
    when: {BodyPartExamined: chest}
    run: {command: [x]}
  - name: contrast
    when: {ContrastBolusAgent: gad}
    run: {command: [x]}
  - name: pair
    level: study
    select:
      first: {when: {SeriesDescription: 'phantom 1$'}}
      second: {when: {SeriesDescription: 'phantom 2$'}}
    run: {command: [x]}
"""


def test_rules_test_explains_each_rule_for_received_series(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", n_series=2, slices=6, rows=16, cols=16)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    described = {str(h.SeriesInstanceUID): str(h.SeriesDescription) for h in headers}
    study = str(headers[0].StudyInstanceUID)
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
    }
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    with ServeProcess(env, tmp_path) as rx:
        storescu(rx.port, calling="RULESCU", called="OXITEST", files=files)
        wait_until(lambda: instance_rows(db_uri, "RULESCU") == len(files), 30, what="every row")
        run = subprocess.run(
            [sys.executable, "-m", "oxidicom_py", "rules", "test", str(rules_file), "--study", study],
            env=rx.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert [line for line in out if line.startswith("series ")] == [
        f"series {uid} from RULESCU: 6 instances, MR {described[uid]!r}" for uid in sorted(described)
    ], out
    assert out.count("  match heads") == 2, out
    assert sum(1 for line in out if line.startswith("  no    bodies: BodyPartExamined 'HEAD' does not match")) == 2
    assert sum(1 for line in out if line == "  no    contrast: ContrastBolusAgent is missing") == 2
    (pair,) = [line for line in out if line.startswith(f"study {study}:")]
    by_description = {description: uid for uid, description in described.items()}
    first, second = by_description["synthetic MR phantom 1"], by_description["synthetic MR phantom 2"]
    assert pair == f"study {study}: match pair: first={first}, second={second}", pair


def test_an_invalid_rules_file_stops_start_up_with_one_line(tmp_path: Path, db_uri: str) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: a\n    run: {command: [x], timeout: soon}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "serve"],
        env={"OXIDICOM_DB_CONNECTION": db_uri, "OXIDICOM_RULES": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"oxidicom-py: configuration error: OXIDICOM_RULES: {bad}:3: "
        "rules/0/run/timeout: 'soon' is not of type 'number'"
    ]


def test_a_changed_rules_file_is_read_again_and_an_invalid_one_keeps_the_old_rules(tmp_path: Path, db_uri: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: first, send_to: [sender]}\n")
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_RULES": str(path),
        "OXIDICOM_LISTENER_PROCESSES": "1",
    }

    def in_force() -> list[list[str]]:
        return [line["rules"] for line in rx.lines if line.get("msg") == "rules in force"]

    def refused() -> list[dict[str, object]]:
        return [line for line in rx.lines if str(line.get("msg", "")).startswith("rules file not taken")]

    with ServeProcess(env, tmp_path) as rx:
        assert in_force() == [["first"]]
        path.write_text("rules:\n  - {name: first, send_to: [sender]}\n  - {name: second, send_to: [sender]}\n")
        wait_until(lambda: len(in_force()) == 2, 10, what="the changed file read again")
        assert in_force()[-1] == ["first", "second"]
        path.write_text("rules:\n  - {name: broken\n")  # a save half-way through an edit
        wait_until(refused, 10, what="the invalid version refused")
        assert "not valid YAML" in str(refused()[0]["msg"]) and refused()[0]["rules"] == 2  # old rules in force
        path.write_text("rules:\n  - {name: third, send_to: [sender]}\n")
        wait_until(lambda: in_force()[-1] == ["third"], 10, what="a valid version again")
    assert len(refused()) == 1
