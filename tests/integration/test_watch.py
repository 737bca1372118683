"""``oxidicom-py watch``: a real subprocess against a real PostgreSQL, the table driven by plain SQL.

The receiver side that fills ``oxidicom_series_progress`` is not involved: each test writes the
rows as the receiver would (inserts, then updates of ``received``/``state``), and checks the
exit code and the plain-text output of the command. The terminal view is checked through its
pure rendering functions and once in a pseudo-terminal.
"""

from __future__ import annotations

import datetime as dt
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import wait_until

from oxidicom_py.commands import watch
from oxidicom_py.commands.watch import (
    EXIT_COMPLETE,
    EXIT_DATABASE,
    EXIT_INCOMPLETE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Selection,
    SeriesProgress,
)
from oxidicom_py.registry.schema import ensure_schema_sync
from oxidicom_py.settings import Settings

pytestmark = pytest.mark.integration

AET = "OXITESTORTHANC"
STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT = "1449c1d"
SERIES_A = "1.2.826.0.1.3680043.8.498.1.1"
SERIES_B = "1.2.826.0.1.3680043.8.498.1.2"
WAIT = 20.0
"""Bound of every wait for the watcher to react (it reacts within ~0.1 s of a commit)."""


# -- helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def db(db_uri: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database with the schema."""
    with psycopg.connect(db_uri, autocommit=True) as conn:
        ensure_schema_sync(conn)
        yield conn


def put(
    conn: psycopg.Connection[Any],
    series: str,
    received: int,
    expected: int | None,
    state: str = "receiving",
    *,
    study: str = STUDY,
    patient: str = PATIENT,
    pacs: str = AET,
) -> None:
    """Insert or update one progress row, as the receiver does (the trigger sends the NOTIFY)."""
    conn.execute(
        """
        INSERT INTO oxidicom_series_progress
            (pacs_identifier, "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
             expected, received, state, first_received, last_received, completed)
        VALUES (%(pacs)s, %(series)s, %(study)s, %(patient)s, %(expected)s, %(received)s, %(state)s,
                now(), now(), CASE WHEN %(ended)s THEN now() END)
        ON CONFLICT (pacs_identifier, "SeriesInstanceUID") DO UPDATE
            SET expected = EXCLUDED.expected, received = EXCLUDED.received, state = EXCLUDED.state,
                last_received = now(), completed = EXCLUDED.completed, updated = now()
        """,
        {
            "pacs": pacs,
            "series": series,
            "study": study,
            "patient": patient,
            "expected": expected,
            "received": received,
            "state": state,
            "ended": state != "receiving",
        },
    )


