"""The rules file (``OXIDICOM_RULES``): what to run for which complete series or study.

A YAML file, validated by ``rules.schema.json`` (shipped with the package) and by the checks
the schema cannot express (every pattern a valid regular expression, study-level ``select``
only on ``level: study``, ``send_to`` naming a destination). An invalid file is one
:class:`RulesError` naming the file, the line and what is wrong.

Matching: every pattern of ``when`` must be found (``re.search``, case-insensitive) in the
series' value of that tag (or ``calling_ae``/``called_ae``); a missing tag means no match,
never an error; a multi-valued tag (``ImageType``) matches when one of its values does, or the
whole joined with ``\\``; ``unless`` excludes on the same terms; ``min_instances`` counts the
series' instances. :func:`explain` says, for one rule, why it does or does not match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_SETTLE = 10.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 30.0
DEFAULT_TIMEOUT = 3600.0
SENDER = "sender"
"""The destination that means: back to the AE title the series came from."""


class RulesError(ValueError):
    """An invalid rules file; the message is one line: ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True)
class Patterns:
    """Tag -> compiled regular expression (case-insensitive search)."""

    items: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def failures(self, facts: Mapping[str, Any]) -> list[str]:
        """The patterns that do not hold for ``facts``, as readable reasons."""
        out = []
        for tag, pattern in self.items:
            value = facts.get(tag)
            if value is None or value == "":
                out.append(f"{tag} is missing")
            elif not _found(pattern, value):
                out.append(f"{tag} {value!r} does not match /{pattern.pattern}/")
        return out

    def holds(self, facts: Mapping[str, Any]) -> list[str]:
        """The patterns that hold for ``facts`` (for ``unless``)."""
        return [
            f"{tag} {facts[tag]!r} matches /{pattern.pattern}/"
            for tag, pattern in self.items
            if facts.get(tag) not in (None, "") and _found(pattern, facts[tag])
        ]


@dataclass(frozen=True)
class Selector:
    when: Patterns = field(default_factory=Patterns)
    unless: Patterns = field(default_factory=Patterns)
    min_instances: int = 0

    def reasons_against(self, facts: Mapping[str, Any], instances: int) -> list[str]:
        reasons = self.when.failures(facts)
        reasons += [f"unless: {r}" for r in self.unless.holds(facts)]
        if instances < self.min_instances:
            reasons.append(f"{instances} instances, fewer than min_instances {self.min_instances}")
        return reasons


@dataclass(frozen=True)
class Rule:
    name: str
    level: str
    selector: Selector
    roles: Mapping[str, Selector]
    run: Mapping[str, Any] | None
    send_to: tuple[str, ...]
    settle: float
    on_incomplete: str
    on_late: str
    line: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    targets: tuple[Mapping[str, Any], ...] = ()
    """``send_to`` resolved: each destination's settings with its ``name`` (``sender``: the
    address is looked up when the delivery is made)."""
    send_to_origin: bool = False
    """Whether a forward may go back to the AE title the instances came from."""

    @property
    def retries(self) -> int:
        return int((self.run or {}).get("retries", DEFAULT_RETRIES))

    @property
    def backoff(self) -> float:
        return float((self.run or {}).get("backoff", DEFAULT_BACKOFF))

    @property
    def timeout(self) -> float:
        return float((self.run or {}).get("timeout", DEFAULT_TIMEOUT))


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    destinations: Mapping[str, Mapping[str, Any]]
    source: str


def _found(pattern: re.Pattern[str], value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(pattern.search(str(v)) for v in value) or bool(pattern.search("\\".join(map(str, value))))
    return bool(pattern.search(str(value)))


def schema() -> dict[str, Any]:
    text = resources.files("oxidicom_py.processing").joinpath("rules.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def _line_of(node: yaml.Node, path: Sequence[Any]) -> int:
    """The 1-based line of the YAML node at ``path`` (as deep as the path can be followed)."""
    for key in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == key), None)
            if found is None:
                found = next((k for k, _v in node.value if k.value == key), None)
            if found is None:
                break
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node.start_mark.line + 1


