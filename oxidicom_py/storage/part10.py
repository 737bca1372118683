"""The DICOM Part 10 file header (preamble, ``DICM``, group 0002) written before a received dataset."""

from __future__ import annotations

import functools
import struct

from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "file_header"]

_PREAMBLE = bytes(128) + b"DICM"
_HEADER_WITH_U32 = struct.Struct("<HH2sHL")
"""An element header with a 32-bit field after it: (0002,0001)'s long-VR header, (0002,0000) with its value."""


def _short(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


@functools.lru_cache(maxsize=256)
def _around_instance(sop_class_uid: str, transfer_syntax: str, source_ae: str) -> tuple[bytes, bytes]:
    """The meta elements before and after (0002,0003): the same for every instance of a context
    from one sender, so made once."""
    before = (
        _HEADER_WITH_U32.pack(0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01" + _short(0x0002, b"UI", _ui(sop_class_uid))
    )
    after = b"".join(
        (
            _short(0x0010, b"UI", _ui(transfer_syntax)),
            _short(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _short(0x0016, b"AE", _text(source_ae[:16])) if source_ae else b"",
        )
    )
    return before, after


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble + ``DICM`` + File Meta Information (PS3.10 7.1), Explicit VR Little Endian."""
    before, after = _around_instance(sop_class_uid, transfer_syntax, source_ae)
    instance = _short(0x0003, b"UI", _ui(sop_instance_uid))
    length = len(before) + len(instance) + len(after)
    return b"".join((_PREAMBLE, _HEADER_WITH_U32.pack(0x0002, 0x0000, b"UL", 4, length), before, instance, after))
