"""A stored file read back into its record, with the receive path's own header walker and row
builder (reconciliation registers files whose row a crash lost).

The calling AE title comes from the file meta's SourceApplicationEntityTitle, which the
receiver writes into every file (the path only holds its sanitised form); a file without it is
not one of ours.
"""

from __future__ import annotations

import struct
from pathlib import Path

from oxidicom_py.dicom.contexts import dataset_encoding
from oxidicom_py.record import PacsFileRow
from oxidicom_py.storage import header
from oxidicom_py.storage.instance_record import check_required, make_row, values_of

_HEAD = 1 << 20
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _file_meta(head: bytes) -> tuple[dict[int, bytes], int] | None:
    """Group 0002 values of a Part 10 file and the offset where its dataset starts."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    values: dict[int, bytes] = {}
    pos = 132
    end = len(head)
    dataset_start = None
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            dataset_start = pos
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        values[elem] = head[start : start + length]
        pos = start + length
    if dataset_start is None:
        dataset_start = pos
    return values, dataset_start


def _text(raw: bytes | None) -> str:
    return (raw or b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()


def row_of_stored_file(root: Path, relative: str) -> PacsFileRow | None:
    """The registry row of a file we stored, read back from its header (None if unreadable)."""
    path = root / relative
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    meta = _file_meta(head)
    if meta is None:
        return None
    values_meta, start = meta
    implicit, little = dataset_encoding(_text(values_meta.get(0x0010)))
    raw: dict[str, bytes] | None
    try:
        try:
            raw = header.walk(head[start:], implicit=implicit, little=little, complete=len(head) < _HEAD)
        except header.NeedMore:
            raw = header.walk(path.read_bytes()[start:], implicit=implicit, little=little, complete=True)
    except header.HeaderError:
        raw = None
    values = values_of(raw, str(path))
    problem, study_date = check_required(values)
    aet = _text(values_meta.get(0x0016))
    if problem is not None or study_date is None or not aet:
        return None
    return make_row(relative, aet, values, study_date, "reconciliation")
