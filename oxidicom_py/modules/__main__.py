"""``python -m oxidicom_py.modules NAME``: run one example module (exit code 2 for a wrong command line)."""

from __future__ import annotations

import sys

from oxidicom_py.modules import MODULES, UnknownModule, run

USAGE_EXIT = 2  # as argparse: a wrong command line


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(f"usage: python -m oxidicom_py.modules {{{','.join(sorted(MODULES))}}}", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else USAGE_EXIT
    try:
        return run(args[0])
    except UnknownModule as e:
        print(f"oxidicom_py.modules: {e}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
