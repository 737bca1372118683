"""Per-association series bookkeeping: the C-FIND, the marker files, and their ordering.

For every series (keyed by its storage folder, as the reference does) of an association:

1. at its first instance, a C-FIND asks the sending PACS for NumberOfSeriesRelatedInstances
   (beside reception, bounded by timeouts); the answer, or ``unknown``, becomes the empty
   file ``SERVICES/PACS/org.fnndsc.oxidicom/{series folder}/{association}/NumberOfSeriesRelatedInstances={n}``
   and a row under PACS ``org.fnndsc.oxidicom`` (ProtocolName = key, SeriesDescription = value);
2. when the association ends, once every other row of that series from that association has
   COMMITTED (their futures resolved) and the C-FIND row too, the file
   ``.../OxidicomAttemptedPushCount={N}`` is written and registered, in the same transaction
   as the series' end-of-association progress update. So a client that sees the push-count row
   sees every row it counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import posixpath
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from oxidicom_py.completion import progress
from oxidicom_py.completion.events import SeriesEnded
from oxidicom_py.dicom.events import AssociationInfo
from oxidicom_py.dicom.once import OncePer
from oxidicom_py.identity import MARKER_PACS
from oxidicom_py.net.cfind_scu import SeriesCount, query_series_count
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.batch_items import InTransaction
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.storage.writer import FilesRoot
from oxidicom_py.telemetry import metrics, tracing
from oxidicom_py.telemetry.logs import ContextLogger

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("oxidicom_py.completion")
_unaddressed_logged = OncePer()
"""Calling AE titles without an OXIDICOM_PACS_ADDRESS entry already warned about."""

NUMBER_OF_SERIES_RELATED_INSTANCES = "NumberOfSeriesRelatedInstances"
ATTEMPTED_PUSH_COUNT = "OxidicomAttemptedPushCount"


@dataclass(frozen=True, slots=True)
class CFindSettings:
    our_aet: str
    pacs_address: Mapping[str, tuple[str, int]]
    connect_timeout: float
    response_timeout: float
    requeries: int = 3
    """Further C-FINDs allowed per series and association, the last kept for its end."""


class SeriesSink(Protocol):
    """Told, per association, how each of its series goes (what oxidicom v3/v4 tells CUBE:
    :class:`oxidicom_py.cube.sink.CubeSink`). Called on the event loop; must not block."""

    def stored(self, info: AssociationInfo, first: PacsFileRow, count: int) -> None:
        """A file of the series of ``first`` is in place; ``count`` stored in this association so far."""

    def refused(self, info: AssociationInfo, series_uid: str, problem: str) -> None:
        """An instance of ``series_uid`` was answered with a failure status."""

    def finished(self, info: AssociationInfo, first: PacsFileRow, folder: str, count: int) -> None:
        """The association is over: ``count`` files of the series are in ``folder``."""


@dataclass(slots=True)
class _Series:
    folder: str
    pacs: str
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: dt.date
    attempted: int = 0
    started_registered: bool = False
    rows: list[asyncio.Future[bool]] = field(default_factory=list)
    count_task: asyncio.Task[None] | None = None
    count: int | None = None
    """The newest count the PACS gave."""
    asks: int = 0
    marker_value: str | None = None
    """The value of the newest NumberOfSeriesRelatedInstances marker written."""
    first: PacsFileRow | None = None
    """The series' first instance in this association (what a :class:`SeriesSink` reports)."""


def marker_path(series_folder: str, ulid: str, key: str, value: str) -> str:
    return f"SERVICES/PACS/{MARKER_PACS}/{series_folder}/{ulid}/{key}={value}"


