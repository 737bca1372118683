"""What completion tells the stages after it (processing, in the issues to come)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

END_REASONS = ("released", "aborted", "quiescence", "count")
"""Why a series ended: its last open association was released or aborted, it went quiet for
``OXIDICOM_SERIES_QUIESCENCE``, or it received the count the PACS gave."""


@dataclass(frozen=True, slots=True)
class SeriesEnded:
    """A series' progress row left ``receiving``: committed, told once per end (a series that
    reopens and ends again is told again)."""

    pacs: str
    series_uid: str
    state: str
    """``complete`` or ``incomplete``."""
    reason: str
    """One of :data:`END_REASONS`."""


OnSeriesEnded = Callable[[SeriesEnded], None]

OnEndInTransaction = Callable[["psycopg.AsyncConnection", Sequence[SeriesEnded]], Awaitable[None]]
"""Runs inside the transaction that ends the series, before it commits (it may run again if
that transaction is retried, and never counts if it rolls back)."""
