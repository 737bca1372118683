"""One association, acceptor side, as an asyncio Protocol (PS3.8 state machine, reduced).

Bytes are parsed as they arrive: PDU and PDV headers may be split across reads, and
dataset fragments are handed to the instance sink immediately, so neither a whole PDU
nor a whole dataset is ever held in memory.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ulid import ULID

from oxidicom_py.net import dimse, pdu
from oxidicom_py.net.contexts import APPLICATION_CONTEXT
from oxidicom_py.net.negotiation import AcceptancePolicy, AcceptedContext, negotiate, warn_refused
from oxidicom_py.storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from oxidicom_py.telemetry import metrics
from oxidicom_py.telemetry.logs import ContextLogger

log = logging.getLogger("oxidicom_py.net")

_PDV_HEADER = struct.Struct(">LBB")
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_MAX_CONTROL_PDU = 64
_MAX_COMMAND_SET = 1 << 16


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: int
    comment: str = ""


class InstanceSink(Protocol):
    """Receives one instance's dataset fragments, in order."""

    def write(self, data: memoryview) -> None: ...

    def finish(self) -> StoreResult | Awaitable[StoreResult]: ...

    def abort(self, reason: str) -> None: ...


class AssociationHandler(Protocol):
    """What the rest of the pipeline sees of one established association."""

    def begin_instance(self, command: dimse.Command, context: AcceptedContext) -> InstanceSink: ...

    def closed(self, outcome: str) -> None: ...


@dataclass(slots=True)
class AssociationInfo:
    ulid: str
    calling_ae: str
    called_ae: str
    peer: tuple[str, int]
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    peer_max_pdu: int = 0
    peer_implementation: str = ""


@dataclass(frozen=True, slots=True)
class AcceptorConfig:
    ae_title: str
    max_pdu_length: int
    """Advertised maximum PDU length; 0 means unlimited."""
    strict: bool
    """Abort when a P-DATA PDU exceeds ``max_pdu_length`` (otherwise accept it with a warning)."""
    policy: AcceptancePolicy
    artim_timeout: float = 30.0
    allowed_calling_aets: frozenset[str] | None = None
    """Calling AE titles let in (None: any)."""
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    """Client address networks let in (None: any); others are disconnected before any PDU is read."""
    check_called_aet: bool = False
    """Refuse an A-ASSOCIATE-RQ whose called AE title is not ``ae_title``."""
    idle_timeout: float | None = None
    """Close an association that sends nothing for this many seconds (None: never)."""
    pdu_timeout: float | None = None
    """Abort when a PDU, once begun, is not complete after this many seconds (a trickling
    sender keeps the idle timer quiet but not this one). None: never."""


_REJECTION_REASONS = {
    (pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED): "protocol_version",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_APP_CONTEXT_NOT_SUPPORTED): "application_context",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED): "calling_ae_not_allowed",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED): "called_ae_not_recognized",
    (pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED): "local_limit",
}
"""Label values of ``oxidicom_associations_rejected_total`` for each A-ASSOCIATE-RJ we send."""

Admission = Callable[[pdu.AssociateRequest, tuple[str, int]], tuple[int, int, int] | None]
"""Returns an A-ASSOCIATE-RJ (result, source, reason) to refuse, or None to go on."""


