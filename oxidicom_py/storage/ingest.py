"""From dataset fragments to a stored, registered instance.

For each C-STORE the upper layer opens an :class:`IncomingInstance`: the fragments go
straight into a staged file behind a Part 10 header, the first bytes are walked for the
header elements, and at the last fragment the instance is validated, renamed into its
final path and handed to the registrar. Success is answered only after the rename (and
fsync, when on); registration follows asynchronously and is retried until it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from oxidicom_py.dicom import dimse
from oxidicom_py.dicom.contexts import dataset_encoding
from oxidicom_py.dicom.events import AssociationInfo, StoreResult
from oxidicom_py.dicom.negotiation import AcceptedContext
from oxidicom_py.record import PacsFileRow
from oxidicom_py.storage import header
from oxidicom_py.storage.instance_record import (
    FNAME_MAX,
    check_required,
    command_refusal,
    dataset_mismatch,
    make_row,
    values_of,
)
from oxidicom_py.storage.naming import fitted_instance_path, instance_path
from oxidicom_py.storage.part10 import file_header
from oxidicom_py.storage.writer import FilesRoot, StagedFile
from oxidicom_py.telemetry import metrics
from oxidicom_py.telemetry.logs import ContextLogger

log = logging.getLogger("oxidicom_py.storage")

MAX_HEADER_PREFIX = 64 << 20
"""Past this many bytes without reaching (0020,0013), the header is read from the staged file."""


class AssociationObserver(Protocol):
    """What sits above storage for one association (:class:`oxidicom_py.flow.AssociationFlow`):
    told, in order, what storage did; storage knows nothing of the registry or of completion."""

    def validated(self, row: PacsFileRow) -> None:
        """An instance passed validation and is about to be stored (it counts as attempted)."""

    def stored(self, row: PacsFileRow) -> None:
        """An instance is in its final place and answered Success: its row is to be registered."""

    def ended(self, outcome: str, counts: AssociationCounts) -> None:
        """The association is over and every instance it acknowledged was handed on."""

    def refused(self, series_uid: str, problem: str) -> None:
        """An instance of ``series_uid`` (``UNKNOWN`` without one) was answered with a failure."""


Observe = Callable[[AssociationInfo], AssociationObserver]


@dataclass(slots=True)
class AssociationCounts:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    failed: int = 0
    bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class StorageStage:
    """Process-wide: where files go, who is told about each association, how many are open."""

    def __init__(self, files: FilesRoot, executor: Executor | None, observe: Observe | None = None) -> None:
        self.files = files
        self.executor = executor
        self.observe = observe
        self.active: set[AssociationStorage] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def association(self, info: AssociationInfo) -> AssociationStorage:
        store = AssociationStorage(self, info)
        self.active.add(store)
        self.idle.clear()
        return store

    def _closed(self, store: AssociationStorage) -> None:
        self.active.discard(store)
        if not self.active:
            self.idle.set()


class AssociationStorage:
    """The storage side of one association."""

    def __init__(self, ingest: StorageStage, info: AssociationInfo) -> None:
        self.ingest = ingest
        self.info = info
        self.counts = AssociationCounts()
        self._inflight = 0  # instances being committed off the event loop
        self._ended = False
        self._outcome = ""
        self.log = ContextLogger(log, {"association": info.ulid, "calling_ae": info.calling_ae})
        self._debug = log.isEnabledFor(logging.DEBUG)  # asked once: a line per instance is only for debugging
        ae = metrics.ae_label(info.calling_ae)
        self.m_received = metrics.INSTANCES_RECEIVED.labels(ae)
        self.m_stored = metrics.INSTANCES_STORED.labels(ae)
        self.m_rejected = metrics.INSTANCES_REJECTED.labels(ae)
        self.m_bytes = metrics.RECEIVED_BYTES.labels(ae)
        metrics.ASSOCIATIONS.labels(ae).inc()
        metrics.ASSOCIATIONS_ACTIVE.inc()
        self._started = time.monotonic()
        self.observer = ingest.observe(info) if ingest.observe is not None else None
        self._loop = asyncio.get_running_loop()

    def begin_instance(self, command: dimse.Command, context: AcceptedContext) -> IncomingInstance:
        self.counts.received += 1
        self.m_received.inc()
        return IncomingInstance(self, command, context)

    def closed(self, outcome: str) -> None:
        self._ended = True
        self._outcome = outcome
        if self._inflight == 0:
            self._finish()

    def hand_on_after_response(self, path: str, values: dict[str, str | None], study_date: dt.date) -> None:
        """The file is in place and answered Success: build its row and tell the observer on the
        loop's next turn, after the C-STORE-RSP is written (the sender does not wait for the
        Python that only registration needs). The association's end waits for it."""
        if self.observer is None:
            return
        self._inflight += 1
        self._loop.call_soon(self._hand_on, path, values, study_date)

    def _hand_on(self, path: str, values: dict[str, str | None], study_date: dt.date) -> None:
        try:
            row = make_row(path, self.info.calling_ae, values, study_date, self.info.ulid)
            assert self.observer is not None
            self.observer.validated(row)
            self.observer.stored(row)
            if self._debug:
                self.log.debug("stored", extra={"path": path})
        except Exception:  # a bug: the file is safe and answered; reconciliation registers it
            self.log.exception(
                "instance stored but not handed to registration (reconciliation at the next start registers it)",
                extra={"file": path.rsplit("/", 1)[-1]},
            )
        finally:
            self._commit_done()

    def _commit_started(self) -> None:
        self._inflight += 1

    def _commit_done(self) -> None:
        self._inflight -= 1
        if self._ended and self._inflight == 0:
            self._finish()

    def _finish(self) -> None:
        """The association is over and every instance it acknowledged has been handed on."""
        outcome = self._outcome
        if self.observer is not None:
            self.observer.ended(outcome, self.counts)
        metrics.ASSOCIATIONS_ACTIVE.dec()
        metrics.ASSOCIATION_DURATION.observe(time.monotonic() - self._started)
        c = self.counts
        self.log.info(
            "association ended: %s",
            outcome,
            extra={
                "outcome": outcome,
                "received": c.received,
                "stored": c.stored,
                "rejected": c.rejected,
                "failed": c.failed,
                "bytes": c.bytes,
            },
        )
        self.ingest._closed(self)