def _env(db_uri: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDICOM_")}
    if db_uri is not None:
        env["OXIDICOM_DB_CONNECTION"] = db_uri
    return {**env, **extra}


class Watcher:
    """``python -m oxidicom_py watch ...`` with its stdout collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oxidicom_py", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, *fragments: str) -> bool:
        return any(all(f in line for f in fragments) for line in list(self.lines))

    def wait_for_line(self, *fragments: str) -> None:
        wait_until(lambda: self.saw(*fragments), WAIT, what=f"a line with {fragments} in {self.lines}")

    def finish(self, timeout: float = WAIT) -> int:
        """Exit code (the process must exit within ``timeout``); stdout fully read, stderr kept."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self._reader.join(WAIT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start_watch(db_uri: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: start a watcher on ``db_uri`` (plain output, since stdout is a pipe); all killed after."""
    started: list[Watcher] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Watcher:
        w = Watcher(list(args), env if env is not None else _env(db_uri), tmp_path)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def run_watch(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "watch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=WAIT,
    )


# -- the command against the table ----------------------------------------------------------------


def test_series_complete_exits_0_and_ignores_other_pacs(db: psycopg.Connection[Any], start_watch: Any) -> None:
    put(db, SERIES_A, 0, 3)
    put(db, SERIES_A, 1, 3, pacs="OTHERPACS")  # same series from another PACS: filtered out by --pacs
    w = start_watch("--series", SERIES_A, "--pacs", AET)
    w.wait_for_line(AET, SERIES_A, "received 0/3 receiving")
    put(db, SERIES_A, 2, 3)
    w.wait_for_line("received 2/3 receiving")
    put(db, SERIES_A, 3, 3, "complete")
    assert w.finish() == EXIT_COMPLETE, w.stderr
    assert not w.saw("OTHERPACS")
    change_lines = [line for line in w.lines if SERIES_A in line]
    assert [line.split("  ", 1)[1] for line in change_lines] == [
        "received 0/3 receiving",
        "received 2/3 receiving",
        "received 3/3 complete",
    ]
    # <UTC time> <PACS> <series>  received n/m state
    stamp = change_lines[0].split(" ", 1)[0]
    assert dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    assert "summary complete: 1 series: 1 complete, 0 incomplete, 0 receiving" in w.lines[-1]


def test_study_series_appearing_later_are_waited_for(db: psycopg.Connection[Any], start_watch: Any) -> None:
    put(db, SERIES_A, 10, 20)
    w = start_watch("--study", STUDY)
    w.wait_for_line(SERIES_A, "received 10/20 receiving")
    put(db, SERIES_B, 1, None)  # second series of the study, first seen after the watch started
    w.wait_for_line(SERIES_B, "received 1/? receiving")
    put(db, SERIES_A, 20, 20, "complete")
    w.wait_for_line(SERIES_A, "received 20/20 complete")
    put(db, SERIES_B, 5, 5, "complete")
    assert w.finish() == EXIT_COMPLETE, w.stderr
    a_done = next(i for i, line in enumerate(w.lines) if SERIES_A in line and "complete" in line)
    b_done = next(i for i, line in enumerate(w.lines) if SERIES_B in line and "complete" in line)
    assert a_done < b_done
    assert "summary complete: 2 series: 2 complete" in w.lines[-1]


def test_one_incomplete_exits_1_and_named_series_must_be_seen(db: psycopg.Connection[Any], start_watch: Any) -> None:
    put(db, SERIES_A, 4, 4, "complete")
    w = start_watch("--series", SERIES_A, "--series", SERIES_B, "--plain")
    w.wait_for_line(SERIES_A, "received 4/4 complete")  # SERIES_B not seen yet: still watching
    put(db, SERIES_B, 7, 9, patient="someone-else", study="1.2.3")
    w.wait_for_line(SERIES_B, "received 7/9 receiving")
    put(db, SERIES_B, 7, 9, "incomplete", patient="someone-else", study="1.2.3")
    assert w.finish() == EXIT_INCOMPLETE, w.stderr
    assert w.saw(SERIES_B, "received 7/9 incomplete")
    assert "summary incomplete: 2 series: 1 complete, 1 incomplete, 0 receiving" in w.lines[-1]


def test_patient_selector_and_series_back_to_receiving(db: psycopg.Connection[Any], start_watch: Any) -> None:
    put(db, SERIES_A, 3, 5, "incomplete")
    put(db, SERIES_B, 2, 2, "complete", study="1.2.3")
    put(db, SERIES_A, 4, 5)  # a later association: back to receiving, so the watch is not over
    w = start_watch("--patient", PATIENT)
    w.wait_for_line(SERIES_A, "received 4/5 receiving")
    put(db, SERIES_A, 5, 5, "complete")
    assert w.finish() == EXIT_COMPLETE, w.stderr
    assert w.saw(SERIES_B, "received 2/2 complete")


def test_timeout_exit_code(db: psycopg.Connection[Any], start_watch: Any) -> None:
    put(db, SERIES_A, 5, 10)
    receiving = start_watch("--series", SERIES_A, "--timeout", "1")
    nothing = start_watch("--study", "1.2.999", "--timeout", "1")
    assert receiving.finish() == EXIT_TIMEOUT, receiving.stderr
    assert nothing.finish() == EXIT_TIMEOUT, nothing.stderr
    assert receiving.saw(SERIES_A, "received 5/10 receiving")
    assert "summary timeout: 1 series: 0 complete, 0 incomplete, 1 receiving after 1 s" in receiving.lines[-1]
    assert nothing.lines[-1].endswith("summary timeout: 0 series: 0 complete, 0 incomplete, 0 receiving after 1 s")


def test_database_errors_exit_4(db_uri: str, tmp_path: Path) -> None:
    unreachable = run_watch(
        ["--series", SERIES_A], _env("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=5"), tmp_path
    )
    assert unreachable.returncode == EXIT_DATABASE, unreachable
    assert "database error" in unreachable.stderr

    no_table = run_watch(["--series", SERIES_A], _env(db_uri), tmp_path)  # empty database: no schema
    assert no_table.returncode == EXIT_DATABASE, no_table
    assert "oxidicom_series_progress does not exist" in no_table.stderr

    embedded_stopped = run_watch(["--series", SERIES_A], _env(None, OXIDICOM_STATE_DIR=str(tmp_path / "s")), tmp_path)
    assert embedded_stopped.returncode == EXIT_DATABASE, embedded_stopped
    assert "is not running" in embedded_stopped.stderr
    assert str((tmp_path / "s" / "pgdata").resolve()) in embedded_stopped.stderr


def test_stale_postmaster_pid_is_reported(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=WAIT)
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(f"{gone.pid}\n{pgdata}\n0\n5432\n{pgdata}\n")
    with pytest.raises(watch.DatabaseUnavailableError, match=r"stale postmaster\.pid"):
        watch.database_uri(Settings(state_dir=tmp_path))


def test_embedded_database_uri(tmp_path: Path) -> None:
    pgdata = tmp_path / "with space" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n0\n5432\n{pgdata}\n")
    s = Settings(state_dir=pgdata.parent)
    assert watch.database_uri(s) == f"postgresql://postgres:@/postgres?host={tmp_path}/with%20space/pgdata"
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n0\n5433\n{pgdata}\n")
    assert watch.database_uri(s).endswith("/pgdata&port=5433")
    assert watch.database_uri(Settings(db_connection="postgresql://h/db")) == "postgresql://h/db"


def test_embedded_database_of_the_test_session(pg_session_folder: Path, pg_server_uri: str, tmp_path: Path) -> None:
    """The session's own embedded server, found from OXIDICOM_STATE_DIR alone, is reached."""
    if os.environ.get("OXIDICOM_TEST_DB_CONNECTION"):
        pytest.skip("the session uses an external server")
    env = _env(None, OXIDICOM_STATE_DIR=str(pg_session_folder / "main"))
    done = run_watch(["--series", "1.2.999", "--timeout", "1"], env, tmp_path)
    # Connected: either the table is absent from database "postgres", or it is there and we time out.
    assert (done.returncode, "does not exist" in done.stderr) in {(EXIT_DATABASE, True), (EXIT_TIMEOUT, False)}, done


def test_usage_errors_exit_2(db_uri: str, tmp_path: Path) -> None:
    no_selector = run_watch([], _env(db_uri), tmp_path)
    assert no_selector.returncode == EXIT_USAGE
    assert "--series, --study or --patient" in no_selector.stderr
    assert run_watch(["--series", "1.2", "--timeout", "-1"], _env(db_uri), tmp_path).returncode == EXIT_USAGE
    bad_setting = run_watch(["--series", "1.2"], _env(db_uri, OXIDICOM_DB_POOL="zero"), tmp_path)
    assert bad_setting.returncode == EXIT_USAGE
    assert "OXIDICOM_DB_POOL" in bad_setting.stderr
    helped = run_watch(["--help"], _env(db_uri), tmp_path)
    assert helped.returncode == 0
    assert "exit codes:" in helped.stdout and "OXIDICOM_DB_CONNECTION" in helped.stdout


def test_live_view_in_a_terminal(db: psycopg.Connection[Any], db_uri: str, tmp_path: Path) -> None:
    put(db, SERIES_A, 120, 192)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxidicom_py", "watch", "--series", SERIES_A],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=_env(db_uri, COLUMNS="100", LINES="30"),
        cwd=tmp_path,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child has exited and closed the pty
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: b"120/192" in b"".join(chunks), WAIT, what="the first frame")
        put(db, SERIES_A, 192, 192, "complete")
        assert proc.wait(timeout=WAIT) == EXIT_COMPLETE
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)
        reader.join(WAIT)
        os.close(master)
    screen = b"".join(chunks).decode()
    assert "\x1b[2K" in screen and "\x1b[2A\r" in screen  # lines cleared and redrawn in place
    assert "[" + "#" * 20 in screen  # 120/192 of the bar, then all of it
    assert "192/192" in screen and "summary complete" in screen
    assert screen.rstrip().endswith("\x1b[?25h")  # the cursor is shown again


