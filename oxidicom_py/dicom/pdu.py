"""DICOM upper-layer PDUs (PS3.8 section 9.3): decoding the A-ASSOCIATE-RQ, encoding the replies.

Only what an association acceptor for C-STORE and C-ECHO needs. P-DATA-TF is not decoded
here: it is streamed by :mod:`oxidicom_py.dicom.acceptor` without assembling whole PDUs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# PDU types
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_HEADER = struct.Struct(">BxL")  # type, reserved, length
ITEM_HEADER = struct.Struct(">BxH")  # item type, reserved, length

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_USER_NO_REASON = 1
RJ_USER_APP_CONTEXT_NOT_SUPPORTED = 2
RJ_USER_CALLING_AE_NOT_RECOGNIZED = 3
RJ_USER_CALLED_AE_NOT_RECOGNIZED = 7
RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2

# A-ABORT (PS3.8 9.3.8): source, reason
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_UNRECOGNIZED_PARAMETER = 4
ABORT_REASON_UNEXPECTED_PARAMETER = 5
ABORT_REASON_INVALID_PARAMETER = 6

# Presentation context results (PS3.8 9.3.3.2)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

MAX_ASSOCIATE_RQ_LENGTH = 1 << 20
"""An A-ASSOCIATE-RQ larger than this is not a real request: the association is aborted."""


class PduError(Exception):
    """A malformed PDU: the association is aborted (A-ABORT, invalid PDU parameter value)."""


@dataclass(slots=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    raw_called_ae: bytes = b""
    raw_calling_ae: bytes = b""


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _items(body: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    out = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise PduError("truncated item header")
        item_type, length = ITEM_HEADER.unpack_from(body, pos)
        pos += 4
        if pos + length > end:
            raise PduError(f"item 0x{item_type:02x} overruns its PDU")
        out.append((item_type, body[pos : pos + length]))
        pos += length
    return out


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (``body`` excludes the 6-byte PDU header)."""
    if len(body) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    raw_called, raw_calling = body[4:20], body[20:36]
    req = AssociateRequest(
        protocol_version=version,
        called_ae=raw_called.decode("ascii", "replace").strip(),
        calling_ae=raw_calling.decode("ascii", "replace").strip(),
        application_context="",
        raw_called_ae=raw_called,
        raw_calling_ae=raw_calling,
    )
    seen_ids: set[int] = set()
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x10:
            req.application_context = _uid(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise PduError("presentation context item too short")
            context_id = value[0]
            if context_id % 2 == 0 or context_id in seen_ids:
                raise PduError(f"invalid presentation context id {context_id}")
            seen_ids.add(context_id)
            abstract, transfers = "", []
            for sub_type, sub in _items(value, 4, len(value)):
                if sub_type == 0x30:
                    abstract = _uid(sub)
                elif sub_type == 0x40:
                    transfers.append(_uid(sub))
            req.contexts.append(ProposedContext(context_id, abstract, transfers))
        elif item_type == 0x50:
            for sub_type, sub in _items(value, 0, len(value)):
                if sub_type == 0x51:
                    if len(sub) != 4:
                        raise PduError("maximum length sub-item must be 4 bytes")
                    (req.max_pdu_length,) = struct.unpack(">L", sub)
                elif sub_type == 0x52:
                    req.implementation_class_uid = _uid(sub)
                elif sub_type == 0x55:
                    req.implementation_version_name = sub.decode("ascii", "replace").strip()
        # Unknown items are ignored, as PS3.8 9.3.1 asks of an acceptor.
    if not req.application_context:
        raise PduError("A-ASSOCIATE-RQ without an application context item")
    return req


def _item(item_type: int, value: bytes) -> bytes:
    return ITEM_HEADER.pack(item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


@dataclass(slots=True)
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str


def encode_associate_ac(
    req: AssociateRequest,
    results: list[ContextResult],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    fixed = struct.pack(">HH", 1, 0) + req.raw_called_ae + req.raw_calling_ae + bytes(32)
    items = [_item(0x10, req.application_context.encode("ascii"))]
    for r in results:
        sub = _item(0x40, r.transfer_syntax.encode("ascii"))
        items.append(_item(0x21, bytes((r.context_id, 0, r.result, 0)) + sub))
    user = (
        _item(0x51, struct.pack(">L", max_pdu_length))
        + _item(0x52, implementation_class_uid.encode("ascii"))
        + _item(0x55, implementation_version_name.encode("ascii"))
    )
    items.append(_item(0x50, user))
    return _pdu(A_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


def encode_p_data(context_id: int, payload: bytes, *, command: bool, last: bool = True) -> bytes:
    """One P-DATA-TF PDU carrying one PDV (our responses are small)."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return _pdu(P_DATA_TF, pdv)
