"""``oxidicom-py rules check FILE``: validate a rules file the way ``serve`` will read it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from oxidicom_py.processing import rules


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("rules", help="check a processing rules file (OXIDICOM_RULES)")
    actions = p.add_subparsers(dest="rules_command", required=True)
    check = actions.add_parser("check", help="validate FILE; exit 0 if valid, 1 with FILE:LINE: reason if not")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check)
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
