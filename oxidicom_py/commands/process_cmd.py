"""``oxidicom-py process``: a processing worker (runs the jobs the rules create).

It needs only the database (``OXIDICOM_DB_CONNECTION``, or the embedded server of a ``serve``
on this machine) and the files root (``OXIDICOM_FILES_ROOT``, mounted where the receivers
write, or at another path on this machine), so it can run on a GPU machine beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("process", help="take jobs from the queue and run their modules (on this or any machine)")
    p.add_argument("--queues", help="comma-separated queues to take jobs from (default: OXIDICOM_PROCESS_QUEUES, all)")
    p.add_argument("--concurrency", type=int, help="jobs at once (default: OXIDICOM_PROCESS_CONCURRENCY, 1)")
    p.set_defaults(func=cmd_process)
    return p


def cmd_process(args: argparse.Namespace) -> int:
    from oxidicom_py import settings as settings_mod
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri
    from oxidicom_py.setting_parsers import queue_list
    from oxidicom_py.telemetry import logs, tracing

    try:
        s = settings_mod.load()
        queues = queue_list("--queues", args.queues) if args.queues else None
        uri = database_uri(s)
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except DatabaseUnavailableError as e:
        print(f"oxidicom-py: database: {e}", file=sys.stderr)
        return 4
    if args.concurrency is not None and not 1 <= args.concurrency <= 256:
        print("oxidicom-py: --concurrency: between 1 and 256", file=sys.stderr)
        return 2
    logs.configure(s.log_level, static={"role": "process"})
    tracing.configure({"oxidicom.role": "process"})
    log = logging.getLogger("oxidicom_py.cli")

    async def main() -> None:
        import psycopg

        from oxidicom_py.processing.worker import run_processing
        from oxidicom_py.registry.schema import ensure_schema

        async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
            await ensure_schema(conn)
        await run_processing(s, uri, queues=queues, concurrency=args.concurrency)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        log.critical("processing worker failed: %s", e, exc_info=True)
        return 1
    finally:
        tracing.shutdown()
    return 0
