"""Command line: ``oxidicom-py serve`` (the container entrypoint)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from oxidicom_py import settings as settings_mod
from oxidicom_py.telemetry import logs


def _run(coro_factory):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())


def cmd_serve(_args: argparse.Namespace) -> int:
    try:
        s = settings_mod.load()
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    logs.configure(s.log_level)
    log = logging.getLogger("oxidicom_py.cli")
    for name in settings_mod.unknown_variables():
        log.warning("unknown variable %s is ignored (typo?)", name)
    from oxidicom_py import service

    try:
        return int(_run(lambda: service.serve(s)))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        log.critical("start-up failed: %s", e, exc_info=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oxidicom-py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="receive DICOM (C-STORE, C-ECHO); configured by OXIDICOM_* variables")
    serve.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
