"""``oxidicom-py watch``: wait until selected series have finished arriving, showing progress.

Series are chosen with ``--series UID``, ``--study UID`` and ``--patient ID`` (each
repeatable; a row matching any of them is selected), optionally narrowed by ``--pacs AET``
(the sending PACS's AE title, repeatable). Series of a selected study or patient that
appear while we watch are added. A series named with ``--series`` counts as not ended
until it has been seen.

The command listens on the ``oxidicom_series`` channel, then reads the selected rows of
``oxidicom_series_progress``; it reads them again on every notification about a selected
series and, as a safety net, every 2 seconds. It returns as soon as at least one series is
selected and every selected series is ``complete`` or ``incomplete`` (a series that went
back to ``receiving`` because more instances arrived is not ended).

Exit codes:

* 0 -- every selected series is complete;
* 1 -- every selected series has ended, at least one of them incomplete;
* 2 -- usage or configuration error (bad arguments, bad ``OXIDICOM_*`` value);
* 3 -- timed out (``--timeout``): a series is still receiving, or none was found;
* 4 -- database error: unreachable, embedded server not running, table missing, connection lost;
* 130 -- interrupted (Ctrl-C).

Database: ``OXIDICOM_DB_CONNECTION`` if set; otherwise the embedded server of the receiver,
which listens on a Unix socket in ``$OXIDICOM_STATE_DIR/pgdata`` (default
``./oxidicom-data/pgdata``): ``postgresql://postgres:@/postgres?host=<absolute pgdata>``.

Output: on a terminal, one live progress bar per series, redrawn in place; otherwise (or
with ``--plain``) one line per change, ``<UTC time> <PACS> <SeriesInstanceUID>  received
<n>/<expected or ?> <state>``, and a final ``summary`` line. The rendering functions
(:func:`plain_line`, :func:`render_lines`, :func:`summary_line`) are pure.
"""

from __future__ import annotations

__all__ = [  # the view's names are part of this command's interface
    "EXIT_COMPLETE",
    "EXIT_INCOMPLETE",
    "EXIT_TIMEOUT",
    "LiveView",
    "PlainView",
    "Selection",
    "SeriesProgress",
    "bar",
    "missing_series",
    "outcome",
    "plain_line",
    "render_lines",
    "short_uid",
    "summary_line",
]

import argparse
import json
import math
import sys
import time
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from oxidicom_py import settings as settings_mod
from oxidicom_py.commands.watch_view import (
    EXIT_COMPLETE,
    EXIT_INCOMPLETE,
    EXIT_TIMEOUT,
    SPINNER_INTERVAL,
    LiveView,
    PlainView,
    Selection,
    SeriesProgress,
    bar,
    missing_series,
    outcome,
    plain_line,
    render_lines,
    short_uid,
    summary_line,
)
from oxidicom_py.registry import embedded
from oxidicom_py.registry.schema import PROGRESS_CHANNEL, PROGRESS_TABLE

EXIT_USAGE: Final = 2
EXIT_DATABASE: Final = 4
EXIT_INTERRUPTED: Final = 130

REREAD_INTERVAL: Final = 2.0
"""Seconds between safety-net re-reads when no notification arrives."""

COALESCE: Final = 0.05
"""After a relevant notification, how long more notifications are collected before one re-read."""

CONNECT_TIMEOUT: Final = 10

_EPILOG: Final = """\
exit codes:
  0    every selected series is complete
  1    every selected series has ended, at least one incomplete
  2    usage or configuration error
  3    timed out (a series still receiving, or none found)
  4    database error (unreachable, embedded server not running, table missing)
  130  interrupted

database: OXIDICOM_DB_CONNECTION if set, else the receiver's embedded server in
$OXIDICOM_STATE_DIR/pgdata (default ./oxidicom-data/pgdata), which must be running.
"""


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be used; the message says why, for the user."""


# -- database ---------------------------------------------------------------------------------------


def database_uri(s: settings_mod.Settings) -> str:
    """``OXIDICOM_DB_CONNECTION``, else the URI of the running embedded server of the state dir
    (our tables in ``OXIDICOM_DB_SCHEMA``)."""
    from oxidicom_py.registry.schema import with_schema

    if s.db_connection is not None:
        return with_schema(s.db_connection, s.db_schema)
    try:
        return with_schema(embedded.client_uri(s.pgdata), s.db_schema)
    except embedded.NotRunningError as e:
        raise DatabaseUnavailableError(
            f"{e} (OXIDICOM_STATE_DIR={s.state_dir}): "
            "start the receiver (oxidicom-py serve) or set OXIDICOM_DB_CONNECTION"
        ) from None


_SELECT: Final = sql.SQL(
    'SELECT pacs_identifier, "SeriesInstanceUID", "StudyInstanceUID", "PatientID", expected, received, state '
    "FROM {table} "
    'WHERE ("SeriesInstanceUID" = ANY(%(series)s) OR "StudyInstanceUID" = ANY(%(studies)s) '
    'OR "PatientID" = ANY(%(patients)s)) '
    "AND (cardinality(%(pacs)s::text[]) = 0 OR pacs_identifier = ANY(%(pacs)s)) "
    "ORDER BY id"
).format(table=sql.Identifier(PROGRESS_TABLE))


def read_rows(conn: psycopg.Connection[Any], selection: Selection) -> list[SeriesProgress]:
    params = {
        "series": sorted(selection.series),
        "studies": sorted(selection.studies),
        "patients": sorted(selection.patients),
        "pacs": sorted(selection.pacs),
    }
    return [SeriesProgress(*row) for row in conn.execute(_SELECT, params).fetchall()]


def _relevant(payload: str, selection: Selection) -> bool:
    try:
        p = json.loads(payload)
        return selection.matches(p["pacs"], p["SeriesInstanceUID"], p["StudyInstanceUID"], p["PatientID"])
    except (ValueError, KeyError, TypeError):
        return True  # unknown payload: re-read, to be safe


def _wait_for_news(conn: psycopg.Connection[Any], selection: Selection, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a notification about a selected series; collect a short burst after it."""
    relevant = False
    for n in conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
        relevant = relevant or _relevant(n.payload, selection)
    if relevant:
        for _n in conn.notifies(timeout=COALESCE):  # one re-read for a burst of updates
            pass
    return relevant


