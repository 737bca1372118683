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

import argparse
import datetime as dt
import json
import math
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from oxidicom_py import settings as settings_mod
from oxidicom_py.registry import embedded
from oxidicom_py.registry.schema import PROGRESS_CHANNEL, PROGRESS_TABLE

EXIT_COMPLETE: Final = 0
EXIT_INCOMPLETE: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_DATABASE: Final = 4
EXIT_INTERRUPTED: Final = 130

TERMINAL_STATES: Final = frozenset({"complete", "incomplete"})

REREAD_INTERVAL: Final = 2.0
"""Seconds between safety-net re-reads when no notification arrives."""

COALESCE: Final = 0.05
"""After a relevant notification, how long more notifications are collected before one re-read."""

SPINNER_INTERVAL: Final = 0.25
"""Redraw period of the terminal view (animates the marker of series of unknown size)."""

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


# -- model -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows of the progress table are watched."""

    series: frozenset[str] = frozenset()
    studies: frozenset[str] = frozenset()
    patients: frozenset[str] = frozenset()
    pacs: frozenset[str] = frozenset()
    """Empty: any PACS."""

    def matches(self, pacs: object, series: object, study: object, patient: object) -> bool:
        if self.pacs and pacs not in self.pacs:
            return False
        return series in self.series or study in self.studies or patient in self.patients


@dataclass(frozen=True, slots=True)
class SeriesProgress:
    """One row of ``oxidicom_series_progress``, as far as watching is concerned."""

    pacs: str
    series_uid: str
    study_uid: str
    patient_id: str
    expected: int | None
    received: int
    state: str

    @property
    def key(self) -> tuple[str, str]:
        return self.pacs, self.series_uid

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


def missing_series(rows: Iterable[SeriesProgress], selection: Selection) -> list[str]:
    """UIDs named with ``--series`` that no selected row carries yet (sorted)."""
    seen = {r.series_uid for r in rows}
    return sorted(selection.series - seen)


def outcome(rows: Sequence[SeriesProgress], selection: Selection) -> int | None:
    """The exit code if the watch is over, else ``None``."""
    if not rows or any(not r.ended for r in rows) or missing_series(rows, selection):
        return None
    return EXIT_INCOMPLETE if any(r.state == "incomplete" for r in rows) else EXIT_COMPLETE


# -- rendering (pure) ----------------------------------------------------------------------------


def utc_stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_text(row: SeriesProgress) -> str:
    return f"{row.received}/{row.expected if row.expected is not None else '?'}"


def plain_line(row: SeriesProgress, when: dt.datetime) -> str:
    """``2026-11-23T14:00:01Z OXITESTORTHANC 1.2.3.4  received 120/192 receiving``."""
    return f"{utc_stamp(when)} {row.pacs} {row.series_uid}  received {count_text(row)} {row.state}"


def short_uid(uid: str, width: int = 24) -> str:
    """Head and tail of a UID (series of one study usually differ at the end)."""
    if len(uid) <= width:
        return uid
    tail = (width - 1) * 2 // 3
    return f"{uid[: width - 1 - tail]}~{uid[-tail:]}"


