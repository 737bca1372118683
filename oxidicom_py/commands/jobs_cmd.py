"""``oxidicom-py jobs``: list, show, retry and cancel processing jobs (``oxidicom_jobs``).

Exit codes: 0 done; 1 no such job, or the action does not apply to its state; 2 usage or
configuration error; 4 database error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from oxidicom_py.registry.jobs_schema import JOB_STATES


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("jobs", help="list, show, retry or cancel processing jobs")
    actions = p.add_subparsers(dest="jobs_command", required=True)
    ls = actions.add_parser("list", help="the newest jobs first")
    ls.add_argument("--state", choices=JOB_STATES)
    ls.add_argument("--rule")
    ls.add_argument("--series", metavar="UID", help="jobs of this series (or study) UID")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON array")
    show = actions.add_parser("show", help="one job: attempts, log excerpt, outputs")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="run a failed or cancelled job again (a fresh set of attempts)")
    retry.add_argument("id", type=int)
    cancel = actions.add_parser("cancel", help="cancel a queued job, or stop a running one (its module is killed)")
    cancel.add_argument("id", type=int)
    p.set_defaults(func=cmd_jobs)
    return p


def _line(job: Any) -> str:
    when = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
    error = f"  {job.reason}: {(job.last_error or '')[:80]}" if job.state in ("failed", "cancelled") else ""
    series = ",".join(job.series_uids)
    return (
        f"{job.id:>6}  {job.state:<9}  {job.rule:<20}  {job.level:<6}  {job.attempts}/{job.max_attempts}"
        f"  {when}  {series}{error}"
    )


def _show(job: Any) -> str:
    lines = [
        f"job {job.id}: {job.state}" + (f" ({job.reason})" if job.reason else ""),
        f"  rule {job.rule} ({job.level}), study {job.study_uid}",
        f"  series {', '.join(job.series_uids)}  roles {job.roles}",
        f"  attempts {job.attempts} of {job.max_attempts}; created {job.created_at}, started {job.started_at}, "
        f"finished {job.finished_at}, duration {job.duration}",
        f"  exit code {job.exit_code}; last error: {job.last_error}",
        f"  folder {job.folder}",
        "  history:",
    ]
    for event in job.history:
        more = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("state", "attempt", "at") and v)
        lines.append(f"    {event.get('at')}  attempt {event.get('attempt')}  {event.get('state')}  {more}")
    lines.append(f"  outputs ({len(job.outputs)}):")
    lines += [f"    {o.get('path')}  {o.get('SOPClassUID')}  series {o.get('SeriesInstanceUID')}" for o in job.outputs]
    if job.result is not None:
        lines.append(f"  result: {job.result}")
    if job.log_excerpt:
        lines.append("  log excerpt:")
        lines += ["    " + line for line in job.log_excerpt.splitlines()[-40:]]
    return "\n".join(lines)


async def _act(args: argparse.Namespace, uri: str) -> int:
    import psycopg

    from oxidicom_py.processing import job_store

    async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
        if args.jobs_command == "list":
            found = await job_store.select(conn, state=args.state, rule=args.rule, series=args.series, limit=args.limit)
            if args.json:
                print(job_store.dumps([j.as_json() for j in found]))
            else:
                for job in found:
                    print(_line(job))
            return 0
        if args.jobs_command == "show":
            from oxidicom_py.delivery import records

            job = await job_store.get(conn, args.id)
            if job is None:
                print(f"oxidicom-py: no job {args.id}", file=sys.stderr)
                return 1
            sent = await records.select(conn, job_id=job.id)
            if args.json:
                print(job_store.dumps({**job.as_json(), "deliveries": sent}))
            else:
                print(_show(job))
                print(f"  deliveries ({len(sent)}):")
                for d in sent:
                    status = "" if d["last_status"] is None else f" 0x{d['last_status']:04X}"
                    print(
                        f"    {d['destination']} {d['ae_title']}  {d['state']}  {d['attempts']}/{d['max_attempts']}"
                        f"{status}  {d['sop_instance_uid']}" + (f"  {d['last_error']}" if d["last_error"] else "")
                    )
            return 0
        from oxidicom_py.processing import actions

        try:
            if args.jobs_command == "cancel":
                print(await actions.cancel_job(conn, args.id, "a user"))
            else:
                print(await actions.retry_job(conn, args.id))
        except actions.ActionRefused as e:
            print(f"oxidicom-py: {e}", file=sys.stderr)
            return 1
        return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import psycopg
    from procrastinate.exceptions import AlreadyEnqueued

    from oxidicom_py import settings as settings_mod
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri

    try:
        uri = database_uri(settings_mod.load())
        return asyncio.run(_act(args, uri))
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except AlreadyEnqueued:
        print("oxidicom-py: a job of that rule for the same series waits already", file=sys.stderr)
        return 1
    except (DatabaseUnavailableError, psycopg.Error, OSError) as e:
        print(f"oxidicom-py: database: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 4
