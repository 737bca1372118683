"""``oxidicom-py rules import isdn FILE...`` / ``rules import dts FILE``: another DICOM node's
routing configuration as a rules file (YAML on stdout; what could not be carried over as ``#``
lines before it and on stderr). Exit codes: 0 converted, 1 an input file is invalid (one line
``FILE: what is wrong``), 2 usage.

* ``isdn``: InferenceServer DICOM node fingerprints (github.com/mathiser/inference_server_dicom_node):
  1.x JSON files (``modality_regex`` ..., ``exclude_regex``, ``scus``) as series-level rules;
  2.x fingerprints as its API lists them (``triggers``, ``destinations``) as study-level rules
  with one ``select`` role per trigger (its case-sensitive substrings as ``(?-i:...)`` literals).
* ``dts``: a data-transfer-station ``config.json`` (github.com/HaukeBartsch/data-transfer-station):
  one rule per stream and action list; its ``re.match`` AE title patterns as ``(?-i:^...)``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from oxidicom_py.processing import rules

ISDN_TIMEOUT = 3600
_ANYTHING = frozenset({"", ".*", "^.*", ".*$", "^.*$", "(.*)"})
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_V1_TAGS = (
    ("modality_regex", "Modality"),
    ("series_description_regex", "SeriesDescription"),
    ("study_description_regex", "StudyDescription"),
    ("sop_class_uid_regex", "SOPClassUID"),
)
_V1_DEFAULTS = {**{key: "" for key, _ in _V1_TAGS}, "exclude_regex": "a^"}
_V1_KEYS = {*_V1_DEFAULTS, "inference_server_url", "model_human_readable_id", "scus"}
_V2_KEYS = {
    *("id", "timestamp", "version", "description", "inference_server_url", "human_readable_id", "triggers"),
    *("destinations", "delete_remotely", "delete_locally", "trigger_associations", "destination_associations"),
}
_V2_TRIGGER = {"study_description_pattern", "series_description_pattern", "sop_class_uid_exact", "exclude_pattern"}
_V2_UNLESS = ("SOPClassUID", "SeriesDescription", "StudyDescription")
_V2_WHEN = (("study_description_pattern", "StudyDescription"), ("series_description_pattern", "SeriesDescription"))
_DTS_TOP = {"arrived", "raw", "archive", "timeout", "log", "logging", "Streams"}
_DTS_STREAM = {"log", "name", "description", "trigger", "destination", "trigger-study", "trigger-series"}
_DTS_AE = {"AETitleCalled": "called_ae", "AETitleCaller": "calling_ae"}
_DTS_ROR = {"ror", "pullSelect.sh", "addJob.sh"}

_W = {
    "unknown": "{key}: not a field of {what}; not carried over",
    "default": "no {key}: IS-DN 1.x's loader skips such a file; taken as its default {value!r}",
    "none": "{key} {value!r}: IS-DN finds it in the text 'None' where the tag is missing; a missing tag never matches",
    "exclude": "exclude_regex: IS-DN excludes if found in Modality, SeriesDescription, StudyDescription or SOPClassUID",
    "exclude-all": "{key} {value!r} excludes every series: IS-DN never ran it, neither will the rule",
    "url1": "inference_server_url {value!r}: IS-DN 1.x posted to it as it is; the http runner adds /api/tasks/",
    "url2": "inference_server_url {value!r}: IS-DN 2.x drops its path (it joins /api/tasks/ to it); so does the rule",
    "no-targets": "no {key}: the results go nowhere, as in IS-DN",
    "uid-bug": "IS-DN 2.x's fingerprint.py compares series_description_pattern and exclude_pattern with the "
    "SeriesInstanceUID, not the SeriesDescription; converted as the SeriesDescription the names mean",
    "no-triggers": "no triggers: IS-DN never fires this fingerprint; not converted",
    "v1-group": "it posts what one patient sent with the same StudyDescription, SeriesDescription, Modality and "
    "SOPClassUID once POST_AFTER seconds pass without more; the rules run per series, once it is complete",
    "v1-protocol": "it speaks InferenceServer 1's protocol (a zip posted with model_human_readable_id); the http "
    "runner speaks InferenceServer 2's (a tar posted to /api/tasks/ with human_readable_id)",
    "v2-group": "a fingerprint fires when each trigger matches a series of one association (one series may match "
    "several) and uploads every series of that SOP Class; here once per study, a different series per select role, "
    "and the job gets those series only",
    "timeout1": f"it waited GET_TIMEOUT seconds (86400 by default) for results; run.timeout is {ISDN_TIMEOUT}",
    "timeout2": f"it waited TIMEOUT seconds (7200 by default) for results; run.timeout is {ISDN_TIMEOUT}",
    "tls": "it checked TLS against CERT_FILE; set run.http.verify_tls to that bundle if the system trusts no such CA",
    "settle": "timeout {value}: DTS waits that long without new files to trigger; here settle, a wait after an end",
    "logging": "logging: DTS's external SQL logging database; not carried over (ours: logs, metrics, traces)",
    "path": "@PATH@ became {{input}}: input/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, not DTS's raw folder layout",
    "description": "@DESCRIPTION@ (DTS's data.json) became {{task}} (our task.json, other fields)",
    "left": "{key}: no such argument here (UIDs: task.json's study_uid and roles; destinations: send_to); left as is",
    "ror": "the actions drive DTS's ror pipeline (ror, /pullSelect.sh, /addJob.sh; cron starts runOneJob.sh, which "
    "runs the job): its SELECT statement ('series named ...' clauses in select_statements.json) and docker image are "
    "not carried over: write them as level: study with select roles and run: {{container: {{image: ...}}}}",
    "trigger-key": "trigger.{key}: DTS ignores keys other than AETitleCalled and AETitleCaller; so does the rule",
    "bad-regex": "trigger.{key} {value!r}: not a regular expression, which DTS ignores; so does the rule",
    "filter": "{key}.filter: DTS's code never applies it; not carried over",
    "sent": "destination {value}: DTS's runner sends the job's output folder there (only with an output.json) with "
    "the calling AE title AICORE1 (fixed in runOneJob.sh); set its calling_ae if the peer checks it",
    "not-first": "{key} ({value}): DTS's runner sends to the first destination only; not in send_to",
    "unused": "destination: no action passes @destination@, so DTS sends nothing there; not in send_to",
    "idle": "no trigger-study or trigger-series action: DTS does nothing for it; not converted",
    "not-exec": "{key} (type {value!r}): DTS runs only exec actions with a cmd; not carried over",
    "chain": "{key}: {value} exec actions in one sh -c; DTS ignores their exit codes, here the last one's counts",
    "study": "trigger-study: DTS runs it once per whole study; here once per series (study level needs select roles)",
}


class InputError(ValueError):
    """An input its own program would not accept either; ``str()`` is ``SOURCE: what is wrong``."""

    def __init__(self, source: str, what: str) -> None:
        super().__init__(f"{source}: {what}")


class _Doc:
    """The rules document being built, and what could not be carried over."""

    def __init__(self) -> None:
        self.rules: list[dict[str, Any]] = []
        self.destinations: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self._addresses: dict[tuple[str, str, int], str] = {}

    def warn(self, source: str, note: str, **values: Any) -> None:
        line = f"{source}: {_W[note].format(**values)}"
        if line not in self.warnings:
            self.warnings.append(line)

    def name(self, wanted: str) -> str:
        base = _NAME_BAD.sub("-", wanted).strip("-._")[:64] or "rule"
        taken, name, n = {r["name"] for r in self.rules}, base, 1
        while name in taken:
            n += 1
            name = f"{base[: 63 - len(str(n))]}-{n}"
        return name

    def destination(self, source: str, ae_title: Any, host: Any, port: Any) -> str:
        if not isinstance(ae_title, str) or not 1 <= len(ae_title.strip()) <= 16:
            raise InputError(
                source, f"AE title {ae_title!r}: not an AE title (1 to 16 characters; pynetdicom refuses it)"
            )
        if not isinstance(host, str) or not host.strip():
            raise InputError(source, f"host {host!r}: not a host name or address")
        number = int(port) if isinstance(port, int | str) and str(port).strip().isdigit() else 0
        if not 1 <= number <= 65535:
            raise InputError(source, f"port {port!r}: not a port number")
        key = (ae_title.strip(), host.strip(), number)
        if key not in self._addresses:
            name, n = key[0], 1
            while name in self.destinations or name == rules.SENDER:
                n += 1
                name = f"{key[0]}-{n}"
            self.destinations[name] = {"ae_title": key[0], "host": key[1], "port": number}
            self._addresses[key] = name
        return self._addresses[key]

    def add(self, name: str, **fields: Any) -> None:
        """A rule named after ``name`` (made valid and unique), without its empty fields."""
        self.rules.append({"name": self.name(name), **{k: v for k, v in fields.items() if v not in (None, {}, [])}})

    def result(self) -> tuple[dict[str, Any], list[str]]:
        document: dict[str, Any] = {"rules": self.rules}
        if self.destinations:
            document["destinations"] = self.destinations
        return document, self.warnings


def _text(source: str, raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise InputError(source, f"{key}: missing" if value is None else f"{key}: {value!r} is not a text")
    return value


def _regex(source: str, key: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise InputError(source, f"{key}: {pattern!r} is not a regular expression ({e})") from None


def _records(source: str, raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise InputError(source, f"{key}: missing or not a list of objects")
    return value


def _unknown(doc: _Doc, source: str, raw: Mapping[str, Any], known: set[str], what: str) -> None:
    for key in raw:
        if key not in known:
            doc.warn(source, "unknown", key=key, what=what)


def _http_url(source: str, url: str) -> tuple[str, str]:
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise InputError(source, f"inference_server_url {url!r}: not an http:// or https:// address")
    return f"{split.scheme}://{split.netloc}", split.path


def from_isdn(fingerprints: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    """IS-DN fingerprints, each with where it comes from, as a rules document and its warnings."""
    doc, versions = _Doc(), set()
    for source, fp in fingerprints:
        if not isinstance(fp, Mapping):
            raise InputError(source, "a fingerprint is a JSON object")
        version = 2 if "triggers" in fp or "human_readable_id" in fp else 1
        versions.add(version)
        (_isdn2 if version == 2 else _isdn1)(doc, source, fp)
    for version in sorted(versions):
        for note in ("v1-group", "v1-protocol", "timeout1") if version == 1 else ("v2-group", "timeout2"):
            doc.warn(f"IS-DN {version}.x", note)
    if any(r["run"]["http"]["url"].startswith("https:") for r in doc.rules):
        doc.warn("IS-DN", "tls")
    return doc.result()


def _targets(doc: _Doc, source: str, fp: Mapping[str, Any], key: str) -> list[str]:
    names = [
        doc.destination(f"{source}: {key}[{i}]", scu.get("scu_ae_title"), scu.get("scu_ip"), scu.get("scu_port"))
        for i, scu in enumerate(_records(source, fp, key), 1)
    ]
    if not names:
        doc.warn(source, "no-targets", key=key)
    return list(dict.fromkeys(names))


def _isdn1(doc: _Doc, source: str, fp: Mapping[str, Any]) -> None:
    url, model = _text(source, fp, "inference_server_url"), _text(source, fp, "model_human_readable_id")
    _unknown(doc, source, fp, _V1_KEYS, "an IS-DN 1.x fingerprint")
    for key, value in _V1_DEFAULTS.items():
        if key not in fp:
            doc.warn(source, "default", key=key, value=value)
    when: dict[str, str] = {}
    for key, tag in _V1_TAGS:
        text = _text(source, fp, key, _V1_DEFAULTS[key])
        if _regex(source, key, text).search("None") and text.strip() not in _ANYTHING:
            doc.warn(source, "none", key=key, value=text)
        if text.strip() not in _ANYTHING:
            when[tag] = text
    exclude = _text(source, fp, "exclude_regex", "a^")
    pattern = _regex(source, "exclude_regex", exclude)
    unless = {} if exclude == "a^" else {tag: exclude for _, tag in _V1_TAGS}
    if unless:
        doc.warn(source, "exclude")
        if pattern.search(""):
            doc.warn(source, "exclude-all", key="exclude_regex", value=exclude)
        elif pattern.search("None"):
            doc.warn(source, "none", key="exclude_regex", value=exclude)
    _http_url(source, url)
    endpoint = re.match(r"^(.*?)/api/tasks/?$", url)
    if not endpoint:
        doc.warn(source, "url1", value=url)
    run = {"http": {"url": endpoint.group(1) if endpoint else url.rstrip("/"), "model": model}, "timeout": ISDN_TIMEOUT}
    doc.add(model, level="series", when=when, unless=unless, run=run, send_to=_targets(doc, source, fp, "scus"))


def _role(doc: _Doc, where: str, trigger: Mapping[str, Any]) -> dict[str, Any]:
    _unknown(doc, where, trigger, _V2_TRIGGER | {"id", "timestamp"}, "an IS-DN 2.x trigger")
    values = {key: trigger.get(key) for key in _V2_TRIGGER}
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise InputError(where, f"{key}: {value!r} is not a text")
    when: dict[str, str] = {}
    if values["sop_class_uid_exact"] is not None:
        when["SOPClassUID"] = "^" + re.escape(values["sop_class_uid_exact"]) + "$"
    for key, tag in _V2_WHEN:
        if values[key]:
            when[tag] = f"(?-i:{re.escape(values[key])})"
            if values[key] in "None":
                doc.warn(where, "none", key=key, value=values[key])
    role: dict[str, Any] = {"when": when} if when else {}
    exclude = values["exclude_pattern"]
    if exclude is not None:
        role["unless"] = {tag: f"(?-i:{re.escape(exclude)})" for tag in _V2_UNLESS}
        if not exclude:
            doc.warn(where, "exclude-all", key="exclude_pattern", value=exclude)
    if values["series_description_pattern"] or exclude is not None:
        doc.warn(where, "uid-bug")
    return role


def _isdn2(doc: _Doc, source: str, fp: Mapping[str, Any]) -> None:
    url, model = _text(source, fp, "inference_server_url"), _text(source, fp, "human_readable_id")
    _unknown(doc, source, fp, _V2_KEYS, "an IS-DN 2.x fingerprint")
    base, path = _http_url(source, url)
    if path not in ("", "/"):
        doc.warn(source, "url2", value=url)
    triggers = _records(source, fp, "triggers")
    select = {f"trigger-{i}": _role(doc, f"{source}: triggers[{i}]", t) for i, t in enumerate(triggers, 1)}
    if not select:
        doc.warn(source, "no-triggers")
        return
    http = {"url": base, "model": model, **({"delete_remote": False} if fp.get("delete_remotely") is False else {})}
    send_to = _targets(doc, source, {"destinations": [], **fp}, "destinations")
    doc.add(model, level="study", select=select, run={"http": http, "timeout": ISDN_TIMEOUT}, send_to=send_to)


def from_dts(config: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """A data-transfer-station ``config.json`` as a rules document and its warnings."""
    doc = _Doc()
    if not isinstance(config, Mapping):
        raise InputError(source, "a data-transfer-station config.json is a JSON object")
    streams = _records(source, config, "Streams")
    _unknown(doc, source, config, _DTS_TOP, "a data-transfer-station config.json")
    settle = config.get("timeout")
    if settle is not None and (isinstance(settle, bool) or not isinstance(settle, int | float) or settle < 0):
        raise InputError(source, f"timeout: {settle!r} is not a number of seconds")
    if settle is not None:
        doc.warn(source, "settle", value=settle)
    if config.get("logging"):
        doc.warn(source, "logging")
    for i, stream in enumerate(streams):
        _stream(doc, source, f"Streams[{i}]", stream, settle)
    return doc.result()


def _translate(doc: _Doc, where: str, cmd: list[str], stream: str) -> list[str]:
    out = []
    for arg in cmd:
        arg = arg.replace("@StreamName@", stream)
        for theirs, ours, note in (("@PATH@", "{input}", "path"), ("@DESCRIPTION@", "{task}", "description")):
            if theirs in arg:
                arg = arg.replace(theirs, ours)
                doc.warn(where, note)
        for left in sorted(set(re.findall(r"@(?:StudyInstanceUID|SeriesInstanceUID|destination)@", arg))):
            doc.warn(where, "left", key=left)
        out.append(arg)
    if cmd[0].rsplit("/", 1)[-1] in _DTS_ROR:
        doc.warn(where, "ror")
    return out


def _when(doc: _Doc, source: str, at: str, where: str, trigger: Mapping[str, Any]) -> dict[str, str]:
    when: dict[str, str] = {}
    for key, value in trigger.items():
        if key not in _DTS_AE:
            doc.warn(where, "trigger-key", key=key)
            continue
        if not isinstance(value, str):
            raise InputError(source, f"{at}.trigger.{key}: {value!r} is not a text")
        try:
            re.compile(value)
        except re.error:
            doc.warn(where, "bad-regex", key=key, value=value)
            continue
        if value.strip() not in _ANYTHING:  # re.match: start-anchored, case-sensitive; ours: search, case-insensitive
            when[_DTS_AE[key]] = (
                f"(?-i:{value})" if value.startswith("^") and "|" not in value else f"(?-i:^(?:{value}))"
            )
    return when


def _stream(doc: _Doc, source: str, at: str, stream: Mapping[str, Any], settle: float | None) -> None:
    name = _text(f"{source}: {at}", stream, "name")
    where = f"{source}: stream {name}"
    trigger = stream.get("trigger")
    if not isinstance(trigger, Mapping):
        raise InputError(source, f"{at}.trigger: missing or not an object")
    _unknown(doc, where, stream, _DTS_STREAM, "a data-transfer-station stream")
    when = _when(doc, source, at, where, trigger)
    lists = {key: _records(f"{source}: {at}", {key: [], **stream}, key) for key in ("trigger-study", "trigger-series")}
    used = any("@destination@" in str(a.get("cmd")) for actions in lists.values() for a in actions)
    send_to: list[str] = []
    for j, dest in enumerate(_records(source, stream, "destination") if "destination" in stream else []):
        key = f"destination[{j}]"
        target = doc.destination(f"{source}: {at}.{key}", dest.get("AETitle"), dest.get("IP"), dest.get("PORT"))
        if dest.get("filter"):
            doc.warn(where, "filter", key=key)
        if used and not send_to:
            send_to.append(target)
            doc.warn(where, "sent", value=target)
        elif used:
            doc.warn(where, "not-first", key=key, value=target)
        else:
            doc.warn(where, "unused")
    kinds = [key for key, actions in lists.items() if actions]
    if not kinds:
        doc.warn(where, "idle")
    for key in kinds:
        commands = []
        for j, action in enumerate(lists[key]):
            cmd = action.get("cmd")
            if action.get("type") != "exec" or cmd is None:
                doc.warn(where, "not-exec", key=f"{key}[{j}]", value=action.get("type"))
                continue
            if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
                raise InputError(source, f"{at}.{key}[{j}].cmd: not a list of texts")
            commands.append(_translate(doc, where, cmd, name))
        if not commands:
            continue
        if len(commands) > 1:
            doc.warn(where, "chain", key=key, value=len(commands))
        if key == "trigger-study":
            doc.warn(where, "study")
        command = commands[0] if len(commands) == 1 else ["sh", "-c", "; ".join(shlex.join(c) for c in commands)]
        rule_name = name if len(kinds) == 1 else f"{name}-{key[8:]}"
        doc.add(rule_name, level="series", when=when, settle=settle, run={"command": command}, send_to=send_to)


def add_import_parser(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("import", help="convert another DICOM node's routing configuration to a rules file (stdout)")
    formats = p.add_subparsers(dest="import_format", required=True)
    isdn = formats.add_parser("isdn", help="IS-DN fingerprint JSON files; exit 0 converted, 1 with FILE: reason")
    isdn.add_argument("files", nargs="+", type=Path, metavar="FILE")
    isdn.set_defaults(func=cmd_import_isdn)
    dts = formats.add_parser("dts", help="a data-transfer-station config.json; exit 0 converted, 1 with FILE: reason")
    dts.add_argument("file", type=Path, metavar="FILE")
    dts.set_defaults(func=cmd_import_dts)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(path), f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise InputError(str(path), f"not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def _command(kind: str, sources: list[Path], convert: Callable[[], tuple[dict[str, Any], list[str]]]) -> int:
    try:
        document, warnings = convert()
    except InputError as e:
        print(e, file=sys.stderr)
        return 1
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1_000_000)
    try:
        rules.parse(text, "<converted>")
    except rules.RulesError as e:
        print(f"oxidicom-py: the converted rules are not valid (a bug): {e}", file=sys.stderr)
        return 1
    header = [f"# converted by oxidicom-py rules import {kind} from: {', '.join(map(str, sources))}"]
    header += [f"# warning: {w}" for w in warnings]
    for w in warnings:
        print(f"oxidicom-py: warning: {w}", file=sys.stderr)
    sys.stdout.write("\n".join(header) + "\n" + text)
    return 0


def _fingerprints(paths: list[Path]) -> tuple[dict[str, Any], list[str]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        data = _read_json(path)
        found += (
            [(f"{path}: fingerprint {i}", fp) for i, fp in enumerate(data, 1)]
            if isinstance(data, list)
            else [(str(path), data)]
        )
    return from_isdn(found)


def cmd_import_isdn(args: argparse.Namespace) -> int:
    return _command("isdn", args.files, lambda: _fingerprints(args.files))


def cmd_import_dts(args: argparse.Namespace) -> int:
    return _command("dts", [args.file], lambda: from_dts(_read_json(args.file), str(args.file)))