def bar(received: int, expected: int | None, state: str, width: int, tick: int = 0) -> str:
    """``[#####-----]``; of unknown size: a ``<=>`` marker bouncing with ``tick`` while receiving."""
    inner = max(width - 2, 3)
    if expected is not None and expected > 0:
        filled = min(inner, received * inner // expected)
        return "[" + "#" * filled + "-" * (inner - filled) + "]"
    if expected is not None or state == "complete":  # expected 0, or ended at an unknown size
        return "[" + ("#" if state == "complete" else "-") * inner + "]"
    if state == "incomplete":
        return "[" + "?" * inner + "]"
    span = inner - 3
    pos = tick % (2 * span) if span > 0 else 0
    if pos > span:
        pos = 2 * span - pos
    return "[" + " " * pos + "<=>" + " " * (span - pos) + "]"


def tally(rows: Iterable[SeriesProgress]) -> dict[str, int]:
    counts = dict.fromkeys(("complete", "incomplete", "receiving"), 0)
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def _tally_text(rows: Sequence[SeriesProgress]) -> str:
    return ", ".join(f"{n} {state}" for state, n in tally(rows).items())


def render_lines(
    rows: Sequence[SeriesProgress],
    *,
    missing: Sequence[str] = (),
    width: int = 80,
    height: int = 24,
    tick: int = 0,
    elapsed: float = 0.0,
) -> list[str]:
    """The terminal view: a header, then one line per series, each at most ``width - 1`` wide.

    At most ``height - 1`` lines, so that redrawing in place never scrolls the screen.
    """
    header = f"oxidicom-py watch: {len(rows)} series ({_tally_text(rows)}), {elapsed:.0f} s"
    pacs_width = max((len(r.pacs) for r in rows), default=0)
    count_width = max((len(count_text(r)) for r in rows), default=0)
    body: list[str] = []
    for r in rows:
        pct = f"{min(999, r.received * 100 // r.expected)}%" if r.expected else ""
        uid = short_uid(r.series_uid)
        text = f"{r.pacs:<{pacs_width}} {uid:<24} {count_text(r):>{count_width}} {pct:>4} {r.state:<10}"
        room_for_bar = min(42, width - 1 - len(text) - 1)  # the bar takes what is left, up to 42 columns
        body.append(f"{text} {bar(r.received, r.expected, r.state, room_for_bar, tick)}" if room_for_bar >= 5 else text)
    body += [f"  waiting for series {uid} (not seen yet)" for uid in missing]
    room = max(height - 1, 2) - 1
    if len(body) > room:
        hidden = len(body) - (room - 1)
        body = [*body[: room - 1], f"  ... and {hidden} more"]
    return [line[: max(width - 1, 1)] for line in [header, *body]]


def summary_line(
    rows: Sequence[SeriesProgress], missing: Sequence[str], code: int, elapsed: float, when: dt.datetime
) -> str:
    """``<time> summary complete: 2 series: 2 complete, 0 incomplete, 0 receiving``."""
    result = {EXIT_COMPLETE: "complete", EXIT_INCOMPLETE: "incomplete", EXIT_TIMEOUT: "timeout"}.get(code, "error")
    text = f"{utc_stamp(when)} summary {result}: {len(rows)} series: {_tally_text(rows)}"
    if code == EXIT_TIMEOUT:
        text += f" after {elapsed:.0f} s"
    if missing:
        text += "; not seen: " + " ".join(missing)
    return text


# -- views -----------------------------------------------------------------------------------------


class PlainView:
    """One line per change of (state, received, expected) of a series."""

    ticking = False

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: dict[tuple[str, str], tuple[str, int, int | None]] = {}

    def update(self, rows: Sequence[SeriesProgress], missing: Sequence[str], elapsed: float) -> None:
        now = dt.datetime.now(dt.UTC)
        for r in rows:
            seen = (r.state, r.received, r.expected)
            if self._last.get(r.key) != seen:
                self._last[r.key] = seen
                print(plain_line(r, now), file=self.out)
        self.out.flush()

    def tick(self, elapsed: float) -> None:
        pass

    def finish(self, rows: Sequence[SeriesProgress], missing: Sequence[str], code: int, elapsed: float) -> None:
        print(summary_line(rows, missing, code, elapsed, dt.datetime.now(dt.UTC)), file=self.out, flush=True)


class LiveView:
    """Progress bars redrawn in place with ANSI cursor movement."""

    ticking = True

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._drawn = 0
        self._tick = 0
        self._rows: Sequence[SeriesProgress] = ()
        self._missing: Sequence[str] = ()
        self._closed = False
        self.out.write("\x1b[?25l")  # hide the cursor while drawing

    def _draw(self, elapsed: float) -> None:
        size = shutil.get_terminal_size()
        lines = render_lines(
            self._rows, missing=self._missing, width=size.columns, height=size.lines, tick=self._tick, elapsed=elapsed
        )
        parts = [f"\x1b[{self._drawn}A\r"] if self._drawn else []
        parts += [f"\x1b[2K{line}\n" for line in lines]
        stale = self._drawn - len(lines)
        if stale > 0:
            parts += ["\x1b[2K\n"] * stale + [f"\x1b[{stale}A"]
        self._drawn = len(lines)
        self.out.write("".join(parts))
        self.out.flush()

    def update(self, rows: Sequence[SeriesProgress], missing: Sequence[str], elapsed: float) -> None:
        self._rows, self._missing = rows, missing
        self._draw(elapsed)

    def tick(self, elapsed: float) -> None:
        self._tick += 1
        self._draw(elapsed)

    def finish(self, rows: Sequence[SeriesProgress], missing: Sequence[str], code: int, elapsed: float) -> None:
        self.update(rows, missing, elapsed)
        self.out.write(summary_line(rows, missing, code, elapsed, dt.datetime.now(dt.UTC)) + "\n")
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.out.write("\x1b[?25h")  # show the cursor again
            self.out.flush()


# -- database ---------------------------------------------------------------------------------------


def database_uri(s: settings_mod.Settings) -> str:
    """``OXIDICOM_DB_CONNECTION``, else the URI of the running embedded server of the state dir."""
    if s.db_connection is not None:
        return s.db_connection
    try:
        return embedded.client_uri(s.pgdata)
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
