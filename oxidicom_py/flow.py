"""One association above storage, registry and completion: what storage reports becomes rows and
series bookkeeping. Data flows one way: the acceptor feeds storage, storage tells this object,
this object hands rows to the registrar and updates to the tracker.

The ordering guarantees of CUSTOM_SPEC.md live in one place, :mod:`oxidicom_py.completion.tracker`:
every row of a series is submitted with the tracker's in-transaction hook (which counts it in
the progress row, under the series' advisory lock, in the row's own transaction), and the
push-count marker of an association is submitted only after every row it counts has committed.
"""

from __future__ import annotations

import asyncio

from oxidicom_py.completion.tracker import AssociationSeries, Tracker
from oxidicom_py.dicom.events import AssociationInfo
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.storage.ingest import AssociationCounts
from oxidicom_py.telemetry import tracing


class Pipeline:
    """Process-wide: the registrar and tracker every association's rows go to, and the
    association spans still waiting for their rows."""

    def __init__(self, registrar: Registrar, tracker: Tracker | None) -> None:
        self.registrar = registrar
        self.tracker = tracker
        self.span_tasks: set[asyncio.Task[None]] = set()
        """Association spans waiting for their rows' registration (only while tracing is on)."""

    def observe(self, info: AssociationInfo) -> AssociationFlow:
        return AssociationFlow(self, info)

    async def spans_ended(self) -> None:
        """Wait until every association span has ended (at drain, after the registrar closed)."""
        while self.span_tasks:
            await asyncio.gather(*list(self.span_tasks), return_exceptions=True)


class AssociationFlow:
    """Storage's observer for one association (:class:`oxidicom_py.storage.ingest.AssociationObserver`)."""

    __slots__ = ("info", "pipeline", "registrations", "series", "span")

    def __init__(self, pipeline: Pipeline, info: AssociationInfo) -> None:
        self.pipeline = pipeline
        self.info = info
        self.span = tracing.start_span(
            tracing.ASSOCIATION,
            {
                "oxidicom.association.ulid": info.ulid,
                "dicom.calling_ae_title": info.calling_ae,
                "dicom.called_ae_title": info.called_ae,
                "client.address": info.peer[0],
                "client.port": info.peer[1],
            },
            kind="SERVER",
        )
        self.registrations: list[asyncio.Future[bool]] | None = [] if self.span is not None else None
        tracker = pipeline.tracker
        self.series: AssociationSeries | None = tracker.association(info, self.span) if tracker is not None else None

    def validated(self, row: PacsFileRow) -> None:
        if self.series is not None:
            self.series.attempted(row)

    def stored(self, row: PacsFileRow) -> None:
        series = self.series
        future = series.submit(row) if series is not None else self.pipeline.registrar.submit(row)
        if self.registrations is not None:
            self.registrations.append(future)

    def refused(self, series_uid: str, problem: str) -> None:
        if self.series is not None:
            self.series.refused(series_uid, problem)

    def ended(self, outcome: str, counts: AssociationCounts) -> None:
        if self.series is not None:
            self.series.ended(outcome)
        if self.span is not None:
            task = asyncio.get_running_loop().create_task(self._end_span(outcome, counts))
            self.pipeline.span_tasks.add(task)
            task.add_done_callback(self.pipeline.span_tasks.discard)

    async def _end_span(self, outcome: str, c: AssociationCounts) -> None:
        """End the association's span once its rows are registered (to report duplicates)."""
        assert self.span is not None and self.registrations is not None
        results = await asyncio.gather(*self.registrations, return_exceptions=True)
        self.span.set_attributes(
            {
                "oxidicom.association.outcome": outcome,
                "oxidicom.instances.received": c.received,
                "oxidicom.instances.stored": c.stored,
                "oxidicom.instances.rejected": c.rejected,
                "oxidicom.instances.failed": c.failed,
                "oxidicom.instances.duplicate": sum(1 for r in results if r is False),
                "oxidicom.instances.registration_failed": sum(1 for r in results if isinstance(r, BaseException)),
                "oxidicom.bytes_received": c.bytes,
            }
        )
        if outcome != "released":
            tracing.set_error(self.span, outcome)
        self.span.end()
