"""The association acceptor as a sans-IO state machine (PS3.8 section 9.2, reduced).

:class:`AcceptorMachine` does no I/O and reads no clock: it takes the bytes the peer sent
and the current time, and gives back events (:mod:`oxidicom_py.dicom.events`), the bytes to
send (:meth:`AcceptorMachine.pop_output`) and its next deadline (:meth:`deadline`; then call
:meth:`timer`). PDU and PDV headers may be split across reads; dataset fragments come out as
they arrive, so neither a whole PDU nor a whole dataset is ever held. After an
:class:`InstanceComplete` nothing more is parsed until :meth:`store_result` gives the status
to answer with: the bytes that came meanwhile wait inside the machine.

States carry PS3.8's names (only those an acceptor passes through):

* ``Sta2`` transport connection open, awaiting A-ASSOCIATE-RQ (ARTIM running);
* ``Sta6`` association established, ready for data transfer;
* ``Sta13`` awaiting the close of the transport connection (after an A-ASSOCIATE-RJ,
  A-RELEASE-RP or A-ABORT; we close it ourselves at once);
* ``Sta1`` idle: the connection is gone.

The acceptor's own decisions to abort carry the action's name, AA-1 (A-ABORT sent: a
protocol error, a timer, a PDU we cannot take) and AA-3 (the peer's A-ABORT received).
"""

from __future__ import annotations

import logging

from oxidicom_py.dicom import acse, dimse, pdu
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
from oxidicom_py.dicom.framing import PduFraming
from oxidicom_py.dicom.negotiation import negotiate, warn_refused
from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

STA1_IDLE = "Sta1"
STA2_AWAIT_RQ = "Sta2"
STA6_ESTABLISHED = "Sta6"
STA13_AWAIT_CLOSE = "Sta13"

_MAX_CONTROL_PDU = 64
_MAX_COMMAND_SET = 1 << 16


