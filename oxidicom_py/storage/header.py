"""Read the few header elements that naming and registration need from a dataset's first bytes.

A small element walker instead of pydicom on the receive path: it stops at the last tag
we need, skips sequences of defined or undefined length without decoding them, and
returns raw values. Decoding text (character sets, first value, trimming) happens after,
only for the elements found.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, decode_bytes

WANTED: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00101010: "PatientAge",
    0x00181030: "ProtocolName",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
}
LAST_WANTED = max(WANTED)
KEYWORDS = tuple(WANTED.values())

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}
_CS_PADDING = " \t\n\r\x0b\x0c\x00"
_MAX_DEPTH = 64


class NeedMore(Exception):
    """The prefix ends before the walker reached the last wanted element."""


class HeaderError(Exception):
    """The dataset's encoding is malformed where the walker had to read it."""


class _Walker:
    __slots__ = ("buf", "end", "little", "u16", "u32")

    def __init__(self, buf: bytes | bytearray | memoryview, little: bool) -> None:
        self.buf = buf
        self.end = len(buf)
        self.little = little
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<L" if little else ">L").unpack_from

    def tag_at(self, pos: int) -> int:
        if pos + 4 > self.end:
            raise NeedMore
        return (self.u16(self.buf, pos)[0] << 16) | self.u16(self.buf, pos + 2)[0]

    def element_header(self, pos: int, implicit: bool) -> tuple[int, int, bytes, int]:
        """(tag, value length, VR or b'', header size) of the element at ``pos``."""
        tag = self.tag_at(pos)
        if pos + 8 > self.end:
            raise NeedMore
        if implicit or (tag >> 16) == 0xFFFE:
            return tag, self.u32(self.buf, pos + 4)[0], b"", 8
        vr = bytes(self.buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise NeedMore
            return tag, self.u32(self.buf, pos + 8)[0], vr, 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise HeaderError(f"invalid VR {vr!r} at offset {pos}")
        return tag, self.u16(self.buf, pos + 6)[0], vr, 8

    def looks_explicit(self, pos: int) -> bool:
        vr = self.buf[pos + 4 : pos + 6]
        return len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90

    def skip_sequence(self, pos: int, implicit: bool, depth: int) -> int:
        """Skip the items of an undefined-length sequence starting at ``pos``; return the end."""
        if depth > _MAX_DEPTH:
            raise HeaderError("sequences nested too deeply")
        while True:
            tag, length, _, hdr = self.element_header(pos, True)
            pos += hdr
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise HeaderError(f"expected an item tag in a sequence, found {tag:08x}")
            if length != _UNDEFINED:
                pos += length
                continue
            while True:  # elements of an undefined-length item
                if self.tag_at(pos) == _ITEM_END:
                    pos += 8
                    break
                pos = self.skip_element(pos, implicit, depth + 1)

    def skip_element(self, pos: int, implicit: bool, depth: int) -> int:
        _tag, length, vr, hdr = self.element_header(pos, implicit)
        pos += hdr
        if length == _UNDEFINED:
            return self.skip_sequence(pos, implicit or vr == b"UN", depth)
        return pos + length


Buffer = bytes | bytearray | memoryview


def walk(prefix: Buffer, *, implicit: bool, little: bool, complete: bool) -> dict[str, bytes]:
    """Raw values of the wanted top-level elements found in ``prefix``.

    Raises :class:`NeedMore` when ``prefix`` ends before the walk is done and ``complete``
    is false (more of the dataset is still to come). A dataset announced as explicit VR
    whose first element is implicit (some senders do this) is read as implicit, as
    pydicom does.
    """
    try:
        return _walk(prefix, implicit=implicit, little=little, complete=complete)
    except HeaderError:
        if implicit or len(prefix) < 6 or _Walker(prefix, little).looks_explicit(0):
            raise
        return _walk(prefix, implicit=True, little=little, complete=complete)


def _vr_codes(vrs: set[bytes], little: bool) -> frozenset[int]:
    return frozenset(int.from_bytes(vr, "little" if little else "big") for vr in vrs)


_UPPERCASE_PAIRS = {bytes((a, b)) for a in range(65, 91) for b in range(65, 91)}
_HEADERS = {
    # the element header's 4 fields (the VR as a 16-bit number: no bytes object per element),
    # the implicit header, a 32-bit length; then the VRs with a 16-bit length (any two uppercase
    # letters that are not a long VR, as before) and those with a 32-bit one, as such numbers
    little: (
        struct.Struct(f"{order}HHHH").unpack_from,
        struct.Struct(f"{order}HHL").unpack_from,
        struct.Struct(f"{order}L").unpack_from,
        _vr_codes(_UPPERCASE_PAIRS - _LONG_VRS, little),
        _vr_codes(_LONG_VRS, little),
    )
    for little, order in ((True, "<"), (False, ">"))
}


def _walk(prefix: Buffer, *, implicit: bool, little: bool, complete: bool) -> dict[str, bytes]:
    # The hot loop of the receive path: one struct call per top-level element; sequences of
    # undefined length (rare before (0020,0013)) go through the slower _Walker.
    explicit_header, implicit_header, u32, short_vrs, long_vrs = _HEADERS[little]
    end = len(prefix)
    found: dict[str, bytes] = {}
    pos = 0
    walker: _Walker | None = None
    while True:
        if pos + 8 > end:
            if pos + 4 <= end and _Walker(prefix, little).tag_at(pos) > LAST_WANTED:
                return found
            if complete:
                return found
            raise NeedMore
        long_vr, hdr = False, 8
        if implicit:
            group, elem, length = implicit_header(prefix, pos)
        else:
            group, elem, vr, length = explicit_header(prefix, pos)
            if group == 0xFFFE:  # an item tag: no VR, a 32-bit length
                (length,) = u32(prefix, pos + 4)
            elif vr in short_vrs:
                pass
            elif vr in long_vrs:
                if pos + 12 > end:
                    if ((group << 16) | elem) > LAST_WANTED or complete:
                        return found
                    raise NeedMore
                (length,) = u32(prefix, pos + 8)
                long_vr, hdr = True, 12
            else:
                raise HeaderError(f"invalid VR {bytes(prefix[pos + 4 : pos + 6])!r} at offset {pos}")
        tag = (group << 16) | elem
        if tag > LAST_WANTED:
            return found
        if length == _UNDEFINED:
            if walker is None:
                walker = _Walker(prefix, little)
            try:
                # UN of undefined length is implicit VR inside (PS3.5 6.2.2)
                un = long_vr and prefix[pos + 4 : pos + 6] == b"UN"
                pos = walker.skip_sequence(pos + hdr, implicit or un, 1)
            except NeedMore:
                if complete:
                    return found
                raise
            continue
        start = pos + hdr
        pos = start + length
        name = WANTED.get(tag)
        if name is not None:
            if pos > end:
                if complete:  # the dataset ends inside an element: keep what was found before it
                    return found
                raise NeedMore
            found[name] = bytes(prefix[start:pos])


def python_encodings(charset: bytes | None) -> list[str]:
    """Python codecs of a SpecificCharacterSet value, as pydicom reads it, never raising.

    Padding (space or NUL) around each term is ignored. Unknown terms fall back to the default
    repertoire with a warning (pydicom does that); a term pydicom cannot even look up (a NUL
    inside it makes ``codecs.lookup`` raise ``ValueError``) means the whole value is unusable:
    the default repertoire again, instead of an exception on the receive path.
    """
    terms = [t.strip(_CS_PADDING) for t in (charset or b"").decode("ascii", "replace").split("\\")]
    try:
        return convert_encodings(terms)
    except Exception:  # any failure here must not cost the instance: decode as without a charset
        return convert_encodings([""])


def decode_values(raw: dict[str, bytes]) -> dict[str, str | None]:
    """Decode raw text values with the dataset's character set; absent or empty -> None.

    ASCII values are taken as they are, unless they hold an escape (ISO 2022 code extensions,
    such as ``ISO 2022 IR 87``, encode Japanese in 7-bit bytes behind ESC sequences).
    """
    charset = raw.get("SpecificCharacterSet")
    encodings: list[str] | None = None
    out: dict[str, str | None] = dict.fromkeys(KEYWORDS)
    for name, value in raw.items():
        if not value:
            continue
        if value.isascii() and b"\x1b" not in value:
            out[name] = value.decode("ascii")
            continue
        if encodings is None:
            encodings = python_encodings(charset)
        delimiters = _PN_DELIMITERS if name == "PatientName" else None
        try:
            out[name] = decode_bytes(value, encodings, delimiters or set())
        except Exception:  # pydicom configured to raise on bad bytes: keep the value, replaced
            out[name] = value.decode(encodings[0], "replace")
    return out
