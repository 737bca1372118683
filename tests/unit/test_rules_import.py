"""``rules import isdn|dts``: IS-DN fingerprints and data-transfer-station config.json as rules.

The inputs are modelled on the real repositories' files: mathiser/inference_server_dicom_node
(1.x ``CONFIGURATION/FINGERPRINTS/fingerprint.json.example`` and ``src/database/db.py``; 2.x the
``src/database/models.py`` fields as ``GET /fingerprints/`` lists them, values from
``src/daemon/fingerprinting/test_fingerprint.py``) and HaukeBartsch/data-transfer-station
(``configuration/config.json``, now and in its first version).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from oxidicom_py.commands.rules_import import add_import_parser, from_dts, from_isdn
from oxidicom_py.processing import rules

ISDN1 = {
    "modality_regex": "MR",
    "sop_class_uid_regex": "",
    "exclude_regex": "a^",
    "study_description_regex": "HEST|Imp",
    "series_description_regex": "",
    "inference_server_url": "https://omen.onerm.dk/api/tasks/",
    "model_human_readable_id": "cns_t1_oars",
    "scus": [{"scu_ip": "127.0.0.1", "scu_port": "11110", "scu_ae_title": "PACS_TITLE"}],
}

# the shipped example, comments and all (IS-DN's json.loads refuses it too)
ISDN1_EXAMPLE = """{
  "modality_regex": "", # Matches everything
  "series_description_regex": "", # Matches everything
  "study_description_regex": "", # Matches everything
  "sop_class_uid_regex": "", # Matches everything
  "exclude_regex": "a^", # Matches nothing
  "inference_server_url": "https://omen.onerm.dk/api/tasks/",
  "model_human_readable_id": "cns_t1_oars",
  "scus":[
    {
      "scu_ip": "127.0.0.1",
      "scu_port":  "11110",
      "scu_ae_title": "DICOM_ENDPOINT_AE"}
  ]
}
"""

STAMP = "2023-07-02T20:17:40.123456"
ISDN2 = [
    {
        "id": 1,
        "timestamp": STAMP,
        "version": "1.0",
        "description": "",
        "inference_server_url": "http://test.com.org",
        "human_readable_id": "test",
        "delete_remotely": False,
        "delete_locally": True,
        "triggers": [
            {
                "id": 1,
                "timestamp": STAMP,
                "study_description_pattern": "Interesting",
                "series_description_pattern": None,
                "sop_class_uid_exact": "1.2.3",
                "exclude_pattern": None,
            },
            {
                "id": 2,
                "timestamp": STAMP,
                "study_description_pattern": None,
                "series_description_pattern": None,
                "sop_class_uid_exact": "2.3.4",
                "exclude_pattern": "BRAIN FART!!",
            },
        ],
        "destinations": [{"id": 1, "timestamp": STAMP, "scu_ip": "10.0.0.5", "scu_port": 104, "scu_ae_title": "TPS"}],
    }
]

_LOGGING = [{"host": "localhost", "port": 3306, "dbname": "", "driver": ""}]
_DEST = {"AETitle": "FIONA", "IP": "fiona.ihelse.net", "PORT": "7280", "filter": [{"SeriesDescription": "*"}]}
DTS_FIRST = {
    "arrived": "/data/site/.arrived",
    "raw": "/data/site/raw",
    "archive": "/data/site/archive",
    "timeout": 16,
    "log": "/data/logs/trigger.log",
    "logging": _LOGGING,
    "Streams": [
        {
            "log": "/data/logs/trigger.log",
            "name": "AIcore",
            "description": "AIcore",
            "trigger": {"AETitleCalled": "^AICORE1$", "AETitleCaller": ".*"},
            "destination": [_DEST],
            "trigger-study": [
                {"type": "send", "send": "http", "destination": "http://localhost:11120"},
                {
                    "type": "exec",
                    "cmd": ["echo", "triggered this service", "@StudyInstanceUID@", "@PATH@", "@DESCRIPTION@"],
                },
            ],
            "trigger-series": [],
        }
    ],
}


def _ror(cmd: list[str]) -> dict[str, Any]:
    return {"type": "exec", "cmd": cmd}


PROC, ARCHIVE = "/data/proc/@StudyInstanceUID@", "/data/site/archive/@StudyInstanceUID@"
DTS_NOW = {
    **{k: v for k, v in DTS_FIRST.items() if k != "Streams"},
    "logging": [
        {"host": "localhost", "port": 1433, "dbname": "master", "driver": "18", "dbuser": "", "dbpassword": ""}
    ],
    "Streams": [
        {
            **DTS_FIRST["Streams"][0],
            "destination": [{**_DEST, "AETitle": "DICOM_QR_SCP", "IP": "sectradcmimport.ihelse.net"}],
            "trigger-study": [
                _ror(["echo", "triggered this service", "@StudyInstanceUID@", "@SeriesInstanceUID@", "@PATH@"]),
                _ror(["mkdir", "-p", PROC]),
                _ror(["/usr/sbin/ror", "init", "-type", "python", PROC]),
                _ror(
                    [
                        "/usr/sbin/ror",
                        "config",
                        "--working_directory",
                        PROC,
                        "--temp_directory",
                        PROC,
                        "--data",
                        ARCHIVE,
                    ]
                ),
                _ror(["/pullSelect.sh", ARCHIVE, f"{PROC}/select.statement", "@StreamName@"]),
                _ror(["/usr/sbin/ror", "config", "--working_directory", PROC, "--call", "python /app/segm.py /data"]),
                _ror(["/addJob.sh", ARCHIVE, PROC, "@destination@", "@StreamName@"]),
                _ror(["chmod", "-R", "777", PROC]),
            ],
        }
    ],
}


def _parses(document: dict[str, Any]) -> rules.Rules:
    return rules.parse(yaml.safe_dump(document, sort_keys=False), "<converted>")


def test_isdn_1x_fingerprint_exactly() -> None:
    document, warnings = from_isdn([("hn.json", copy.deepcopy(ISDN1))])
    assert document == {
        "rules": [
            {
                "name": "cns_t1_oars",
                "level": "series",
                "when": {"Modality": "MR", "StudyDescription": "HEST|Imp"},
                "run": {"http": {"url": "https://omen.onerm.dk", "model": "cns_t1_oars"}, "timeout": 3600},
                "send_to": ["PACS_TITLE"],
            }
        ],
        "destinations": {"PACS_TITLE": {"ae_title": "PACS_TITLE", "host": "127.0.0.1", "port": 11110}},
    }
    assert [w.split(":")[0] for w in warnings] == ["IS-DN 1.x"] * 3 + ["IS-DN"]
    assert any("InferenceServer 1's protocol" in w for w in warnings)
    assert any("verify_tls" in w for w in warnings)
    (rule,) = _parses(document).rules
    facts = {"Modality": "MR", "StudyDescription": "Neck Important neck", "SeriesDescription": "T1"}
    assert rules.explain(rule, facts, 1) == []  # db.py's own example: case-insensitive search
    assert rules.explain(rule, {**facts, "Modality": "CT"}, 1) == ["Modality 'CT' does not match /MR/"]


def test_isdn_1x_exclude_names_the_four_tags_and_unsupported_parts_are_warned() -> None:
    fp = {k: v for k, v in ISDN1.items() if k != "sop_class_uid_regex"}
    fp |= {"exclude_regex": "localizer|scout", "series_description_regex": ".", "comment": "hn"}
    fp["inference_server_url"] = "https://omen.onerm.dk/prefix/api/tasks"
    document, warnings = from_isdn([("a.json", fp)])
    (rule,) = document["rules"]
    assert rule["unless"] == dict.fromkeys(
        ["Modality", "SeriesDescription", "StudyDescription", "SOPClassUID"], "localizer|scout"
    )
    assert rule["when"]["SeriesDescription"] == "."
    assert rule["run"]["http"]["url"] == "https://omen.onerm.dk/prefix"
    text = "\n".join(warnings)
    assert "a.json: no sop_class_uid_regex: IS-DN 1.x's loader skips such a file" in text
    assert "a.json: comment: not a field of an IS-DN 1.x fingerprint" in text
    assert "a.json: exclude_regex: IS-DN excludes if found in Modality" in text
    assert "a.json: series_description_regex '.': IS-DN finds it in the text 'None'" in text
    (parsed,) = _parses(document).rules
    facts = {"Modality": "MR", "StudyDescription": "HEST", "SeriesDescription": "Scout 3-plane"}
    assert rules.explain(parsed, facts, 3) == ["unless: SeriesDescription 'Scout 3-plane' matches /localizer|scout/"]


def test_isdn_2x_fingerprints_become_study_rules_with_a_role_per_trigger() -> None:
    document, warnings = from_isdn([("fps.json: fingerprint 1", copy.deepcopy(ISDN2[0]))])
    unless = dict.fromkeys(["SOPClassUID", "SeriesDescription", "StudyDescription"], r"(?-i:BRAIN\ FART!!)")
    assert document == {
        "rules": [
            {
                "name": "test",
                "level": "study",
                "select": {
                    "trigger-1": {"when": {"SOPClassUID": r"^1\.2\.3$", "StudyDescription": "(?-i:Interesting)"}},
                    "trigger-2": {"when": {"SOPClassUID": r"^2\.3\.4$"}, "unless": unless},
                },
                "run": {
                    "http": {"url": "http://test.com.org", "model": "test", "delete_remote": False},
                    "timeout": 3600,
                },
                "send_to": ["TPS"],
            }
        ],
        "destinations": {"TPS": {"ae_title": "TPS", "host": "10.0.0.5", "port": 104}},
    }
    assert any(
        w.startswith("fps.json: fingerprint 1: triggers[2]: IS-DN 2.x's fingerprint.py compares") for w in warnings
    )
    assert any(w.startswith("IS-DN 2.x: a fingerprint fires when each trigger matches") for w in warnings)
    (rule,) = _parses(document).rules
    series = {
        "1.9.1": ({"SOPClassUID": "1.2.3", "StudyDescription": "Interesting Study", "SeriesDescription": "a"}, 5),
        "1.9.2": ({"SOPClassUID": "2.3.4", "StudyDescription": "A different but interesting Study"}, 5),
    }
    assert rules.roles_filled(rule, series) == {"trigger-1": "1.9.1", "trigger-2": "1.9.2"}
    lower = {**series, "1.9.1": ({**series["1.9.1"][0], "StudyDescription": "interesting study"}, 5)}
    assert rules.roles_filled(rule, lower) is None  # a case-sensitive substring, as in IS-DN


def test_isdn_2x_fingerprint_without_triggers_is_not_converted() -> None:
    fp = {**ISDN2[0], "triggers": [], "destinations": []}
    document, warnings = from_isdn([("fps.json", fp)])
    assert document == {"rules": []}
    assert "fps.json: no triggers: IS-DN never fires this fingerprint; not converted" in warnings


def test_dts_first_config_exactly() -> None:
    document, warnings = from_dts(copy.deepcopy(DTS_FIRST), "config.json")
    assert document == {
        "rules": [
            {
                "name": "AIcore",
                "level": "series",
                "when": {"called_ae": "(?-i:^AICORE1$)"},
                "settle": 16,
                "run": {"command": ["echo", "triggered this service", "@StudyInstanceUID@", "{input}", "{task}"]},
            }
        ],
        "destinations": {"FIONA": {"ae_title": "FIONA", "host": "fiona.ihelse.net", "port": 7280}},
    }
    text = "\n".join(warnings)
    for part in [
        "config.json: logging: DTS's external SQL logging database",
        "config.json: stream AIcore: trigger-study[0] (type 'send'): DTS runs only exec actions",
        "config.json: stream AIcore: destination: no action passes @destination@",
        "config.json: stream AIcore: destination[0].filter: DTS's code never applies it",
        "config.json: stream AIcore: @StudyInstanceUID@: no such argument here",
        "config.json: stream AIcore: trigger-study: DTS runs it once per whole study",
    ]:
        assert part in text
    (rule,) = _parses(document).rules
    assert rules.explain(rule, {"called_ae": "AICORE1", "calling_ae": "FIONA"}, 1) == []
    for other in ("aicore1", "XAICORE1", "AICORE12"):  # re.match: anchored, case-sensitive
        assert rules.explain(rule, {"called_ae": other}, 1) != []


def test_dts_current_config_chains_its_actions_and_names_the_ror_pipeline() -> None:
    document, warnings = from_dts(copy.deepcopy(DTS_NOW), "config.json")
    (rule,) = document["rules"]
    assert rule["send_to"] == ["DICOM_QR_SCP"]
    assert document["destinations"] == {
        "DICOM_QR_SCP": {"ae_title": "DICOM_QR_SCP", "host": "sectradcmimport.ihelse.net", "port": 7280}
    }
    sh, flag, script = rule["run"]["command"]
    assert (sh, flag) == ("sh", "-c")
    assert script.startswith(
        "echo 'triggered this service' @StudyInstanceUID@ @SeriesInstanceUID@ '{input}'; mkdir -p "
    )
    assert (
        "/pullSelect.sh /data/site/archive/@StudyInstanceUID@ /data/proc/@StudyInstanceUID@/select.statement AIcore;"
        in script
    )
    assert script.endswith("; chmod -R 777 /data/proc/@StudyInstanceUID@")
    text = "\n".join(warnings)
    assert "SELECT statement ('series named ...' clauses in select_statements.json)" in text
    assert "trigger-study: 8 exec actions in one sh -c" in text
    assert "calling AE title AICORE1" in text
    _parses(document)


def test_dts_study_and_series_actions_unknown_keys_and_bad_patterns() -> None:
    config = copy.deepcopy(DTS_FIRST)
    stream = config["Streams"][0]
    stream["trigger"] = {"AETitleCalled": "AI|ROUTE", "AETitleCaller": "[", "Modality": "MR"}
    stream["trigger-series"] = [{"type": "exec", "cmd": ["/opt/seg.sh", "@PATH@", "@destination@"]}]
    stream["cron"] = "*/1 * * * *"
    stream["destination"].append({"AETitle": "ARCHIVE", "IP": "10.0.0.9", "PORT": 104})
    document, warnings = from_dts(config, "c.json")
    assert [r["name"] for r in document["rules"]] == ["AIcore-study", "AIcore-series"]
    assert document["rules"][1]["when"] == {"called_ae": "(?-i:^(?:AI|ROUTE))"}
    assert document["rules"][1]["run"] == {"command": ["/opt/seg.sh", "{input}", "@destination@"]}
    assert document["rules"][1]["send_to"] == ["FIONA"]
    text = "\n".join(warnings)
    assert "c.json: stream AIcore: cron: not a field of a data-transfer-station stream; not carried over" in text
    assert "c.json: stream AIcore: trigger.Modality: DTS ignores keys other than AETitleCalled" in text
    assert "c.json: stream AIcore: trigger.AETitleCaller '[': not a regular expression" in text
    assert "destination[1] (ARCHIVE): DTS's runner sends to the first destination only" in text
    parsed = _parses(document)
    assert rules.explain(parsed.rules[1], {"called_ae": "ROUTE_A"}, 1) == []
    assert rules.explain(parsed.rules[1], {"called_ae": "MY_AI"}, 1) != []


ALL_INPUTS = [
    ("isdn", [ISDN1]),
    ("isdn", [ISDN2]),
    ("isdn", [ISDN1, ISDN2, {**ISDN1, "scus": [], "exclude_regex": ""}]),
    ("dts", [DTS_FIRST]),
    ("dts", [DTS_NOW]),
]


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oxidicom-py")
    sub = parser.add_subparsers(dest="command", required=True)
    actions = sub.add_parser("rules").add_subparsers(dest="rules_command", required=True)
    add_import_parser(actions)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize(("kind", "inputs"), ALL_INPUTS)
def test_the_command_prints_yaml_our_loader_accepts(
    kind: str, inputs: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for i, data in enumerate(inputs):
        files.append(tmp_path / f"in{i}.json")
        files[-1].write_text(json.dumps(data))
    assert _main(["rules", "import", kind, *map(str, files)]) == 0
    out, err = capsys.readouterr()
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert header[0] == f"# converted by oxidicom-py rules import {kind} from: {', '.join(map(str, files))}"
    warnings = [line.removeprefix("# warning: ") for line in header[1:]]
    assert err.splitlines() == [f"oxidicom-py: warning: {w}" for w in warnings]
    loaded = rules.parse(out, "stdout")
    if kind == "dts":
        assert yaml.safe_load(out) == from_dts(inputs[0], str(files[0]))[0]
    else:
        assert len(loaded.rules) == sum(len(d) if isinstance(d, list) else 1 for d in inputs)


@pytest.mark.parametrize(
    ("kind", "text", "what"),
    [
        ("isdn", ISDN1_EXAMPLE, "not JSON: Expecting property name enclosed in double quotes (line 2, column 25)"),
        (
            "isdn",
            ISDN1_EXAMPLE.replace(" # Matches everything", "").replace(" # Matches nothing", ""),
            "scus[1]: AE title 'DICOM_ENDPOINT_AE': not an AE title (1 to 16 characters; pynetdicom refuses it)",
        ),
        (
            "isdn",
            json.dumps({**ISDN1, "scus": [{"scu_ip": "127.0.0.1", "scu_port": "x", "scu_ae_title": "A"}]}),
            "scus[1]: port 'x': not a port number",
        ),
        (
            "isdn",
            json.dumps({**ISDN1, "modality_regex": "MR("}),
            "modality_regex: 'MR(' is not a regular expression (missing ), unterminated subpattern at position 2)",
        ),
        (
            "isdn",
            json.dumps([{k: v for k, v in ISDN1.items() if k != "scus"}]),
            "fingerprint 1: scus: missing or not a list of objects",
        ),
        ("dts", json.dumps({"Streams": {}}), "Streams: missing or not a list of objects"),
        (
            "dts",
            json.dumps({"Streams": [{"name": "x", "trigger": {}, "trigger-study": [{"type": "exec", "cmd": "ls"}]}]}),
            "Streams[0].trigger-study[0].cmd: not a list of texts",
        ),
        ("dts", json.dumps({"Streams": [{"name": "x"}]}), "Streams[0].trigger: missing or not an object"),
    ],
)
def test_an_invalid_input_is_one_line_and_exit_1(
    kind: str, text: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.json"
    path.write_text(text)
    assert _main(["rules", "import", kind, str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: {what}\n"


def test_a_missing_file_is_exit_1_and_no_file_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["rules", "import", "dts", str(tmp_path / "none.json")]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'none.json'}: cannot read it (No such file or directory)\n"
    with pytest.raises(SystemExit) as stopped:
        _main(["rules", "import", "isdn"])
    assert stopped.value.code == 2
