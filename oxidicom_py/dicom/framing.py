"""PDU and PDV framing of the byte stream (PS3.8 9.3.1 and 9.3.5.1), split across reads.

:class:`PduFraming` keeps only where the stream stands: a partial header or control PDU, the
bytes left of a P-DATA-TF and of its current PDV. What a PDU means is decided by the subclass
(:class:`~oxidicom_py.dicom.acceptor.AcceptorMachine`) through its hooks; dataset fragments
are handed on as they arrive, never assembled.
"""

from __future__ import annotations

import struct

from oxidicom_py.dicom import pdu

_PDV_HEADER = struct.Struct(">LBB")


class PduFraming:
    def __init__(self) -> None:
        self._acc = bytearray()  # a partial PDU/PDV header or control PDU body
        self._pdu_type = -1
        self._pdu_need = 0  # bytes of a control PDU body still to collect
        self._pdata_left = 0  # bytes of the current P-DATA-TF body not yet consumed
        self._pdv_left = 0  # bytes of the current PDV's value not yet consumed
        self._pdv_context = 0
        self._pdv_control = 0

    # -- hooks -----------------------------------------------------------------------------
    def _reading(self) -> bool:
        """Whether bytes are still parsed (false once the association is over)."""
        raise NotImplementedError

    def _paused(self) -> bool:
        """Whether parsing stops after this fragment (the rest goes to :meth:`_stash`)."""
        raise NotImplementedError

    def _stash(self, rest: memoryview) -> None:
        """Keep ``rest`` (a view of the caller's immutable bytes) until parsing resumes."""
        raise NotImplementedError

    def _pdu_header(self, pdu_type: int, length: int, now: float) -> None:
        """A PDU header: start a P-DATA-TF (``_pdata_left``) or a control PDU (``_pdu_need``)."""
        raise NotImplementedError

    def _pdu_done(self, now: float) -> None:
        """A PDU is complete: the next byte begins another."""
        raise NotImplementedError

    def _control_pdu(self, pdu_type: int, body: bytes, now: float) -> None:
        raise NotImplementedError

    def _fragment(self, chunk: memoryview, *, complete: bool) -> None:
        """The next piece of the current PDV's value; ``complete`` at its end."""
        raise NotImplementedError

    def _abort(self, reason: int, why: str) -> None:
        raise NotImplementedError

    # -- the parser --------------------------------------------------------------------------
    def _in_pdu(self) -> bool:
        return bool(self._pdata_left or self._acc or self._pdu_need)

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

    def _feed(self, data: memoryview, now: float) -> None:
        pos, end = 0, len(data)
        while pos < end and self._reading():
            if self._pdata_left:
                pos = self._feed_pdata(data, pos)
                if self._paused():
                    if pos < end:
                        self._stash(data[pos:])
                    return
                if not self._in_pdu():
                    self._pdu_done(now)
                continue
            if self._pdu_need:
                body, pos = self._take(data, pos, self._pdu_need)
                if body is None:
                    return
                self._pdu_need = 0
                self._control_pdu(self._pdu_type, body, now)
                self._pdu_done(now)
                continue
            header, pos = self._take(data, pos, 6)
            if header is None:
                return
            pdu_type, length = pdu.PDU_HEADER.unpack(header)
            self._pdu_header(pdu_type, length, now)

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
