"""One association above storage, registry and completion: what storage reports becomes rows and
series bookkeeping. Data flows one way: the acceptor feeds storage, storage tells this object,
this object hands rows to the registrar and updates to the tracker.

The ordering guarantees of CUSTOM_SPEC.md live in one place, :mod:`oxidicom_py.completion.tracker`:
every row of a series is submitted with the tracker's in-transaction hook (which counts it in
the progress row, under the series' advisory lock, in the row's own transaction), and the
push-count marker of an association is submitted only after every row it counts has committed.

When an association is over and its rows are registered, its record (``oxidicom_associations``)
rides in the next registration batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging

from oxidicom_py.completion.tracker import AssociationSeries, Tracker
from oxidicom_py.dicom.events import AssociationInfo, AssociationRejected
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry import associations
from oxidicom_py.registry.associations import AssociationRecord
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.storage.ingest import AssociationCounts
from oxidicom_py.telemetry import tracing
from oxidicom_py.telemetry.logs import ContextLogger

log = logging.getLogger("oxidicom_py.registry")


class Pipeline:
    """Process-wide: the registrar and tracker every association's rows go to, and the ended
    associations still waiting for their rows (to write their record and end their span)."""

    def __init__(self, registrar: Registrar, tracker: Tracker | None) -> None:
        self.registrar = registrar
        self.tracker = tracker
        self.finishing: set[asyncio.Task[None]] = set()
        """Ended associations waiting for their rows' registration."""

    def observe(self, info: AssociationInfo) -> AssociationFlow:
        return AssociationFlow(self, info)

    def rejected(self, event: AssociationRejected, ulid: str, peer: tuple[str, int], tls_subject: str) -> None:
        """A permanent A-ASSOCIATE-RJ (wrong AE titles): recorded too, as the on-call person's
        first question is often why a PACS's push never arrived."""
        now = dt.datetime.now(dt.UTC)
        record = AssociationRecord(ulid, event.calling_ae, event.called_ae, peer, now, tls_subject, ended=now)
        record.outcome = f"rejected: {event.reason}"
        record.first_error = event.detail
        write_record(self.registrar, record)

    async def finished(self) -> None:
        """Wait until every ended association has its record written and its span ended."""
        while self.finishing:
            await asyncio.gather(*list(self.finishing), return_exceptions=True)


def write_record(registrar: Registrar, record: AssociationRecord) -> None:
    """Hand ``record`` to the registrar's next batch (its close waits for it); a record that
    cannot be written is logged."""

    def not_written(error: object) -> None:
        ContextLogger(log, {"association": record.ulid}).warning("association record not written: %s", error)

    def settled(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (error := future.exception()) is not None:
            not_written(error)

    try:
        registrar.submit_statement(functools.partial(associations.write, record=record)).add_done_callback(settled)
    except RuntimeError as e:  # the registrar is closing
        not_written(e)


class AssociationFlow:
    """Storage's observer for one association (:class:`oxidicom_py.storage.ingest.AssociationObserver`)."""

    __slots__ = ("info", "last_series", "pipeline", "record", "registrations", "series", "span")

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
        self.registrations: list[asyncio.Future[bool]] = []
        self.record = AssociationRecord(
            info.ulid, info.calling_ae, info.called_ae, info.peer, dt.datetime.now(dt.UTC), info.tls_subject
        )
        self.last_series = ""
        tracker = pipeline.tracker
        self.series: AssociationSeries | None = tracker.association(info, self.span) if tracker is not None else None

    def validated(self, row: PacsFileRow) -> None:
        if self.series is not None:
            self.series.attempted(row)

    def stored(self, row: PacsFileRow) -> None:
        series = self.series
        future = series.submit(row) if series is not None else self.pipeline.registrar.submit(row)
        self.registrations.append(future)
        if row.SeriesInstanceUID != self.last_series:
            self.last_series = row.SeriesInstanceUID
            if row.SeriesInstanceUID not in self.record.series_uids:
                self.record.series_uids.append(row.SeriesInstanceUID)

    def refused(self, series_uid: str, problem: str) -> None:
        if not self.record.first_error:
            self.record.first_error = problem
        if self.series is not None:
            self.series.refused(series_uid, problem)

    def ended(self, outcome: str, counts: AssociationCounts) -> None:
        if self.series is not None:
            self.series.ended(outcome)
        task = asyncio.get_running_loop().create_task(self._finish(outcome, counts))
        self.pipeline.finishing.add(task)
        task.add_done_callback(self.pipeline.finishing.discard)

    async def _finish(self, outcome: str, c: AssociationCounts) -> None:
        """Once the association's rows are registered (the duplicates known): end its span and
        hand its record to the registrar."""
        results = await asyncio.gather(*self.registrations, return_exceptions=True)
        record = self.record
        record.ended = dt.datetime.now(dt.UTC)
        record.outcome = outcome
        record.received, record.stored, record.rejected, record.failed = c.received, c.stored, c.rejected, c.failed
        record.bytes = c.bytes
        record.duplicate = sum(1 for r in results if r is False)
        record.unregistered = sum(1 for r in results if isinstance(r, BaseException))
        if not record.first_error and c.reasons:
            record.first_error = next(iter(c.reasons))
        self._end_span(record)
        write_record(self.pipeline.registrar, record)

    def _end_span(self, record: AssociationRecord) -> None:
        if self.span is None:
            return
        self.span.set_attributes(
            {
                "oxidicom.association.outcome": record.outcome,
                "oxidicom.instances.received": record.received,
                "oxidicom.instances.stored": record.stored,
                "oxidicom.instances.rejected": record.rejected,
                "oxidicom.instances.failed": record.failed,
                "oxidicom.instances.duplicate": record.duplicate,
                "oxidicom.instances.registration_failed": record.unregistered,
                "oxidicom.bytes_received": record.bytes,
            }
        )
        if record.outcome != "released":
            tracing.set_error(self.span, record.outcome)
        self.span.end()
