"""``oxidicom-py migrate``: create or upgrade the database schema, once per cluster (a Kubernetes
Job or an init step), so receivers need no CREATE rights and never build an index at start-up."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "migrate", help="create or upgrade the database schema (tables, indexes, the job engine's), then exit"
    )
    p.add_argument("--check", action="store_true", help="only report what is missing (exit 1 if anything is)")
    p.set_defaults(func=cmd_migrate)
    return p


def cmd_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from oxidicom_py import settings as settings_mod
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri
    from oxidicom_py.registry.migrate import migrate, problems

    try:
        uri = database_uri(settings_mod.load())
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return 2
    except DatabaseUnavailableError as e:
        print(f"oxidicom-py: database: {e}", file=sys.stderr)
        return 4

    async def main() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
            if args.check:
                return {"missing": await problems(conn)}
            built = await migrate(conn)
            return {"built_concurrently": built, "missing": await problems(conn)}

    try:
        result = asyncio.run(main())
    except (psycopg.Error, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"oxidicom-py: database: {first}", file=sys.stderr)
        return 4
    print(json.dumps(result))
    return 1 if result["missing"] else 0
