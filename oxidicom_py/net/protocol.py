"""One association on asyncio: the thin adapter around :class:`~oxidicom_py.dicom.acceptor.AcceptorMachine`.

It owns what the machine must not: the transport (writes, close, pause/resume while an
instance is being stored), one timer armed at the machine's deadline, TCP options
(TCP_NODELAY; TCP_QUICKACK when a read stops inside a PDU), the network allow-list and the
metrics. Events go to the association's handler: an :class:`InstanceSink` per C-STORE.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from ulid import ULID

from oxidicom_py.dicom import acse, dimse
from oxidicom_py.dicom.acceptor import AcceptorMachine
from oxidicom_py.dicom.config import AcceptorConfig, Admission
from oxidicom_py.dicom.events import (
    AssociationEstablished,
    AssociationInfo,
    AssociationRejected,
    CloseConnection,
    ConnectionClosed,
    Event,
    InstanceAborted,
    InstanceBegun,
    InstanceComplete,
    InstanceData,
    StoreResult,
)
from oxidicom_py.dicom.negotiation import AcceptedContext
from oxidicom_py.telemetry import metrics
from oxidicom_py.telemetry.logs import ContextLogger

log = logging.getLogger("oxidicom_py.net")

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

__all__ = ["AcceptorConfig", "AssociationHandler", "AssociationInfo", "AssociationProtocol", "InstanceSink"]


class InstanceSink(Protocol):
    """Receives one instance's dataset fragments, in order."""

    def write(self, data: memoryview) -> None: ...

    def finish(self) -> StoreResult | Awaitable[StoreResult]: ...

    def abort(self, reason: str) -> None: ...


class AssociationHandler(Protocol):
    """What the rest of the pipeline sees of one established association."""

    def begin_instance(self, command: dimse.Command, context: AcceptedContext) -> InstanceSink: ...

    def closed(self, outcome: str) -> None: ...


OnRejected = Callable[[AssociationRejected, str, tuple[str, int], str], None]
"""(the rejection, the association's ULID, the peer, the TLS client certificate's subject)."""


class AssociationProtocol(asyncio.Protocol):
    def __init__(
        self,
        config: AcceptorConfig,
        on_established: Callable[[AssociationInfo], AssociationHandler],
        admission: Admission | None = None,
    ) -> None:
        self.config = config
        self._on_established = on_established
        self._admission = admission
        self.ulid = str(ULID())
        self._log = ContextLogger(log, {"association": self.ulid})
        self.machine: AcceptorMachine | None = None
        self.handler: AssociationHandler | None = None
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: InstanceSink | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._peer = ("?", 0)
        self.on_lost: Callable[[], None] | None = None
        """Called once the connection is gone (the accept loop's balance counts connections)."""
        self.proxied_peer: tuple[str, int] | None = None
        """The sender a load balancer's PROXY header named (else the connection's own peer)."""
        self.tls_subject = ""
        self.on_rejected: OnRejected | None = None
        """Told of each permanent A-ASSOCIATE-RJ (the association records keep them)."""
        """The client certificate's subject (set by the TLS variant before the machine is made)."""

    @property
    def info(self) -> AssociationInfo | None:
        return self.machine.info if self.machine is not None else None

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = sock
            except OSError:
                self._sock = None
        peer = self.proxied_peer or transport.get_extra_info("peername") or ("?", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        if not acse.address_allowed(self._peer[0], self.config.allowed_networks):
            self._log.warning(
                "connection from a network that is not allowed: closed", extra={"peer": f"{peer[0]}:{peer[1]}"}
            )
            metrics.ASSOCIATIONS_REJECTED.labels("network_not_allowed").inc()
            transport.close()
            return
        self.machine = AcceptorMachine(
            self.config,
            self.ulid,
            self._peer,
            self._loop.time(),
            admission=self._admission,
            log=self._log,
            tls_subject=self.tls_subject,
        )
        self._arm()

    def data_received(self, data: bytes) -> None:
        machine = self.machine
        if machine is None:
            return
        assert self._loop is not None
        self._handle(machine.receive_data(data, self._loop.time()))
        if machine.in_pdu and not machine.awaiting_result:
            # We stopped inside a PDU: a sender with Nagle on (DCMTK's default) may be holding
            # the rest until its first segment is ACKed; ACK now instead of after the ~40 ms
            # delayed-ACK timer. At a PDU boundary our response carries the ACK anyway.
            if self._sock is not None and _TCP_QUICKACK:
                try:
                    self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                except OSError:
                    self._sock = None
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_lost is not None:
            self.on_lost()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.machine is not None:
            self._handle(self.machine.connection_lost())

    # -- events from the machine ---------------------------------------------------------
    def _handle(self, events: list[Event]) -> None:
        assert self.machine is not None
        out = self.machine.pop_output()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
        for event in events:
            if isinstance(event, InstanceData):
                if self._sink is not None:
                    self._sink.write(event.data)
            elif isinstance(event, InstanceBegun):
                assert self.handler is not None
                self._sink = self.handler.begin_instance(event.command, event.context)
            elif isinstance(event, InstanceComplete):
                self._finish_instance()
            elif isinstance(event, InstanceAborted):
                if self._sink is not None:
                    self._sink.abort(event.reason)
                    self._sink = None
            elif isinstance(event, AssociationEstablished):
                self.handler = self._on_established(event.info)
                self._arm()
            elif isinstance(event, AssociationRejected):
                metrics.ASSOCIATIONS_REJECTED.labels(event.reason).inc()
                if event.permanent and self.on_rejected is not None:
                    self.on_rejected(event, self.ulid, self._peer, self.tls_subject)
            elif isinstance(event, CloseConnection):
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.close()
            elif isinstance(event, ConnectionClosed) and self.handler is not None:
                self.handler.closed(event.outcome)
                self.handler = None

    def _finish_instance(self) -> None:
        sink, self._sink = self._sink, None
        assert sink is not None and self.machine is not None and self._loop is not None
        result = sink.finish()
        if isinstance(result, StoreResult):  # (inspect.isawaitable's ABC check costs more)
            self._handle(self.machine.store_result(result, self._loop.time()))
            return
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.ensure_future(result)
        task.add_done_callback(self._instance_done)

    def _instance_done(self, task: asyncio.Future[StoreResult]) -> None:
        if task.cancelled():
            result = StoreResult(dimse.PROCESSING_FAILURE, "cancelled")
        elif task.exception() is not None:
            self._log.error("storing an instance failed", exc_info=task.exception())
            result = StoreResult(dimse.OUT_OF_RESOURCES, "storage failure")
        else:
            result = task.result()
        assert self.machine is not None and self._loop is not None
        self._handle(self.machine.store_result(result, self._loop.time()))
        if self.transport is not None and not self.transport.is_closing() and not self.machine.awaiting_result:
            self.transport.resume_reading()
        self._arm()

    # -- the one timer -------------------------------------------------------------------
    def _arm(self) -> None:
        """Make sure a timer fires no later than the machine's deadline (re-armed only when the
        deadline moved earlier: activity pushes deadlines later, and a timer that fires early
        just asks the machine again)."""
        machine = self.machine
        if machine is None or self._loop is None:
            return
        deadline = machine.deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.machine is None or self._loop is None:
            return
        self._handle(self.machine.timer(self._loop.time()))
        self._arm()