class AcceptorMachine(PduFraming):
    """One association, acceptor side: bytes and time in; events, bytes and a deadline out."""

    def __init__(
        self,
        config: AcceptorConfig,
        ulid: str,
        peer: tuple[str, int],
        now: float,
        *,
        admission: Admission | None = None,
        log: logging.LoggerAdapter | None = None,  # type: ignore[type-arg]
        tls_subject: str = "",
    ) -> None:
        super().__init__()
        self.config = config
        self.ulid = ulid
        self.peer = peer
        self.tls_subject = tls_subject
        self._admission = admission
        self.log = log or logging.LoggerAdapter(logging.getLogger("oxidicom_py.net"), {"association": ulid})
        self.state = STA2_AWAIT_RQ
        self.info: AssociationInfo | None = None
        self.outcome = "closed"
        self._events: list[Event] = []
        self._out = bytearray()
        self._artim_at: float | None = now + config.artim_timeout
        self._last_activity = now
        self._pdu_begun_at = 0.0  # when the PDU under way began (valid while one is under way)
        self._command = bytearray()
        self._instance: dimse.Command | None = None  # the C-STORE whose dataset is arriving
        self._instance_context = 0
        self._awaiting_result: dimse.Command | None = None
        self._discard_data = False
        self._after_discard: tuple[int, bytes] | None = None  # a response due once the dataset is dropped
        self._pending: list[bytes | memoryview] = []
        """Bytes received while a store result is awaited (views of immutable ``bytes``: the rest
        of a read is kept without copying it)."""
        self._oversize_warned = False

    # -- inputs ------------------------------------------------------------------------------
    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Bytes from the peer; empty bytes are not special (use :meth:`connection_lost`)."""
        self._last_activity = now
        if type(data) is not bytes:  # what is kept past this call must not change under us
            data = bytes(data)
        if self._awaiting_result is not None:
            self._pending.append(data)
            return self._take_events()
        if not self._in_pdu():
            self._pdu_begun_at = now
        self._feed(memoryview(data), now)
        return self._take_events()

    def store_result(self, result: StoreResult, now: float) -> list[Event]:
        """The outcome of the instance of the last :class:`InstanceComplete`: answered now,
        then the bytes that arrived meanwhile are parsed."""
        command, self._awaiting_result = self._awaiting_result, None
        assert command is not None, "no instance awaits a result"
        self._last_activity = now  # the time we took is not the sender's silence
        if self._in_pdu():
            self._pdu_begun_at = now
        if self.state == STA6_ESTABLISHED:
            response = dimse.store_response(command, result.status, result.comment)
            self._out += pdu.encode_p_data(self._instance_context, response, command=True)
        while self._pending and not self.awaiting_result and self.state not in (STA1_IDLE, STA13_AWAIT_CLOSE):
            data = self._pending.pop(0)
            if not self._in_pdu():
                self._pdu_begun_at = now
            self._feed(memoryview(data), now)
        return self._take_events()

    def deadline(self) -> float | None:
        """When :meth:`timer` must next be called (None: no timer runs)."""
        if self.state in (STA2_AWAIT_RQ, STA13_AWAIT_CLOSE):
            return self._artim_at
        if self.state != STA6_ESTABLISHED or self._awaiting_result is not None:
            return None  # no timer counts while we are storing an instance (the sender waits on us)
        deadlines = []
        if self.config.idle_timeout:
            deadlines.append(self._last_activity + self.config.idle_timeout)
        if self.config.pdu_timeout and self._in_pdu():
            deadlines.append(self._pdu_begun_at + self.config.pdu_timeout)
        return min(deadlines) if deadlines else None

    def timer(self, now: float) -> list[Event]:
        """Check the timers at ``now``: ARTIM, idle and PDU."""
        if self.state == STA2_AWAIT_RQ:
            if self._artim_at is not None and now >= self._artim_at:
                self.log.warning("ARTIM timer expired before an A-ASSOCIATE-RQ arrived", extra=self._peer_extra())
                self._events.append(AssociationRejected("no_request_in_time"))
                self._close()
        elif self.state == STA13_AWAIT_CLOSE:
            if self._artim_at is not None and now >= self._artim_at:
                self._close()
        elif self.state == STA6_ESTABLISHED and self._awaiting_result is None:
            idle = self.config.idle_timeout
            if idle and now >= self._last_activity + idle:
                self._abort(pdu.ABORT_REASON_NOT_SPECIFIED, f"idle for {idle:g} s")
            elif self.config.pdu_timeout and self._in_pdu() and now >= self._pdu_begun_at + self.config.pdu_timeout:
                self._abort(
                    pdu.ABORT_REASON_NOT_SPECIFIED,
                    f"a PDU was not complete {self.config.pdu_timeout:g} s after it began",
                )
        return self._take_events()

    def connection_lost(self) -> list[Event]:
        """The transport connection is gone (closed by either side, or failed)."""
        if self.state == STA1_IDLE:
            return self._take_events()
        if self._instance is not None:
            self._instance = None
            self._events.append(InstanceAborted("connection lost"))
            if self.outcome == "closed":
                self.outcome = "connection lost mid-instance"
        if self.state == STA6_ESTABLISHED and self.outcome == "closed":
            self.outcome = "connection lost without release"
        established = self.info is not None
        self.state = STA1_IDLE
        self._artim_at = None
        self._pending.clear()
        if established:
            self._events.append(ConnectionClosed(self.outcome))
        return self._take_events()

    def pop_output(self) -> bytes:
        """The bytes to send to the peer now (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def awaiting_result(self) -> bool:
        return self._awaiting_result is not None

    @property
    def in_pdu(self) -> bool:
        """A PDU has begun and is not complete (the sender may be waiting for an ACK)."""
        return self._in_pdu()

    # -- outputs ---------------------------------------------------------------------------
    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _close(self) -> None:
        """Ask the adapter to close the transport connection (Sta13 until it is gone)."""
        if self.state in (STA1_IDLE, STA13_AWAIT_CLOSE):
            return
        self.state = STA13_AWAIT_CLOSE
        self._events.append(CloseConnection())

    def _abort(self, reason: int, why: str) -> None:
        """AA-1: send A-ABORT and close."""
        self.log.error("aborting association: %s", why, extra=self._peer_extra())
        self.outcome = f"aborted by us: {why}"
        if self._instance is not None:
            self._instance = None
            self._events.append(InstanceAborted(why))
        self._out += pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, reason)
        self._close()

    def _peer_extra(self) -> dict[str, object]:
        return {"peer": f"{self.peer[0]}:{self.peer[1]}"}

    # -- the framing's hooks (PduFraming parses; these decide) -----------------------------------
    def _reading(self) -> bool:
        return self.state in (STA2_AWAIT_RQ, STA6_ESTABLISHED)

    def _paused(self) -> bool:
        return self._awaiting_result is not None

    def _stash(self, rest: memoryview) -> None:
        self._pending.insert(0, rest)

    def _pdu_done(self, now: float) -> None:
        self._pdu_begun_at = now

    def _pdu_header(self, pdu_type: int, length: int, now: float) -> None:
        if pdu_type == pdu.P_DATA_TF:
            if self.state != STA6_ESTABLISHED:
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
                    self.log.warning(
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
            self._control_pdu(pdu_type, b"", now)
        else:
            self._pdu_need = length

    # -- DIMSE level -----------------------------------------------------------------------------
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
                    self._out += pdu.encode_p_data(context_id, response, command=True)
            return
        if self._instance is None:
            self._abort(pdu.ABORT_REASON_UNEXPECTED_PARAMETER, "dataset PDV without a preceding C-STORE-RQ")
            return
        if self._pdv_context != self._instance_context:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "dataset PDV on another presentation context")
            return
        if chunk:
            self._events.append(InstanceData(chunk))
        if last:
            self._awaiting_result, self._instance = self._instance, None
            self._events.append(InstanceComplete())

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
            self._out += pdu.encode_p_data(context.context_id, dimse.echo_response(command), command=True)
            return
        if command.command_field != dimse.C_STORE_RQ:
            self._unserved(command, context.context_id)
            return
        if not command.has_data_set:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, "C-STORE-RQ without a dataset")
            return
        self._instance = command
        self._instance_context = context.context_id
        self._events.append(InstanceBegun(command, context))

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
        self.log.warning(
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
            self._out += pdu.encode_p_data(context_id, response, command=True)

    # -- control PDUs --------------------------------------------------------------------------
    def _control_pdu(self, pdu_type: int, body: bytes, now: float) -> None:
        if pdu_type == pdu.A_ASSOCIATE_RQ:
            if self.state != STA2_AWAIT_RQ:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, "A-ASSOCIATE-RQ on an established association")
                return
            self._associate(body, now)
        elif pdu_type == pdu.A_RELEASE_RQ:
            if self.state != STA6_ESTABLISHED:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, "A-RELEASE-RQ before association")
                return
            if self._instance is not None:
                self._instance = None
                self._events.append(InstanceAborted("released mid-instance"))
            self.outcome = "released"
            self._out += pdu.encode_release_rp()
            self._close()
        elif pdu_type == pdu.A_ABORT:  # AA-3
            self.outcome = "aborted by peer"
            self.log.warning("association aborted by the peer", extra=self._peer_extra())
            self._close()
        else:
            self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02x}")

    def _associate(self, body: bytes, now: float) -> None:
        self._artim_at = None
        try:
            req = pdu.parse_associate_rq(body)
        except pdu.PduError as e:
            self._events.append(AssociationRejected("malformed_request"))
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER, f"malformed A-ASSOCIATE-RQ: {e}")
            return
        extra = {"calling_ae": req.calling_ae, "called_ae": req.called_ae, **self._peer_extra()}
        refusal = acse.refusal(
            req, self.config.ae_title, self.config.allowed_calling_aets, self.config.check_called_aet
        )
        check = self.config.calling_ae_check
        why = check(req.calling_ae) if refusal is None and check is not None else None
        if why is not None:
            refusal = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED)
        if refusal is None and self._admission is not None:
            refusal = self._admission(req, self.peer)
        if refusal is not None:
            if why is not None:
                self.log.warning("association rejected: calling AE title %r: %s", req.calling_ae, why, extra=extra)
            else:
                self.log.warning("association rejected %s", refusal, extra=extra)
            self._events.append(
                AssociationRejected(
                    acse.rejection_label(refusal),
                    req.calling_ae,
                    req.called_ae,
                    permanent=refusal[0] == pdu.RJ_PERMANENT,
                    detail=why or "",
                )
            )
            self._out += pdu.encode_associate_rj(*refusal)
            self._close()
            return
        results, accepted = negotiate(req, self.config.policy)
        warn_refused(req, results, self.log)
        self._out += pdu.encode_associate_ac(
            req,
            results,
            max_pdu_length=self.config.max_pdu_length,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        self.state = STA6_ESTABLISHED
        self.info = AssociationInfo(
            ulid=self.ulid,
            calling_ae=req.calling_ae,
            called_ae=req.called_ae,
            peer=self.peer,
            contexts=accepted,
            peer_max_pdu=req.max_pdu_length,
            peer_implementation=req.implementation_class_uid,
            tls_subject=self.tls_subject,
        )
        self.log.info(
            "association accepted with %d of %d presentation contexts", len(accepted), len(req.contexts), extra=extra
        )
        self._events.append(AssociationEstablished(self.info))