def watch(conninfo: str, selection: Selection, *, timeout: float | None, view: PlainView | LiveView) -> int:
    """Watch until the selected series have ended or ``timeout`` s passed; return the exit code.

    Raises ``psycopg.Error`` on database failures.
    """
    start = time.monotonic()
    deadline = start + timeout if timeout is not None else math.inf
    options = conninfo_to_dict(conninfo)  # the user's own connect_timeout/application_name win
    options.setdefault("connect_timeout", CONNECT_TIMEOUT)
    options.setdefault("application_name", "oxidicom-py watch")
    with psycopg.connect(**options, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(PROGRESS_CHANNEL)))  # before the first read
        while True:
            rows = read_rows(conn, selection)
            missing = missing_series(rows, selection)
            elapsed = time.monotonic() - start
            view.update(rows, missing, elapsed)
            code = outcome(rows, selection)
            if code is None and time.monotonic() >= deadline:
                code = EXIT_TIMEOUT
            if code is not None:
                view.finish(rows, missing, code, elapsed)
                return code
            next_read = min(time.monotonic() + REREAD_INTERVAL, deadline)
            while True:
                now = time.monotonic()
                until = min(next_read, now + SPINNER_INTERVAL) if view.ticking else next_read
                if _wait_for_news(conn, selection, until - now) or time.monotonic() >= next_read:
                    break
                view.tick(time.monotonic() - start)


# -- command line ---------------------------------------------------------------------------------


def _positive_seconds(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {raw!r}")
    return v


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``watch`` on the subparsers object of the ``oxidicom-py`` parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "watch",
        help="wait until series have arrived (live progress); exit 0 when complete",
        description="Wait until the selected series have finished arriving, showing their progress.\n"
        "A series matching any --series, --study or --patient is selected; series of a selected\n"
        "study or patient that appear later are added; every --series UID must be seen.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--series", action="append", default=[], metavar="UID", help="a SeriesInstanceUID (repeatable)")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="a StudyInstanceUID (repeatable)")
    p.add_argument("--patient", action="append", default=[], metavar="ID", help="a PatientID (repeatable)")
    p.add_argument(
        "--pacs", action="append", default=[], metavar="AET", help="only series sent by this PACS AE title (repeatable)"
    )
    p.add_argument(
        "--timeout", type=_positive_seconds, default=None, metavar="SECONDS", help="give up after this long (exit 3)"
    )
    p.add_argument("--plain", action="store_true", help="one line per change, even on a terminal")
    p.set_defaults(func=cmd_watch, watch_parser=p)
    return p


def cmd_watch(args: argparse.Namespace) -> int:
    if not (args.series or args.study or args.patient):
        args.watch_parser.error("select at least one series with --series, --study or --patient")
    selection = Selection(
        series=frozenset(args.series),
        studies=frozenset(args.study),
        patients=frozenset(args.patient),
        pacs=frozenset(args.pacs),
    )
    try:
        s = settings_mod.load()
    except settings_mod.SettingsError as e:
        print(f"oxidicom-py watch: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        conninfo = database_uri(s)
    except DatabaseUnavailableError as e:
        print(f"oxidicom-py watch: {e}", file=sys.stderr)
        return EXIT_DATABASE
    view: PlainView | LiveView = (
        LiveView(sys.stdout) if sys.stdout.isatty() and not args.plain else PlainView(sys.stdout)
    )
    try:
        return watch(conninfo, selection, timeout=args.timeout, view=view)
    except psycopg.errors.UndefinedTable:
        print(
            f"oxidicom-py watch: database error: table {PROGRESS_TABLE} does not exist "
            "(has a receiver with series progress run on this database?)",
            file=sys.stderr,
        )
        return EXIT_DATABASE
    except psycopg.Error as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"oxidicom-py watch: database error: {message}", file=sys.stderr)
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if isinstance(view, LiveView):
            view.close()