def parse(text: str, source: str = "<rules>") -> Rules:
    """The rules of a YAML text; :class:`RulesError` (one line) if it is not a valid rules file."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e)
        raise RulesError(f"{source}:{line}: not valid YAML: {problem}") from None
    if root is None:
        raise RulesError(f"{source}:1: empty file (expected a 'rules:' list)")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        error = errors[0]
        where = "/".join(map(str, error.absolute_path)) or "the file"
        raise RulesError(f"{source}:{_line_of(root, list(error.absolute_path))}: {where}: {error.message}")
    destinations: dict[str, Mapping[str, Any]] = data.get("destinations") or {}
    rules = []
    seen: set[str] = set()
    for i, raw in enumerate(data["rules"]):
        line = _line_of(root, ["rules", i])

        def fail(what: str, *path: Any, line: int = line, i: int = i, name: str = raw["name"]) -> RulesError:
            at = _line_of(root, ["rules", i, *path]) if path else line
            return RulesError(f"{source}:{at}: rule {name!r}: {what}")

        if raw["name"] in seen:
            raise fail("a second rule of that name")
        seen.add(raw["name"])
        level = raw.get("level", "series")
        if "select" in raw and level != "study":
            raise fail("select (roles) needs level: study", "select")
        for target in raw.get("send_to", []):
            if target != SENDER and target not in destinations:
                raise fail(f"send_to names {target!r}, which is not in destinations", "send_to")
        rules.append(
            Rule(
                name=raw["name"],
                level=level,
                selector=_selector(raw, fail),
                roles={role: _selector(spec, fail, "select", role) for role, spec in raw.get("select", {}).items()},
                run=raw.get("run"),
                send_to=tuple(raw.get("send_to", [])),
                settle=float(raw.get("settle", DEFAULT_SETTLE)),
                on_incomplete=raw.get("on_incomplete", "skip"),
                on_late=raw.get("on_late", "log"),
                line=line,
                settings=raw.get("settings", {}),
                targets=tuple(
                    {
                        "name": t,
                        **({} if t == SENDER else destinations[t]),
                        "send_to_origin": bool(raw.get("send_to_origin", False)),
                    }
                    for t in raw.get("send_to", [])
                ),
                send_to_origin=bool(raw.get("send_to_origin", False)),
            )
        )
    return Rules(tuple(rules), destinations, source)


def _selector(raw: Mapping[str, Any], fail: Any, *path: Any) -> Selector:
    def patterns(key: str) -> Patterns:
        items = []
        for tag, text in (raw.get(key) or {}).items():
            try:
                items.append((tag, re.compile(text, re.IGNORECASE)))
            except re.error as e:
                raise fail(f"{key}.{tag}: not a regular expression ({e})", *path, key, tag) from None
        return Patterns(tuple(items))

    return Selector(patterns("when"), patterns("unless"), int(raw.get("min_instances", 0)))


def load(path: Path) -> Rules:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RulesError(f"{path}:1: cannot read the rules file ({e.strerror or e})") from None
    return parse(text, str(path))


def explain(rule: Rule, facts: Mapping[str, Any], instances: int) -> list[str]:
    """Why a series-level ``rule`` does not match the series (empty: it matches)."""
    return rule.selector.reasons_against(facts, instances)


def matching(rules: Rules, facts: Mapping[str, Any], instances: int) -> list[Rule]:
    """The series-level rules a series matches."""
    return [r for r in rules.rules if r.level == "series" and not explain(r, facts, instances)]


def roles_filled(rule: Rule, series: Mapping[str, tuple[Mapping[str, Any], int]]) -> dict[str, str] | None:
    """For a study-level rule: role -> SeriesInstanceUID, one complete series per role (the
    first in UID order that fits), or None while a role has none. ``series``: UID -> (facts,
    instances) of the study's complete series."""
    chosen: dict[str, str] = {}
    for role, selector in rule.roles.items():
        fits = [uid for uid, (facts, n) in sorted(series.items()) if not selector.reasons_against(facts, n)]
        fits = [uid for uid in fits if uid not in chosen.values()]
        if not fits:
            return None
        chosen[role] = fits[0]
    return chosen
