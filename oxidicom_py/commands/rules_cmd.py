"""``oxidicom-py rules check FILE`` validates a rules file the way ``serve`` will read it;
``oxidicom-py rules test FILE --series UID`` (or ``--study UID``) says, for series already
received, which rules match and why the others do not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import psycopg

from oxidicom_py import settings as settings_mod
from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.processing import rules
from oxidicom_py.processing.facts import header_facts
from oxidicom_py.registry.schema import PACS_TABLE, PACSFILE_TABLE

_SERIES = f"""
SELECT p.identifier, f."SeriesInstanceUID", f."StudyInstanceUID", count(*), min(f.fname)
FROM {PACSFILE_TABLE} f JOIN {PACS_TABLE} p ON p.id = f.pacs_id
WHERE (f."SeriesInstanceUID" = ANY(%s) OR f."StudyInstanceUID" = ANY(%s)) AND p.identifier <> %s
GROUP BY p.identifier, f."SeriesInstanceUID", f."StudyInstanceUID"
ORDER BY p.identifier, f."StudyInstanceUID", f."SeriesInstanceUID"
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("rules", help="check a processing rules file, or test it on received series")
    actions = p.add_subparsers(dest="rules_command", required=True)
    check = actions.add_parser("check", help="validate FILE; exit 0 if valid, 1 with FILE:LINE: reason if not")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check)
    test = actions.add_parser("test", help="which rules of FILE match received series, and why the others do not")
    test.add_argument("file", type=Path)
    test.add_argument("--series", action="append", default=[], metavar="UID")
    test.add_argument("--study", action="append", default=[], metavar="UID")
    test.set_defaults(func=cmd_test)
    from oxidicom_py.commands.rules_import import add_import_parser

    add_import_parser(actions)
    return p


def cmd_check(args: argparse.Namespace) -> int:
    try:
        loaded = rules.load(args.file)
    except rules.RulesError as e:
        print(f"oxidicom-py: {e}", file=sys.stderr)
        return 1
    names = ", ".join(r.name for r in loaded.rules) or "none"
    print(f"{args.file}: valid: {len(loaded.rules)} rules ({names}), {len(loaded.destinations)} destinations")
    return 0


def facts_of(path: Path, pacs: str) -> dict[str, Any]:
    """The tags a rule may name, as the series' first stored instance has them."""
    return {**header_facts(path), "calling_ae": pacs}


def cmd_test(args: argparse.Namespace) -> int:
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri

    if not args.series and not args.study:
        print("oxidicom-py: rules test needs --series UID or --study UID", file=sys.stderr)
        return 2
    try:
        loaded = rules.load(args.file)
        s = settings_mod.load()
        with psycopg.connect(database_uri(s), connect_timeout=10) as conn:
            found = conn.execute(_SERIES, (args.series, args.study, MARKER_PACS)).fetchall()
    except rules.RulesError as e:
        print(f"oxidicom-py: {e}", file=sys.stderr)
        return 1
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except (DatabaseUnavailableError, psycopg.Error) as e:
        print(f"oxidicom-py: database: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 4
    if not found:
        print("no received series matches the selection")
        return 1
    studies: dict[str, dict[str, tuple[dict[str, Any], int]]] = {}
    for pacs, series, study, count, fname in found:
        facts = facts_of(s.files_root / fname, pacs)
        studies.setdefault(study, {})[series] = (facts, count)
        described = f"{facts.get('Modality', '?')} {facts.get('SeriesDescription', '')!r}"
        print(f"series {series} from {pacs}: {count} instances, {described}")
        for rule in loaded.rules:
            if rule.level != "series":
                continue
            reasons = rules.explain(rule, facts, count)
            print(
                f"  {'match' if not reasons else 'no   '} {rule.name}" + (f": {'; '.join(reasons)}" if reasons else "")
            )
    for study, series in studies.items():
        for rule in loaded.rules:
            if rule.level == "study":
                filled = rules.roles_filled(rule, series)
                roles = ", ".join(f"{role}={uid}" for role, uid in filled.items()) if filled else ""
                print(
                    f"study {study}: {'match' if filled else 'no   '} {rule.name}"
                    + (f": {roles}" if filled else ": a role has no series")
                )
    return 0