class _Phase:
    AWAIT_RQ = 0
    ESTABLISHED = 1
    RELEASED = 2
    CLOSED = 3


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
        self.info: AssociationInfo | None = None
        self.handler: AssociationHandler | None = None
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._phase = _Phase.AWAIT_RQ
        self._artim: asyncio.TimerHandle | None = None
        self._log = ContextLogger(log, {"association": self.ulid})
        # parser state
        self._acc = bytearray()  # a partial PDU/PDV header or control PDU body
        self._pdu_type = -1
        self._pdu_need = 0  # bytes of a control PDU body still to collect
        self._pdata_left = 0  # bytes of the current P-DATA-TF body not yet consumed
        self._pdv_left = 0  # bytes of the current PDV's value not yet consumed
        self._pdv_context = 0
        self._pdv_control = 0
        self._command = bytearray()
        self._instance: InstanceSink | None = None
        self._instance_command: dimse.Command | None = None
        self._instance_context = 0
        self._discard_data = False
        self._after_discard: tuple[int, bytes] | None = None  # a response due once the dataset is dropped
        self._blocked = False
        self._pending: list[bytes] = []
        self._oversize_warned = False
        self._outcome = "closed"
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._pdu_seq = 0  # PDUs begun so far
        self._pdu_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = sock
            except OSError:
                self._sock = None
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        if self.config.allowed_networks is not None and not _address_in(self._peer[0], self.config.allowed_networks):
            self._log.warning("connection from a network that is not allowed: closed", extra=self._peer_extra())
            self._outcome = "refused: network not allowed"
            metrics.ASSOCIATIONS_REJECTED.labels("network_not_allowed").inc()
            self._close()
            return
        self._start_artim()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop_time()
        if self._blocked:
            self._pending.append(data)
            return
        self._feed(memoryview(data))
        if self._pdata_left or self._acc or self._pdu_need:
            # We stopped inside a PDU: a sender with Nagle on (DCMTK's default) may be holding
            # the rest until its first segment is ACKed; ACK now instead of after the ~40 ms
            # delayed-ACK timer. At a PDU boundary our response carries the ACK anyway.
            if self._sock is not None and _TCP_QUICKACK:
                try:
                    self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                except OSError:
                    self._sock = None
            if self._pdu_timer is None and self._phase == _Phase.ESTABLISHED:
                self._arm_pdu_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_artim()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._pdu_timer is not None:
            self._pdu_timer.cancel()
        if self._instance is not None:
            self._instance.abort("connection lost")
            self._instance = None
            if self._outcome == "closed":
                self._outcome = "connection lost mid-instance"
        if self._phase == _Phase.ESTABLISHED and self._outcome == "closed":
            self._outcome = "connection lost without release"
        self._phase = _Phase.CLOSED
        if self.handler is not None:
            self.handler.closed(self._outcome)
            self.handler = None

    # -- timers ------------------------------------------------------------------------
    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _idle_check_at(self, when: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_at(when, self._idle_check)

    def _idle_check(self) -> None:
        """Periodic, not per read: close the association once it has been silent for idle_timeout."""
        if self._phase != _Phase.ESTABLISHED or not self.config.idle_timeout:
            return
        deadline = self._last_activity + self.config.idle_timeout
        if self._loop_time() < deadline or self._blocked:
            self._idle_check_at(max(deadline, self._loop_time() + 0.05))
            return
        self._abort(pdu.ABORT_REASON_NOT_SPECIFIED, f"idle for {self.config.idle_timeout:g} s")

    def _arm_pdu_timer(self) -> None:
        """Check, pdu_timeout from now, whether the PDU under way then is still the same one."""
        if self.config.pdu_timeout:
            self._pdu_timer = asyncio.get_running_loop().call_later(
                self.config.pdu_timeout, self._pdu_check, self._pdu_seq
            )

    def _pdu_check(self, seq: int) -> None:
        """Armed when a read ends inside a PDU; fires once per pdu_timeout, not per read."""
        self._pdu_timer = None
        if self._phase != _Phase.ESTABLISHED or not (self._pdata_left or self._acc or self._pdu_need):
            return
        if seq == self._pdu_seq and not self._blocked:
            self._abort(
                pdu.ABORT_REASON_NOT_SPECIFIED, f"a PDU was not complete {self.config.pdu_timeout:g} s after it began"
            )
            return
        self._arm_pdu_timer()

    def _start_artim(self) -> None:
        self._cancel_artim()
        loop = asyncio.get_running_loop()
        self._artim = loop.call_later(self.config.artim_timeout, self._artim_expired)

    def _cancel_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        if self._phase == _Phase.AWAIT_RQ:
            self._log.warning("ARTIM timer expired before an A-ASSOCIATE-RQ arrived", extra=self._peer_extra())
            metrics.ASSOCIATIONS_REJECTED.labels("no_request_in_time").inc()
        self._close()

    # -- output ------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._phase = _Phase.CLOSED
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _abort(self, reason: int, why: str) -> None:
        self._log.error("aborting association: %s", why, extra=self._peer_extra())
        self._outcome = f"aborted by us: {why}"
        if self._instance is not None:
            self._instance.abort(why)
            self._instance = None
        self._send(pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, reason))
        self._close()

    def _peer_extra(self) -> dict[str, object]:
        return {"peer": f"{self._peer[0]}:{self._peer[1]}"}

    # -- the byte parser -----------------------------------------------------------------
    def _take(self, data: memoryview, pos: int, need: int) -> tuple[bytes | None, int]:
        """Collect ``need`` bytes into the accumulator; return them once complete."""
        missing = need - len(self._acc)
        chunk = data[pos : pos + missing]
        if not self._acc and len(chunk) == need:
            return bytes(chunk), pos + need
        self._acc += chunk
        pos += len(chunk)
        if len(self._acc) < need:
            return None, pos
        out = bytes(self._acc)
        self._acc.clear()
        return out, pos

    def _feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and self._phase != _Phase.CLOSED:
            if self._pdata_left:
                pos = self._feed_pdata(data, pos)
                if self._blocked:
                    if pos < end:
                        self._pending.insert(0, bytes(data[pos:]))
                    return
                continue
            if self._pdu_need:
                body, pos = self._take(data, pos, self._pdu_need)
                if body is None:
                    return
                self._pdu_need = 0
                self._control_pdu(self._pdu_type, body)
                continue
            header, pos = self._take(data, pos, 6)
            if header is None:
                return
            pdu_type, length = pdu.PDU_HEADER.unpack(header)
            self._pdu_header(pdu_type, length)

    def _pdu_header(self, pdu_type: int, length: int) -> None:
        self._pdu_seq += 1
        if pdu_type == pdu.P_DATA_TF:
            if self._phase != _Phase.ESTABLISHED:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, "P-DATA-TF outside an established association")
                return
            limit = self.config.max_pdu_length
            if limit and length > limit:
                if self.config.strict:
                    self._abort(
                        pdu.ABORT_REASON_INVALID_PARAMETER,
                        f"P-DATA-TF of {length} bytes exceeds the negotiated maximum {limit}",
                    )
                    return
                if not self._oversize_warned:
                    self._oversize_warned = True
                    self._log.warning(
                        "P-DATA-TF of %d bytes exceeds the negotiated maximum %d; accepted (strict mode off)",
                        length,
                        limit,
                    )
            if length < 6:
                self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"P-DATA-TF of {length} bytes has no PDV")
                return
            self._pdata_left = length
            return
        if pdu_type == pdu.A_ASSOCIATE_RQ:
            cap = pdu.MAX_ASSOCIATE_RQ_LENGTH
        elif pdu_type in (pdu.A_RELEASE_RQ, pdu.A_ABORT, pdu.A_RELEASE_RP):
            cap = _MAX_CONTROL_PDU
        else:
            self._abort(pdu.ABORT_REASON_UNRECOGNIZED_PDU, f"unrecognized PDU type 0x{pdu_type:02x}")
            return
        if length > cap:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"PDU type 0x{pdu_type:02x} of {length} bytes")
            return
        self._pdu_type = pdu_type
        if length == 0:
            self._control_pdu(pdu_type, b"")
        else:
            self._pdu_need = length

    def _feed_pdata(self, data: memoryview, pos: int) -> int:
        if self._pdv_left == 0:  # at a PDV header (possibly split across reads)
            if self._pdata_left < 6:
                self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "P-DATA-TF ends inside a PDV header")
                return pos
            header, pos = self._take(data, pos, 6)
            if header is None:
                return pos
            return self._pdv_header(header, pos)
        n = min(self._pdv_left, len(data) - pos)
        chunk = data[pos : pos + n]
        self._pdv_left -= n
        self._pdata_left -= n
        self._fragment(chunk, complete=self._pdv_left == 0)
        return pos + n

    def _pdv_header(self, header: bytes, pos: int) -> int:
        item_length, context_id, control = _PDV_HEADER.unpack(header)
        if item_length < 2 or item_length + 4 > self._pdata_left:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"PDV length {item_length} does not fit its PDU")
            return pos
        self._pdata_left -= 6
        self._pdv_left = item_length - 2
        self._pdv_context = context_id
        self._pdv_control = control
        if self._pdv_left == 0:
            self._fragment(memoryview(b""), complete=True)
        return pos

    # -- DIMSE level ---------------------------------------------------------------------
    def _fragment(self, chunk: memoryview, *, complete: bool) -> None:
        is_command = self._pdv_control & 0x01
        last = complete and bool(self._pdv_control & 0x02)
        if is_command:
            if self._instance is not None or self._discard_data:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PARAMETER, "command PDV while a dataset is incomplete")
                return
            self._command += chunk
            if len(self._command) > _MAX_COMMAND_SET:
                self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "command set too large")
                return
            if last:
                raw, self._command = self._command, bytearray()
                self._on_command(bytes(raw))
            return
        if self._discard_data:
            if last:
                self._discard_data = False
                if self._after_discard is not None:
                    (context_id, response), self._after_discard = self._after_discard, None
                    self._send_command(context_id, response)
            return
        if self._instance is None:
            self._abort(pdu.ABORT_REASON_UNEXPECTED_PARAMETER, "dataset PDV without a preceding C-STORE-RQ")
            return
        if self._pdv_context != self._instance_context:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "dataset PDV on another presentation context")
            return
        if chunk:
            self._instance.write(chunk)
        if last:
            self._finish_instance()

    def _on_command(self, raw: bytes) -> None:
        assert self.info is not None
        context = self.info.contexts.get(self._pdv_context)
        if context is None:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"command on unaccepted context {self._pdv_context}")
            return
        try:
            command = dimse.decode_command(raw)
        except dimse.DimseError as e:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"undecodable command set: {e}")
            return
        if command.command_field & 0x8000:  # a response: we send no requests, so nothing to answer
            self._abort(
                pdu.ABORT_REASON_UNEXPECTED_PARAMETER,
                f"DIMSE response 0x{command.command_field:04x} received, but we sent no request",
            )
            return
        if command.command_field == dimse.C_ECHO_RQ:
            self._send_command(context.context_id, dimse.echo_response(command))
            return
        if command.command_field != dimse.C_STORE_RQ:
            self._unserved(command, context.context_id)
            return
        if not command.has_data_set:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "C-STORE-RQ without a dataset")
            return
        assert self.handler is not None
        self._instance_command = command
        self._instance_context = context.context_id
        self._instance = self.handler.begin_instance(command, context)

    def _unserved(self, command: dimse.Command, context_id: int) -> None:
        """A request other than C-STORE and C-ECHO: answered "unrecognized operation" once its
        dataset (if any) has been read and dropped; C-CANCEL gets no response (PS3.7 9.3.2.3)."""
        name = dimse.REQUEST_NAMES.get(command.command_field)
        if name is None:
            self._abort(
                pdu.ABORT_REASON_UNRECOGNIZED_PARAMETER, f"unknown DIMSE command field 0x{command.command_field:04x}"
            )
            return
        response = dimse.failure_response(command, dimse.UNRECOGNIZED_OPERATION)
        self._log.warning(
            "%s not served: %s",
            name,
            "ignored (nothing to cancel)" if response is None else "answered 'unrecognized operation' (0x0211)",
            extra={"sop_class": command.affected_sop_class or command.requested_sop_class},
        )
        if response is None:
            self._discard_data = command.has_data_set
        elif command.has_data_set:
            self._discard_data = True
            self._after_discard = (context_id, response)
        else:
            self._send_command(context_id, response)

    def _finish_instance(self) -> None:
        sink, self._instance = self._instance, None
        assert sink is not None
        result = sink.finish()
        if inspect.isawaitable(result):
            self._blocked = True
            if self.transport is not None:
                self.transport.pause_reading()
            task = asyncio.ensure_future(result)
            task.add_done_callback(self._instance_done)
            return
        assert isinstance(result, StoreResult)
        self._respond(result)

    def _instance_done(self, task: asyncio.Future[StoreResult]) -> None:
        if task.cancelled():
            result = StoreResult(dimse.PROCESSING_FAILURE, "cancelled")
        elif task.exception() is not None:
            self._log.error("storing an instance failed", exc_info=task.exception())
            result = StoreResult(dimse.OUT_OF_RESOURCES, "storage failure")
        else:
            result = task.result()
        self._respond(result)
        self._blocked = False
        if self._phase == _Phase.CLOSED:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        while self._pending and not self._blocked and self._phase != _Phase.CLOSED:
            self._feed(memoryview(self._pending.pop(0)))

    def _respond(self, result: StoreResult) -> None:
        command, self._instance_command = self._instance_command, None
        assert command is not None
        self._send_command(self._instance_context, dimse.store_response(command, result.status, result.comment))

    def _send_command(self, context_id: int, payload: bytes) -> None:
        self._send(pdu.encode_p_data(context_id, payload, command=True))

    # -- control PDUs ----------------------------------------------------------------------
    def _control_pdu(self, pdu_type: int, body: bytes) -> None:
        if pdu_type == pdu.A_ASSOCIATE_RQ:
            if self._phase != _Phase.AWAIT_RQ:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, "A-ASSOCIATE-RQ on an established association")
                return
            self._associate(body)
        elif pdu_type == pdu.A_RELEASE_RQ:
            if self._phase != _Phase.ESTABLISHED:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, "A-RELEASE-RQ before association")
                return
            if self._instance is not None:
                self._instance.abort("released mid-instance")
                self._instance = None
            self._outcome = "released"
            self._send(pdu.encode_release_rp())
            self._phase = _Phase.RELEASED
            self._close()
        elif pdu_type == pdu.A_ABORT:
            self._outcome = "aborted by peer"
            self._log.warning("association aborted by the peer", extra=self._peer_extra())
            self._close()
        else:
            self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02x}")

    def _associate(self, body: bytes) -> None:
        self._cancel_artim()
        try:
            req = pdu.parse_associate_rq(body)
        except pdu.PduError as e:
            metrics.ASSOCIATIONS_REJECTED.labels("malformed_request").inc()
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"malformed A-ASSOCIATE-RQ: {e}")
            return
        extra = {"calling_ae": req.calling_ae, "called_ae": req.called_ae, **self._peer_extra()}
        refusal: tuple[int, int, int] | None = None
        if not req.protocol_version & 0x0001:
            refusal = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED)
        elif req.application_context != APPLICATION_CONTEXT:
            refusal = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APP_CONTEXT_NOT_SUPPORTED)
        elif (allowed := self.config.allowed_calling_aets) is not None and req.calling_ae not in allowed:
            refusal = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED)
        elif self.config.check_called_aet and req.called_ae != self.config.ae_title:
            refusal = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED)
        elif self._admission is not None:
            refusal = self._admission(req, self._peer)
        if refusal is not None:
            self._log.warning("association rejected %s", refusal, extra=extra)
            metrics.ASSOCIATIONS_REJECTED.labels(_REJECTION_REASONS.get(refusal[1:], "other")).inc()
            self._send(pdu.encode_associate_rj(*refusal))
            self._phase = _Phase.RELEASED
            self._close()
            return
        results, accepted = negotiate(req, self.config.policy)
        warn_refused(req, results, self._log)
        self._send(
            pdu.encode_associate_ac(
                req,
                results,
                max_pdu_length=self.config.max_pdu_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
        )
        self._phase = _Phase.ESTABLISHED
        if self.config.idle_timeout:
            self._idle_check_at(self._loop_time() + self.config.idle_timeout)
        self.info = AssociationInfo(
            ulid=self.ulid,
            calling_ae=req.calling_ae,
            called_ae=req.called_ae,
            peer=self._peer,
            contexts=accepted,
            peer_max_pdu=req.max_pdu_length,
            peer_implementation=req.implementation_class_uid,
        )
        self._log.info(
            "association accepted with %d of %d presentation contexts",
            len(accepted),
            len(req.contexts),
            extra=extra,
        )
        self.handler = self._on_established(self.info)


def _address_in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
