"""The rules file: validation with the line of each mistake, and matching."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oxidicom_py.processing import rules

EXAMPLE = """\
rules:
  - name: volume
    level: series                  # or study
    when:                          # all must hold; values are regexes (search), case-insensitive
      Modality: MR
      SeriesDescription: mprage
      calling_ae: ORTHANC          # optional: also called_ae, SOPClassUID, BodyPartExamined, ProtocolName, ImageType
    unless: {SeriesDescription: localizer}
    min_instances: 10
    run: {command: [oxidicom-py, module, volume-report], timeout: 300, retries: 2, backoff: 30}
"""

SAG = {"Modality": "MR", "SeriesDescription": "SAG MPRAGE 220 FOV", "calling_ae": "ORTHANC"}


def test_the_issue_example_is_valid_and_matches_what_it_says() -> None:
    (rule,) = rules.parse(EXAMPLE, "example.yaml").rules
    assert (rule.name, rule.level, rule.settle, rule.on_incomplete, rule.line) == ("volume", "series", 10.0, "skip", 2)
    assert rules.explain(rule, SAG, 192) == []
    assert rules.explain(rule, {**SAG, "SeriesDescription": "localizer mprage"}, 192) == [
        "unless: SeriesDescription 'localizer mprage' matches /localizer/"
    ]
    assert rules.explain(rule, {**SAG, "calling_ae": "OTHERPACS"}, 192) == [
        "calling_ae 'OTHERPACS' does not match /ORTHANC/"
    ]
    assert rules.explain(rule, SAG, 9) == ["9 instances, fewer than min_instances 10"]
    # a missing tag means no match, never an error
    assert rules.explain(rule, {"Modality": "MR", "calling_ae": "ORTHANC"}, 192) == ["SeriesDescription is missing"]


def test_multi_valued_tags_match_any_value_or_the_whole() -> None:
    text = "rules:\n  - name: derived\n    when: {ImageType: '^DERIVED$'}\n    send_to: [sender]\n"
    (rule,) = rules.parse(text).rules
    assert rules.explain(rule, {"ImageType": ["ORIGINAL", "PRIMARY"]}, 1) != []
    assert rules.explain(rule, {"ImageType": ["DERIVED", "SECONDARY"]}, 1) == []
    (whole,) = rules.parse(text.replace("'^DERIVED$'", "'DERIVED.SECONDARY'")).rules
    assert rules.explain(whole, {"ImageType": ["DERIVED", "SECONDARY"]}, 1) == []


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("rules:\n  - name: a\n    run: {command: [x]}\n    colour: red\n", 2, "Additional properties"),
        ("rules:\n  - name: a\n    run: {command: [x], timeout: -1}\n", 3, "timeout"),
        ("rules:\n  - name: a\n    level: patient\n    run: {command: [x]}\n", 3, "'patient' is not one of"),
        ("rules:\n  - name: a\n", 2, "is not valid under any of the given schemas"),
        ("rules:\n  - name: a\n    when: {Modality: '[MR'}\n    run: {command: [x]}\n", 3, "not a regular expression"),
        ("rules:\n  - name: a\n    select: {t1: {}}\n    run: {command: [x]}\n", 3, "needs level: study"),
        ("rules:\n  - name: a\n    send_to: [pacs]\n", 3, "not in destinations"),
        ("rules:\n  - {name: a, send_to: [sender]}\n  - {name: a, send_to: [sender]}\n", 3, "a second rule"),
        ("rules: [\n", 2, "not valid YAML"),
        ("", 1, "empty file"),
        ("rule:\n  - name: a\n", 1, "'rule' was unexpected"),
    ],
    ids=[
        "unknown-key",
        "bad-timeout",
        "bad-level",
        "nothing-to-do",
        "bad-regex",
        "select-on-series",
        "unknown-destination",
        "duplicate-name",
        "not-yaml",
        "empty",
        "no-rules",
    ],
)
def test_an_invalid_file_is_one_line_naming_the_file_the_line_and_the_problem(
    text: str, line: int, message: str
) -> None:
    with pytest.raises(rules.RulesError) as caught:
        rules.parse(text, "bad.yaml")
    text_of_error = str(caught.value)
    assert "\n" not in text_of_error
    assert text_of_error.startswith(f"bad.yaml:{line}: "), text_of_error
    assert message in text_of_error, text_of_error


def test_a_study_rule_fires_once_every_role_has_a_series() -> None:
    text = textwrap.dedent(
        """\
        destinations:
          pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
        rules:
          - name: lesions
            level: study
            select:
              t1: {when: {SeriesDescription: t1}}
              flair: {when: {SeriesDescription: flair}, min_instances: 5}
            run: {command: [x]}
            send_to: [pacs, sender]
        """
    )
    (rule,) = rules.parse(text).rules
    t1 = ({"SeriesDescription": "T1 MPRAGE"}, 176)
    flair = ({"SeriesDescription": "FLAIR AX"}, 40)
    assert rules.roles_filled(rule, {"1.1": t1}) is None
    assert rules.roles_filled(rule, {"1.1": t1, "1.2": ({"SeriesDescription": "FLAIR AX"}, 3)}) is None
    assert rules.roles_filled(rule, {"1.1": t1, "1.2": flair}) == {"t1": "1.1", "flair": "1.2"}
    assert rules.matching(rules.parse(text), {"SeriesDescription": "T1"}, 1) == []  # study rules: not per series


def test_rules_check_command(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(EXAMPLE)
    ok = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "rules", "check", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "valid: 1 rules (volume)" in ok.stdout, ok
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("retries: 2", "retries: many"))
    refused = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "rules", "check", str(bad)], capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"oxidicom-py: {bad}:10: rules/0/run/retries: 'many' is not of type 'integer'"
    ], refused.stderr


def test_destination_tls_settings_are_checked() -> None:
    ok = "destinations:\n  d: {ae_title: X, host: h, port: 1, tls: {ca: ca.pem, cert: c.pem, key: k.pem}}\n"
    ok += "rules:\n  - name: a\n    send_to: [d]\n"
    parsed = rules.parse(ok, "f")
    assert parsed.rules[0].targets[0]["tls"] == {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}
    bad = "destinations:\n  d: {ae_title: X, host: h, port: 1, tls: {key: k.pem}}\n"
    bad += "rules:\n  - name: a\n    send_to: [d]\n"
    with pytest.raises(rules.RulesError, match=r"^f:2: destinations/d/tls: 'cert' is a dependency of 'key'"):
        rules.parse(bad, "f")