# -- pure parts -------------------------------------------------------------------------------------


def row(series: str = SERIES_A, received: int = 120, expected: int | None = 192, state: str = "receiving") -> Any:
    return SeriesProgress(AET, series, STUDY, PATIENT, expected, received, state)


def test_bar() -> None:
    assert watch.bar(120, 192, "receiving", 12) == "[######----]"
    assert watch.bar(0, 192, "receiving", 12) == "[----------]"
    assert watch.bar(300, 192, "receiving", 12) == "[##########]"  # more than announced: full, not wider
    assert watch.bar(3, None, "complete", 7) == "[#####]"
    assert watch.bar(3, None, "incomplete", 7) == "[?????]"
    assert watch.bar(0, 0, "complete", 7) == "[#####]"


def test_bar_of_unknown_size_bounces() -> None:
    frames = [watch.bar(57, None, "receiving", 8, tick) for tick in range(8)]
    assert frames[:4] == ["[<=>   ]", "[ <=>  ]", "[  <=> ]", "[   <=>]"]
    assert frames[4:7] == ["[  <=> ]", "[ <=>  ]", "[<=>   ]"]
    assert all(len(f) == 8 for f in frames)


def test_render_lines() -> None:
    rows = [row(), row(SERIES_B, 57, None), row("1.2.3", 4, 4, "complete")]
    lines = watch.render_lines(rows, missing=["9.9.9"], width=100, height=30, tick=1, elapsed=12.3)
    assert lines[0] == "oxidicom-py watch: 3 series (1 complete, 0 incomplete, 2 receiving), 12 s"
    first, unknown, done, missing = lines[1:]
    assert first.startswith(f"{AET} {watch.short_uid(SERIES_A)}")
    assert "120/192  62% receiving  [" in first and first.endswith("-]") and "#" in first
    assert "57/?      receiving  [" in unknown and "<=>" in unknown
    assert "4/4 100% complete   [####" in done and done.endswith("#]")
    assert missing == "  waiting for series 9.9.9 (not seen yet)"
    bars = [line.index("[") for line in lines[1:4]]
    assert len(set(bars)) == 1  # columns line up
    assert all(len(line) <= 99 for line in lines)


