"""LONK ("Light Oxidicom NotifiKations"): the NATS subject of a series and its three payloads,
and the per-subject rate limit oxidicom applies to progress counts.

Facts from oxidicom (``lonk.rs``, ``lonk_publisher.rs``, ``limiter.rs``, ``messenger.rs``) and
CUBE (``pacsfiles/lonk.py``): the subject is ``{root}.{pacs_name}.{SeriesInstanceUID}`` with
`` ``, ``.``, ``*`` and ``>`` in both parts turned into ``_`` and NUL removed; a progress
message is ``0x01`` and the count as a little-endian u32, an error ``0x02`` and UTF-8 text,
done the single byte ``0x00``. Per association and series: the first count is always sent,
later ones at most once per interval (a count is dropped when the subject's last limited send
was less than an interval ago), the final count and done always, errors always.
"""

from __future__ import annotations

from typing import Final

PROGRESS: Final = 0x01
ERROR: Final = 0x02
DONE: Final = b"\x00"

_SUBJECT_TABLE: Final = str.maketrans({" ": "_", ".": "_", "*": "_", ">": "_", "\0": None})


def subject_of(root: str, pacs_name: str, series_uid: str) -> str:
    return f"{root}.{pacs_name.translate(_SUBJECT_TABLE)}.{series_uid.translate(_SUBJECT_TABLE)}"


def progress_payload(count: int) -> bytes:
    return bytes((PROGRESS,)) + min(count, 0xFFFFFFFF).to_bytes(4, "little")


def error_payload(text: str) -> bytes:
    return bytes((ERROR,)) + text.encode("utf-8", "replace")


def decode(payload: bytes) -> tuple[str, int | str | None]:
    """``("progress", n)``, ``("error", text)`` or ``("done", None)`` (for clients and tests)."""
    if payload == DONE:
        return "done", None
    if len(payload) == 5 and payload[0] == PROGRESS:
        return "progress", int.from_bytes(payload[1:], "little")
    if payload[:1] == bytes((ERROR,)):
        return "error", payload[1:].decode("utf-8", "replace")
    raise ValueError(f"not a LONK payload: {payload!r}")


class SubjectLimiter:
    """At most one limited send per subject per ``interval`` seconds; a subject is forgotten
    when its series ends in the association (its next count starts afresh)."""

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, subject: str, now: float) -> bool:
        last = self._last.get(subject)
        if last is not None and now - last < self.interval:
            return False
        self._last[subject] = now
        return True

    def forget(self, subject: str) -> None:
        self._last.pop(subject, None)
