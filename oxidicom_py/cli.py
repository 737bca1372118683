"""Command line: ``oxidicom-py serve`` (the container entrypoint)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from oxidicom_py import settings as settings_mod
from oxidicom_py.telemetry import logs, multiproc, tracing

T = TypeVar("T")


def _run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
    return uvloop.run(coro_factory())  # type: ignore[arg-type]


def _settings() -> settings_mod.Settings | None:
    try:
        return settings_mod.load()
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return None


def cmd_serve(_args: argparse.Namespace) -> int:
    s = _settings()
    if s is None:
        return 2
    logs.configure(s.log_level)
    log = logging.getLogger("oxidicom_py.cli")
    for name in settings_mod.unknown_variables():
        log.warning("unknown variable %s is ignored (typo?)", name)
    # Before anything imports prometheus_client: with an endpoint, every process (workers
    # inherit the variable) keeps its values where the endpoint can sum them.
    os.environ.pop(multiproc.ENV, None)
    metrics_folder = multiproc.enable() if s.metrics_port is not None else None
    tracing.configure({"oxidicom.role": "supervisor" if s.listener_processes > 1 else "receiver"})
    from oxidicom_py import app, runtime
    from oxidicom_py.net import tls
    from oxidicom_py.processing import rules

    if s.rules is not None:
        try:  # an invalid rules file stops start-up with one line, as any bad setting does
            rules.load(s.rules)
        except rules.RulesError as e:
            print(f"oxidicom-py: configuration error: OXIDICOM_RULES: {e}", file=sys.stderr)
            return 2

    def serve() -> Awaitable[int]:
        """One process, or a supervisor and its workers: the only place that chooses."""
        tls.server_context(s)  # a bad certificate or key stops start-up here, before anything runs
        if s.listener_processes > 1:
            from oxidicom_py.supervisor import Supervisor

            return Supervisor(s, app.PoolTarget(s)).run()
        return app.serve_single(s)

    try:
        return int(_run(serve))
    except KeyboardInterrupt:
        return 130
    except settings_mod.SettingsError as e:  # found while starting (e.g. a TLS key that does not fit)
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except runtime.StartupError as e:
        log.critical("start-up failed: %s", e)
        return 1
    except Exception as e:
        log.critical("start-up failed: %s", e, exc_info=True)
        return 1
    finally:
        tracing.shutdown()
        if metrics_folder is not None:
            multiproc.remove(metrics_folder)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker if the supervisor dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    """One listener process of the pool (started by the supervisor, not by hand)."""
    _die_with_parent()
    s = _settings()
    if s is None or s.db_connection is None:
        return 2
    logs.configure(s.log_level, static={"worker": args.index})
    log = logging.getLogger("oxidicom_py.worker")
    tracing.configure({"oxidicom.role": "worker", "oxidicom.worker": args.index})
    from oxidicom_py import app, runtime
    from oxidicom_py.net.slots import SharedAssociationSlots
    from oxidicom_py.storage.writer import worker_staging

    sock = socket.socket(fileno=args.listen_fd)
    sock.setblocking(False)

    def ready(_worker: object) -> None:
        os.write(args.ready_fd, bytes((args.index,)))

    try:
        clean = _run(
            lambda: app.run_worker(
                s,
                s.db_connection or "",
                sock,
                app.WorkerShare(
                    args.db_pool,
                    args.max_associations,
                    SharedAssociationSlots(args.slots_fd, args.index, args.workers, args.max_associations)
                    if args.slots_fd >= 0
                    else None,
                    runtime.worker_balance(args.slots_fd, args.index, args.workers) if args.slots_fd >= 0 else None,
                    worker_staging(args.index),
                ),
                on_ready=ready,
            )
        )
    except Exception as e:
        log.critical("worker failed: %s", e, exc_info=True)
        return 1
    log.info("worker stopped", extra={"clean": clean})
    return 0 if clean else 1


def cmd_module(args: argparse.Namespace) -> int:
    from oxidicom_py.modules import run

    return int(run(args.name))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("oxidicom_py")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oxidicom-py", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{serve,migrate,watch,rules,process,jobs,deliveries,module}"
    )
    serve = sub.add_parser("serve", help="receive DICOM (C-STORE, C-ECHO); configured by OXIDICOM_* variables")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker")  # internal: started by the supervisor; not listed in --help
    worker.add_argument("--listen-fd", type=int, required=True)
    worker.add_argument("--ready-fd", type=int, required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--db-pool", type=int, required=True)
    worker.add_argument("--max-associations", type=int, required=True)
    worker.add_argument("--slots-fd", type=int, default=-1, help="shared association slots (see net/slots.py)")
    worker.add_argument("--workers", type=int, default=1)
    worker.set_defaults(func=cmd_worker)
    from oxidicom_py.commands import (
        console_cmd,
        deliveries_cmd,
        jobs_cmd,
        migrate_cmd,
        process_cmd,
        rules_cmd,
        watch,
    )

    watch.add_parser(sub)
    rules_cmd.add_parser(sub)
    process_cmd.add_parser(sub)
    jobs_cmd.add_parser(sub)
    deliveries_cmd.add_parser(sub)
    migrate_cmd.add_parser(sub)
    console_cmd.add_parser(sub)
    module = sub.add_parser("module", help="run an example processing module (reads the module contract's variables)")
    module.add_argument("name", choices=["volume-report", "burn-in"])
    module.set_defaults(func=cmd_module)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