def test_render_lines_fits_small_terminals() -> None:
    rows = [row(f"1.2.{i}") for i in range(50)]
    lines = watch.render_lines(rows, width=40, height=10)
    assert len(lines) == 9  # never scrolls: fewer lines than the terminal has
    assert lines[-1] == "  ... and 43 more"
    assert all(len(line) <= 39 for line in lines)


def test_short_uid() -> None:
    uid = "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"
    short = watch.short_uid(uid)
    assert len(short) == 24 and short.startswith("1.3.12.") and short.endswith("~200285270.0.0.0")
    assert watch.short_uid("1.2.3") == "1.2.3"


def test_plain_and_summary_lines() -> None:
    when = dt.datetime(2026, 11, 23, 15, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert watch.plain_line(row(), when) == f"2026-11-23T14:00:01Z {AET} {SERIES_A}  received 120/192 receiving"
    assert watch.plain_line(row(received=1, expected=None), when).endswith("received 1/? receiving")
    rows = [row(state="complete"), row(SERIES_B, state="incomplete")]
    assert (
        watch.summary_line(rows, [], EXIT_INCOMPLETE, 3.0, when)
        == "2026-11-23T14:00:01Z summary incomplete: 2 series: 1 complete, 1 incomplete, 0 receiving"
    )
    assert watch.summary_line([], ["1.2"], EXIT_TIMEOUT, 5.0, when).endswith(
        "summary timeout: 0 series: 0 complete, 0 incomplete, 0 receiving after 5 s; not seen: 1.2"
    )


def test_outcome() -> None:
    by_series = Selection(series=frozenset({SERIES_A, SERIES_B}))
    by_study = Selection(studies=frozenset({STUDY}))
    a_done, b_done = row(state="complete"), row(SERIES_B, state="complete")
    assert watch.outcome([], by_study) is None  # nothing found yet
    assert watch.outcome([a_done], by_study) == EXIT_COMPLETE
    assert watch.outcome([a_done], by_series) is None  # SERIES_B named but not seen
    assert watch.outcome([a_done, b_done], by_series) == EXIT_COMPLETE
    assert watch.outcome([a_done, row(SERIES_B, state="incomplete")], by_series) == EXIT_INCOMPLETE
    assert watch.outcome([a_done, row(SERIES_B, state="receiving")], by_series) is None  # e.g. back to receiving


def test_selection_matches() -> None:
    s = Selection(studies=frozenset({STUDY}), pacs=frozenset({AET}))
    assert s.matches(AET, "x", STUDY, "p")
    assert not s.matches("OTHER", "x", STUDY, "p")
    assert not s.matches(AET, "x", "1.2", "p")
    assert Selection(patients=frozenset({PATIENT})).matches("ANY", "x", "y", PATIENT)
