"""``oxidicom-py console``: the console's HTTP API on ``OXIDICOM_CONSOLE_ADDRESS``:``OXIDICOM_CONSOLE_PORT``,
a process of its own that only reads the database (this machine's embedded one, or
``OXIDICOM_DB_CONNECTION``), so it can run anywhere and never slows reception."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import socket
import sys
from typing import Any

from oxidicom_py.children import ADDRESS_IN_USE, CONFIGURATION_ERROR


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("console", help="serve the console's HTTP API (series, jobs, deliveries, health)")
    p.set_defaults(func=cmd_console)
    return p


def cmd_console(args: argparse.Namespace) -> int:
    from oxidicom_py import settings as settings_mod
    from oxidicom_py.commands.watch import DatabaseUnavailableError, database_uri
    from oxidicom_py.telemetry import logs

    try:
        s = settings_mod.load()
        uri = database_uri(s)
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py: configuration error: {e}", file=sys.stderr)
        return CONFIGURATION_ERROR
    except DatabaseUnavailableError as e:
        print(f"oxidicom-py: database: {e}", file=sys.stderr)
        return 4
    logs.configure(s.log_level, static={"role": "console"})
    log = logging.getLogger("oxidicom_py.console")
    if not s.console_port:
        log.error("OXIDICOM_CONSOLE_PORT=0 turns the console off: set a port to run it")
        return CONFIGURATION_ERROR
    try:  # bound here, so that a taken port is one clear line and an exit code serve knows
        family = socket.AF_INET6 if ":" in s.console_address else socket.AF_INET
        sock = socket.create_server((s.console_address, s.console_port), family=family)
    except OSError as e:
        where = f"{s.console_address}:{s.console_port}"
        if e.errno == errno.EADDRINUSE:
            log.error("console not started: %s is in use (another console?); set OXIDICOM_CONSOLE_PORT", where)
            return ADDRESS_IN_USE
        log.error("console not started: cannot listen on %s: %s (OXIDICOM_CONSOLE_ADDRESS)", where, e)
        return CONFIGURATION_ERROR

    import uvicorn

    from oxidicom_py.console.api import make_app

    config = uvicorn.Config(
        make_app(uri, show_phi=s.console_show_phi, token=s.console_token),
        host=s.console_address,
        port=s.console_port,
        log_config=None,  # our JSON log lines
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,  # an open live-updates stream must not hold up a stop
    )
    url = f"http://{s.console_address}:{s.console_port}/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:  # the port is bound and the database reached
                log.info(
                    "console ready",
                    extra={"url": url, "show_phi": s.console_show_phi, "actions": s.console_token is not None},
                )

    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    return 0 if server.started else 1
