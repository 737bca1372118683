"""``oxidicom-py deliveries``: what was sent where (``oxidicom_deliveries``), and sending the
failed ones again.

Exit codes: 0 done; 1 nothing to retry; 2 usage or configuration error; 4 database error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from oxidicom_py.registry.jobs_schema import DELIVERY_STATES


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("deliveries", help="list deliveries of results to destinations, or retry the failed ones")
    actions = p.add_subparsers(dest="deliveries_command", required=True)
    ls = actions.add_parser("list", help="one line per (job, destination, instance)")
    ls.add_argument("--job", type=int)
    ls.add_argument("--state", choices=DELIVERY_STATES)
    ls.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="send a job's failed deliveries again (a fresh set of attempts)")
    retry.add_argument("job", type=int)
    p.set_defaults(func=cmd_deliveries)
    return p


async def _act(args: argparse.Namespace, uri: str) -> int:
    import psycopg

    from oxidicom_py.delivery import records
    from oxidicom_py.processing import job_store

    async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
        if args.deliveries_command == "list":
            rows = await records.select(conn, job_id=args.job, state=args.state)
            if args.json:
                print(job_store.dumps(rows))
            for r in [] if args.json else rows:
                status = "" if r["last_status"] is None else f" 0x{r['last_status']:04X}"
                error = f"  {r['last_error']}" if r["last_error"] and r["state"] != "sent" else ""
                print(
                    f"{r['job_id']:>6}  {r['destination']:<12}  {r['ae_title'] or '?':<16}  {r['state']:<7}"
                    f"  {r['attempts']}/{r['max_attempts']}{status}  {r['sop_instance_uid']}{error}"
                )
            return 0
        from oxidicom_py.processing import actions

        try:
            print(await actions.retry_deliveries(conn, args.job))
        except actions.ActionRefused as e:
            print(f"oxidicom-py: {e}", file=sys.stderr)
            return 1
        return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    import psycopg

    from oxidicom_py import settings as settings_mod
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri

    try:
        return asyncio.run(_act(args, database_uri(settings_mod.load())))
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except (DatabaseUnavailableError, psycopg.Error, OSError) as e:
        print(f"oxidicom-py: database: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 4