class Tracker:
    """Process-wide: owns the C-FIND executor and the tasks still finishing associations."""

    def __init__(
        self,
        files: FilesRoot,
        registrar: Registrar,
        cfind: CFindSettings,
        cfind_executor: Executor,
        files_executor: Executor | None,
        sink: SeriesSink | None = None,
    ) -> None:
        self.sink = sink
        self.files = files
        self.registrar = registrar
        self.cfind = cfind
        self.cfind_executor = cfind_executor
        self.files_executor = files_executor
        self.tasks: set[asyncio.Task[None]] = set()

    def association(self, info: AssociationInfo, span: Span | None = None) -> AssociationSeries:
        """``span``: the association's trace span (C-FIND spans become its children)."""
        return AssociationSeries(self, info, span)

    def spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("series bookkeeping failed", exc_info=task.exception())

    async def idle(self) -> None:
        """Wait until every association's markers are written and registered."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def write_marker(self, relative: str) -> None:
        if self.files_executor is not None:
            await asyncio.get_running_loop().run_in_executor(self.files_executor, self.files.write_empty, relative)
        else:
            self.files.write_empty(relative)


class AssociationSeries:
    """The series seen in one association."""

    def __init__(self, tracker: Tracker, info: AssociationInfo, span: Span | None = None) -> None:
        self.tracker = tracker
        self.info = info
        self.span = span
        self.series: dict[str, _Series] = {}
        self.log = ContextLogger(log, {"association": info.ulid, "calling_ae": info.calling_ae})
        self.address = tracker.cfind.pacs_address.get(info.calling_ae)
        self._current: _Series | None = None

    def _no_address(self) -> None:
        """Said once per calling AE title at warning level (then at debug): every association of
        that PACS would repeat it, and echo-only associations have no series to count."""
        level = logging.WARNING if _unaddressed_logged.first(self.info.calling_ae) else logging.DEBUG
        self.log.log(level, "OXIDICOM_PACS_ADDRESS has no entry for this calling AE title: counts are unknown")

    def attempted(self, row: PacsFileRow) -> None:
        """An instance of this association passed validation (it counts in the push count).
        Its :meth:`submit`, if it is stored, follows before the association's next instance."""
        folder = posixpath.dirname(row.fname)
        s = self.series.get(folder)
        if s is None:
            s = _Series(
                folder,
                row.pacs_identifier,
                row.SeriesInstanceUID,
                row.StudyInstanceUID,
                row.PatientID,
                row.StudyDate,
                first=row,
            )
            self.series[folder] = s
            if self.address is None:
                self._no_address()
            s.count_task = self.tracker.spawn(self._ask(s))
        s.attempted += 1
        self._current = s
        if (
            s.count is not None
            and s.attempted > s.count
            and self.address is not None
            and s.asks < self.tracker.cfind.requeries  # one is kept for the association's end
            and (s.count_task is None or s.count_task.done())
        ):
            # more arrived than the PACS said: it may still be receiving the series, ask again
            s.count_task = self.tracker.spawn(self._ask(s))

    def submit(self, row: PacsFileRow) -> asyncio.Future[bool]:
        """Register the row of the instance :meth:`attempted` last: with the SQL that opens its
        series in progress if it is the series' first; its commit is awaited at the end."""
        s = self._current
        assert s is not None, "submit follows attempted"
        extra: InTransaction | None = None
        if not s.started_registered:
            s.started_registered = True
            extra = functools.partial(
                progress.association_started,
                pacs=s.pacs,
                series=s.series_uid,
                study=s.study_uid,
                patient=s.patient_id,
                ulid=self.info.ulid,
                called=self.info.called_ae,
            )
        future = self.tracker.registrar.submit(row, extra)
        s.rows.append(future)
        sink = self.tracker.sink
        if sink is not None:
            assert s.first is not None
            sink.stored(self.info, s.first, len(s.rows))
        return future

    def refused(self, series_uid: str, problem: str) -> None:
        if self.tracker.sink is not None:
            self.tracker.sink.refused(self.info, series_uid, problem)

    def ended(self, outcome: str) -> None:
        released = outcome == "released"
        sink = self.tracker.sink
        for s in self.series.values():
            if sink is not None and s.first is not None:
                sink.finished(self.info, s.first, s.folder, len(s.rows))
            self.tracker.spawn(self._attempted_push_count(s, released))

    # -- the two markers --------------------------------------------------------------------
    def _marker_row(self, s: _Series, key: str, value: str) -> PacsFileRow:
        return PacsFileRow(
            fname=marker_path(s.folder, self.info.ulid, key, value),
            pacs_identifier=MARKER_PACS,
            PatientID=s.patient_id,
            StudyDate=s.study_date,
            StudyInstanceUID=s.study_uid,
            SeriesInstanceUID=s.series_uid,
            ProtocolName=key,
            SeriesDescription=value,
            association=self.info.ulid,
        )

    async def _count(self, s: _Series) -> SeriesCount:
        if self.address is None:
            return SeriesCount(None, "OXIDICOM_PACS_ADDRESS not configured for this AE title", 0.0)
        host, port = self.address
        c = self.tracker.cfind
        query = functools.partial(
            query_series_count,
            host,
            port,
            calling_ae=c.our_aet,
            called_ae=self.info.calling_ae,
            study_uid=s.study_uid,
            series_uid=s.series_uid,
            connect_timeout=c.connect_timeout,
            response_timeout=c.response_timeout,
        )
        return await asyncio.get_running_loop().run_in_executor(self.tracker.cfind_executor, query)

    async def _ask(self, s: _Series) -> None:
        """Ask the PACS for the series' count; write the marker (a new one when the value
        changed) and set ``expected``, recording the question in the progress row."""
        s.asks += 1
        span = None
        if self.address is not None:
            span = tracing.start_span(
                tracing.CFIND,
                {
                    "oxidicom.pacs.address": f"{self.address[0]}:{self.address[1]}",
                    "dicom.called_ae_title": self.info.calling_ae,
                    "dicom.StudyInstanceUID": s.study_uid,
                    "dicom.SeriesInstanceUID": s.series_uid,
                },
                parent=self.span,
                kind="CLIENT",
            )
        result = await self._count(s)
        value = "unknown" if result.count is None else str(result.count)
        if self.address is not None:
            metrics.CFIND.labels("unknown" if result.count is None else "ok").inc()
            metrics.CFIND_SECONDS.observe(result.elapsed)
        if span is not None:
            span.set_attribute("oxidicom.cfind.result", value)
            if result.error:
                span.set_attribute("oxidicom.cfind.error", result.error)
                tracing.set_error(span, result.error)
            span.end()
        self.log.info(
            "NumberOfSeriesRelatedInstances=%s",
            value,
            extra={
                "SeriesInstanceUID": s.series_uid,
                "cfind_error": result.error,
                "cfind_seconds": result.elapsed,
                "ask": s.asks,
                "arrived": s.attempted,
            },
        )
        if result.count is None and s.marker_value is not None:
            return  # a later question that got no answer: the count we have stands
        if result.count is not None:
            s.count = result.count
        row = self._marker_row(s, NUMBER_OF_SERIES_RELATED_INSTANCES, value)
        if value != s.marker_value:
            await self.tracker.write_marker(row.fname)
            s.marker_value = value
        extra = None
        ended: list[SeriesEnded] = []
        if result.count is not None:
            extra = functools.partial(
                progress.set_expected,
                pacs=s.pacs,
                series=s.series_uid,
                study=s.study_uid,
                patient=s.patient_id,
                expected=result.count,
                ended=ended,
            )
        await self.tracker.registrar.submit(row, extra, urgent=True)
        progress.announce(ended)

    async def _attempted_push_count(self, s: _Series, released: bool) -> None:
        # Every other row of this series from this association must be committed first.
        self.tracker.registrar.flush()  # the association is over: its last rows need not linger
        if s.count_task is not None:
            await asyncio.gather(s.count_task, return_exceptions=True)
        if (
            self.address is not None
            and s.count is not None
            and s.attempted > s.count
            and s.asks <= self.tracker.cfind.requeries
        ):
            # the count was taken before the last instance and is below what arrived: ask once
            # more, now that the association is over (only a count asked now can be trusted)
            s.count_task = self.tracker.spawn(self._ask(s))
            await asyncio.gather(s.count_task, return_exceptions=True)
        await asyncio.gather(*s.rows, return_exceptions=True)
        row = self._marker_row(s, ATTEMPTED_PUSH_COUNT, str(s.attempted))
        await self.tracker.write_marker(row.fname)
        ended: list[SeriesEnded] = []
        extra = functools.partial(
            progress.association_ended,
            pacs=s.pacs,
            series=s.series_uid,
            ulid=self.info.ulid,
            released=released,
            ended=ended,
        )
        with contextlib.suppress(Exception):  # the registrar logs rejections itself
            await self.tracker.registrar.submit(row, extra, urgent=True)
            progress.announce(ended)
        self.log.info(
            "OxidicomAttemptedPushCount=%d registered",
            s.attempted,
            extra={"SeriesInstanceUID": s.series_uid, "released": released},
        )
