"""What the two fuzz harnesses read the same way from an input: the acceptor's configuration
(byte 0) and the read sizes (bytes 2-5). The oxidicom_py modules are passed in, so that each
harness imports them under its own instrumentation."""

from __future__ import annotations

from typing import Any

MAX_PDU = (16384, 0, 256, 4096)


def acceptor_config(config: Any, negotiation: Any, flags: int, timeouts: float | None) -> Any:
    """Byte 0: bit 0 strict; bits 1-2 maximum PDU length; bit 3 promiscuous; bit 4 uncompressed
    only; bit 5 check the called AE title (``OXI``); bit 6 only calling AE ``RAWSCU`` allowed."""
    return config.AcceptorConfig(
        "OXI",
        MAX_PDU[(flags >> 1) & 3],
        bool(flags & 0x01),
        negotiation.AcceptancePolicy(bool(flags & 0x08), bool(flags & 0x10)),
        artim_timeout=3600.0,
        allowed_calling_aets=frozenset({"RAWSCU"}) if flags & 0x40 else None,
        check_called_aet=bool(flags & 0x20),
        idle_timeout=timeouts,
        pdu_timeout=timeouts,
    )


def split(stream: bytes, pattern: bytes) -> list[bytes]:
    """Reads of the sizes ``pattern`` gives, in turn: 0 the rest, 1-127 that many bytes,
    128-255 (n - 127) * 64 bytes."""
    sizes = [0 if p == 0 else p if p < 128 else (p - 127) * 64 for p in pattern] or [0]
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)] or len(stream) - pos
        chunks.append(stream[pos : pos + size])
        pos += size
        i += 1
    return chunks
