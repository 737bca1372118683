"""DIMSE command sets (PS3.7 section 9 and Annex E), always Implicit VR Little Endian.

Decodes the C-STORE-RQ / C-ECHO-RQ we receive and encodes our responses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_ELEMENT = struct.Struct("<HHL")

# Command set element numbers (group 0000)
AFFECTED_SOP_CLASS_UID = 0x0002
REQUESTED_SOP_CLASS_UID = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
REQUESTED_SOP_INSTANCE_UID = 0x1001
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101

REQUEST_NAMES = {
    0x0001: "C-STORE-RQ",
    0x0010: "C-GET-RQ",
    0x0020: "C-FIND-RQ",
    0x0021: "C-MOVE-RQ",
    0x0030: "C-ECHO-RQ",
    0x0100: "N-EVENT-REPORT-RQ",
    0x0110: "N-GET-RQ",
    0x0120: "N-SET-RQ",
    0x0130: "N-ACTION-RQ",
    0x0140: "N-CREATE-RQ",
    0x0150: "N-DELETE-RQ",
    0x0FFF: "C-CANCEL-RQ",
}
"""Every DIMSE request of PS3.7 (section 9.3 and 10.3), by Command Field. Each but C-CANCEL has a
response whose Command Field is the request's with bit 15 set (PS3.7 Annex E); C-CANCEL has none."""

# Status codes (PS3.4 B.2.3, PS3.7 C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNRECOGNIZED_OPERATION = 0x0211
PROCESSING_FAILURE = 0x0110

_UIDS = {AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, REQUESTED_SOP_INSTANCE_UID}
_US = {COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO, PRIORITY, COMMAND_DATA_SET_TYPE, STATUS}


class DimseError(Exception):
    """A command set we cannot decode."""


@dataclass(slots=True)
class Command:
    command_field: int
    message_id: int
    data_set_type: int
    affected_sop_class: str
    affected_sop_instance: str
    move_originator_ae: str = ""
    requested_sop_class: str = ""
    requested_sop_instance: str = ""

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET


def decode_command(raw: bytes | bytearray) -> Command:
    """Decode a command set; only group 0000 is allowed (PS3.7 6.3.1)."""
    values: dict[int, bytes | bytearray] = {}
    pos, end = 0, len(raw)
    unpack = _ELEMENT.unpack_from
    while pos < end:
        if pos + 8 > end:
            raise DimseError("truncated command element")
        group, elem, length = unpack(raw, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise DimseError(f"bad command element ({group:04x},{elem:04x}) length {length}")
        values[elem] = raw[pos : pos + length]
        pos += length
    get = values.get
    return Command(
        command_field=_us(values, COMMAND_FIELD),
        message_id=_us(values, MESSAGE_ID) if MESSAGE_ID in values else 0,
        data_set_type=_us(values, COMMAND_DATA_SET_TYPE),
        affected_sop_class=_text(get(AFFECTED_SOP_CLASS_UID)),
        affected_sop_instance=_text(get(AFFECTED_SOP_INSTANCE_UID)),
        move_originator_ae=_text(get(MOVE_ORIGINATOR_AE)),
        requested_sop_class=_text(get(REQUESTED_SOP_CLASS_UID)),
        requested_sop_instance=_text(get(REQUESTED_SOP_INSTANCE_UID)),
    )


def _us(values: dict[int, bytes | bytearray], elem: int) -> int:
    v = values.get(elem)
    if v is None or len(v) != 2:
        raise DimseError(f"command element (0000,{elem:04x}) missing or not US")
    return int.from_bytes(v, "little")


def _text(value: bytes | bytearray | None) -> str:
    """A UI or AE value: padding (NUL or space) and surrounding spaces removed; absent -> ""."""
    if not value:
        return ""
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _encode_value(elem: int, value: int | str) -> bytes:
    if elem in _US:
        assert isinstance(value, int)
        return struct.pack("<H", value)
    assert isinstance(value, str)
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if elem in _UIDS else b" "
    return raw


def encode_command(elements: dict[int, int | str]) -> bytes:
    body = b"".join(
        _ELEMENT.pack(0, elem, len(v)) + v for elem, v in ((e, _encode_value(e, elements[e])) for e in sorted(elements))
    )
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


_US_ELEMENT = struct.Struct("<HHLH")
_RSP_FIELDS = _US_ELEMENT.pack(0, COMMAND_FIELD, 2, C_STORE_RSP)
_RSP_NO_DATA_SET = _US_ELEMENT.pack(0, COMMAND_DATA_SET_TYPE, 2, NO_DATA_SET)
_GROUP_LENGTH = struct.Struct("<HHLL")


def _uid_element(elem: int, uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00"
    return _ELEMENT.pack(0, elem, len(raw)) + raw


def store_response(request: Command, status: int, error_comment: str = "") -> bytes:
    """The C-STORE-RSP command set, its elements written in tag order directly (once per
    instance: no dict, no sort; the same bytes as :func:`encode_command` would make)."""
    comment = b""
    if error_comment:
        raw = _encode_value(ERROR_COMMENT, error_comment[:64])
        comment = _ELEMENT.pack(0, ERROR_COMMENT, len(raw)) + raw
    body = b"".join(
        (
            _uid_element(AFFECTED_SOP_CLASS_UID, request.affected_sop_class),
            _RSP_FIELDS,
            _US_ELEMENT.pack(0, MESSAGE_ID_RESPONDED_TO, 2, request.message_id),
            _RSP_NO_DATA_SET,
            _US_ELEMENT.pack(0, STATUS, 2, status),
            comment,
            _uid_element(AFFECTED_SOP_INSTANCE_UID, request.affected_sop_instance),
        )
    )
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body


def echo_response(request: Command) -> bytes:
    return encode_command(
        {
            AFFECTED_SOP_CLASS_UID: request.affected_sop_class or "1.2.840.10008.1.1",
            COMMAND_FIELD: C_ECHO_RSP,
            MESSAGE_ID_RESPONDED_TO: request.message_id,
            COMMAND_DATA_SET_TYPE: NO_DATA_SET,
            STATUS: SUCCESS,
        }
    )


def failure_response(request: Command, status: int) -> bytes | None:
    """The response to a request we do not serve (a C-FIND sent to a storage SCP, an N-SET, ...).

    Its Command Field is the request's response (PS3.7 Annex E); the N-services' Requested SOP
    Class/Instance UIDs come back as the Affected ones. None for a request without a response
    (C-CANCEL-RQ) or a Command Field DIMSE does not define: nothing may be invented for those.
    """
    if request.command_field not in REQUEST_NAMES or request.command_field == C_CANCEL_RQ:
        return None
    elements: dict[int, int | str] = {
        COMMAND_FIELD: request.command_field | 0x8000,
        MESSAGE_ID_RESPONDED_TO: request.message_id,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
    }
    sop_class = request.affected_sop_class or request.requested_sop_class
    sop_instance = request.affected_sop_instance or request.requested_sop_instance
    if sop_class:
        elements[AFFECTED_SOP_CLASS_UID] = sop_class
    if sop_instance and request.command_field >= 0x0100:  # N-services name the instance
        elements[AFFECTED_SOP_INSTANCE_UID] = sop_instance
    return encode_command(elements)
