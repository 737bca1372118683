"""What ``oxidicom-py watch`` shows: the selected series (the model) and how they are drawn, as
plain lines or live progress bars (pure rendering functions and the two views)."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TextIO

TERMINAL_STATES: Final = frozenset({"complete", "incomplete"})

SPINNER_INTERVAL: Final = 0.25
"""Redraw period of the terminal view (animates the marker of series of unknown size)."""

EXIT_COMPLETE: Final = 0
EXIT_INCOMPLETE: Final = 1
EXIT_TIMEOUT: Final = 3


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