class IncomingInstance:
    __slots__ = (
        "_implicit",
        "_little",
        "_prefix",
        "_raw",
        "command",
        "context",
        "error",
        "refusal",
        "staged",
        "store",
    )

    def __init__(self, store: AssociationStorage, command: dimse.Command, context: AcceptedContext) -> None:
        self.store = store
        self.command = command
        self.context = context
        self._implicit, self._little = dataset_encoding(context.transfer_syntax)
        self._prefix: bytearray | None = bytearray()
        self._raw: dict[str, bytes] | None = None
        self.error: str | None = None
        self.staged: StagedFile | None = None
        self.refusal = command_refusal(command, context)
        """A failure status for a command at odds with its context: its dataset is read and dropped."""
        if self.refusal is not None:
            self._prefix = None
            return
        try:
            self.staged = store.ingest.files.stage(
                file_header(
                    command.affected_sop_class,
                    command.affected_sop_instance,
                    context.transfer_syntax,
                    store.info.calling_ae,
                )
            )
        except OSError as e:
            self._fail(f"cannot create a staging file: {e}")

    def _fail(self, why: str) -> None:
        self.error = why
        if self.staged is not None:
            with contextlib.suppress(OSError):
                self.staged.discard()
            self.staged = None

    def write(self, data: memoryview) -> None:
        if self.error is not None or self.refusal is not None:
            return
        assert self.staged is not None
        try:
            self.staged.write(data)
        except OSError as e:
            self._fail(f"cannot write the staging file: {e}")
            return
        if self._prefix is not None:
            self._prefix += data
            try:
                self._raw = header.walk(self._prefix, implicit=self._implicit, little=self._little, complete=False)
                self._prefix = None
            except header.NeedMore:
                if len(self._prefix) > MAX_HEADER_PREFIX:
                    self._prefix = None  # read it from the staged file at the end
            except header.HeaderError:
                self._prefix = None

    def abort(self, reason: str) -> None:
        self.store.log.warning(
            "instance not completed (%s): nothing kept",
            reason,
            extra={"sop_instance": self.command.affected_sop_instance},
        )
        self._fail(reason)

    def _failed(self) -> StoreResult:
        """The instance could not be written: Out of Resources, with the reason."""
        self.store.counts.failed += 1
        self.store.m_rejected.inc()
        self.store.log.error(
            "instance not stored: %s", self.error, extra={"sop_instance": self.command.affected_sop_instance}
        )
        return StoreResult(dimse.OUT_OF_RESOURCES, (self.error or "storage failure")[:64])

    def finish(self) -> StoreResult | Awaitable[StoreResult]:
        counts = self.store.counts
        if self.refusal is not None:
            return self._reject(*self.refusal)
        if self.error is not None or self.staged is None:
            return self._failed()
        staged = self.staged
        received = max(0, staged.size - staged.header_size)  # the dataset, as it came over the network
        counts.bytes += received
        self.store.m_bytes.inc(received)
        if self._raw is None and self._prefix is not None:
            try:
                self._raw = header.walk(self._prefix, implicit=self._implicit, little=self._little, complete=True)
            except header.HeaderError:
                self._raw = None
        self._prefix = None
        values = self._values()
        problem, study_date = check_required(values)
        if problem is not None:
            return self._reject(problem, values=values)
        assert study_date is not None
        mismatch = dataset_mismatch(self.command, values)
        if mismatch is not None:
            return self._reject(*mismatch, values=values)
        aet = self.store.info.calling_ae
        try:
            path, shortened = fitted_instance_path(aet, values, FNAME_MAX)
        except ValueError as e:
            return self._reject(f"no safe storage path: {e}", values=values)
        if len(path) > FNAME_MAX:
            return self._reject(f"storage path of {len(path)} characters, over the {FNAME_MAX} of fname", values=values)
        if shortened:
            self.store.log.warning(
                "storage path shortened to fit fname: descriptive values cut",
                extra={
                    "sop_instance": self.command.affected_sop_instance,
                    "file": path.rsplit("/", 1)[-1],
                    "length": len(path),
                    "unshortened_length": len(instance_path(aet, values)),
                },
            )
        store = self.store
        if store.ingest.files.fsync and store.ingest.executor is not None:
            row = make_row(path, aet, values, study_date, store.info.ulid)
            if store.observer is not None:
                store.observer.validated(row)
            return self._commit_in_executor(staged, path, row)
        try:
            staged.commit(path)
        except OSError as e:
            self._fail(f"cannot publish the file: {e}")
            if store.observer is not None:  # it still counts as attempted
                row = make_row(path, aet, values, study_date, store.info.ulid)
                store.observer.validated(row)
                store.observer.refused(row.SeriesInstanceUID, self.error or "")
            return self._failed()
        store.counts.stored += 1
        store.m_stored.inc()
        self.staged = None
        store.hand_on_after_response(path, values, study_date)
        return _SUCCESS

    async def _commit_in_executor(self, staged: StagedFile, path: str, row: PacsFileRow) -> StoreResult:
        loop = asyncio.get_running_loop()
        self.store._commit_started()
        try:
            await loop.run_in_executor(self.store.ingest.executor, staged.commit, path)
        except OSError as e:
            self._fail(f"cannot publish the file: {e}")
            if self.store.observer is not None:
                self.store.observer.refused(row.SeriesInstanceUID, self.error or "")
            return self._failed()
        else:
            return self._stored(row)
        finally:
            self.store._commit_done()

    def _stored(self, row: PacsFileRow) -> StoreResult:
        store = self.store
        store.counts.stored += 1
        store.m_stored.inc()
        self.staged = None
        if store.observer is not None:
            store.observer.stored(row)
        return _SUCCESS

    def _values(self) -> dict[str, str | None]:
        return values_of(self._raw, self.staged.path if self.staged else None)

    def _reject(
        self, problem: str, status: int = dimse.CANNOT_UNDERSTAND, *, values: dict[str, str | None] | None = None
    ) -> StoreResult:
        """Refuse the instance; with its header ``values``, the observer is told its series."""
        if values is not None and self.store.observer is not None:
            self.store.observer.refused(values.get("SeriesInstanceUID") or "UNKNOWN", problem)
        counts = self.store.counts
        counts.rejected += 1
        self.store.m_rejected.inc()
        counts.reasons[problem] = counts.reasons.get(problem, 0) + 1
        self.store.log.error(
            "instance rejected: %s", problem, extra={"sop_instance": self.command.affected_sop_instance}
        )
        self._fail(problem)
        return StoreResult(status, problem[:64])


_SUCCESS = StoreResult(dimse.SUCCESS)
