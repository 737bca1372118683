"""The DICOM Part 10 file header (preamble, ``DICM``, group 0002) written before a received dataset."""

from __future__ import annotations

import struct

from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "file_header"]

_PREAMBLE = bytes(128) + b"DICM"


def _short(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble + ``DICM`` + File Meta Information (PS3.10 7.1), Explicit VR Little Endian."""
    body = b"".join(
        (
            struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short(0x0002, b"UI", _ui(sop_class_uid)),
            _short(0x0003, b"UI", _ui(sop_instance_uid)),
            _short(0x0010, b"UI", _ui(transfer_syntax)),
            _short(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _short(0x0016, b"AE", _text(source_ae[:16])) if source_ae else b"",
        )
    )
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + group_length + body
