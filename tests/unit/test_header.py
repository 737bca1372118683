"""The header walker against pydicom, on pydicom's own test corpus and hand-built edge cases."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from oxidicom_py.dicom.contexts import dataset_encoding
from oxidicom_py.storage import header
from oxidicom_py.storage.part10 import file_header


def _dataset_bytes(path: str) -> tuple[bytes, str] | None:
    """The dataset part of a Part 10 file (after the meta group) and its transfer syntax."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False)
    except Exception:
        return None
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None or tsyntax.is_deflated:
        return None
    with open(path, "rb") as f:
        raw = f.read()
    if raw[128:132] != b"DICM":
        return None
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :], str(tsyntax)


def _pydicom_values(data: bytes, tsyntax: str) -> dict[str, str | None]:
    implicit, little = dataset_encoding(tsyntax)
    ds = pydicom.filereader.read_dataset(io.BytesIO(data), implicit, little)
    out: dict[str, str | None] = {}
    for kw in header.KEYWORDS:
        elem = ds.data_element(kw) if kw in ds else None
        if elem is None or elem.value in (None, "", b""):
            out[kw] = None
            continue
        value = elem.value
        if isinstance(value, pydicom.multival.MultiValue):
            value = "\\".join(str(x) for x in value)
        out[kw] = str(value)
    return out


def _norm(v: str | None) -> str | None:
    return None if v is None else v.split("\\")[0].strip(" \x00") or None


# pydicom's bundled test files (read from the installed package; never downloaded).
_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CORPUS = sorted(str(p) for p in _TEST_FILES.rglob("*.dcm") if "deflate" not in p.name.lower())


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: Path(p).name)
def test_walker_agrees_with_pydicom(path: str) -> None:
    got = _dataset_bytes(path)
    if got is None:
        pytest.skip("not a Part 10 file pydicom can split")
    data, tsyntax = got
    implicit, little = dataset_encoding(tsyntax)
    try:
        expected = _pydicom_values(data, tsyntax)
    except Exception:
        pytest.skip("pydicom cannot read this dataset either")
    walked = header.decode_values(header.walk(data, implicit=implicit, little=little, complete=True))
    for kw in header.KEYWORDS:
        if kw == "SpecificCharacterSet":
            continue
        assert _norm(walked[kw]) == _norm(expected[kw]), kw


def _encode(ds: Dataset, implicit: bool, little: bool = True) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_implicit_VR = implicit
    buf.is_little_endian = little
    write_dataset(buf, ds)
    return buf.getvalue()


def _sample_dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyDate = "20130308"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "9.9.9"
    inner = Dataset()
    inner.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SeriesNumber = 5
    ds.InstanceNumber = 12
    ds.add_new(0x7FE00010, "OW", b"\x00" * 64)
    return ds


@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)])
def test_sequences_of_defined_and_undefined_length(implicit: bool, little: bool, undefined: bool) -> None:
    ds = _sample_dataset()
    for item in ds.ReferencedImageSequence:
        item.PurposeOfReferenceCodeSequence.is_undefined_length = undefined
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    data = _encode(ds, implicit, little)
    values = header.decode_values(header.walk(data, implicit=implicit, little=little, complete=True))
    assert values["PatientName"].strip() == "Müller^Jürgen"
    assert values["SeriesInstanceUID"].rstrip("\x00") == "1.2.3.4"
    assert values["InstanceNumber"].strip() == "12"
    assert values["PatientAge"] is None


def test_walker_asks_for_more_until_the_last_wanted_tag() -> None:
    data = _encode(_sample_dataset(), False)
    cut = data.index(b"1.2.3.4\x00") - 2  # inside the SeriesInstanceUID element
    with pytest.raises(header.NeedMore):
        header.walk(data[:cut], implicit=False, little=True, complete=False)
    # Every prefix either asks for more or gives the same answer as the whole dataset.
    whole = header.walk(data, implicit=False, little=True, complete=True)
    answered = []
    for n in range(len(data) + 1):
        try:
            got = header.walk(data[:n], implicit=False, little=True, complete=False)
        except header.NeedMore:
            continue
        assert got == whole
        answered.append(n)
    # It answers from the first byte after (0020,0013) onwards, and never before.
    assert answered == list(range(data.index(b"\xe0\x7f\x10\x00") + 4, len(data) + 1))


def test_walker_stops_before_pixel_data() -> None:
    data = _encode(_sample_dataset(), False)
    end = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    assert header.walk(data[: end + 4], implicit=False, little=True, complete=False)["PatientID"] == b"PID "


def test_malformed_vr_is_a_header_error() -> None:
    """A bad VR after a good explicit element is malformed (no implicit-VR fallback)."""
    good = b"\x08\x00\x16\x00" + b"UI" + b"\x02\x00" + b"1\x00"
    bad = good + b"\x08\x00\x18\x00" + b"\x01\x02" + b"\x02\x00" + b"12"
    with pytest.raises(header.HeaderError):
        header.walk(bad, implicit=False, little=True, complete=True)


def test_an_unknown_vr_of_two_letters_has_a_short_length_and_un_of_undefined_length_is_implicit_inside() -> None:
    """The walker reads an element header's VR as a number: an unknown uppercase pair still
    has the 2-byte length (as pydicom reads it), and UN of undefined length holds implicit VR
    items (PS3.5 6.2.2), in both byte orders."""
    for little in (True, False):
        e = "<" if little else ">"

        def short(group: int, elem: int, vr: bytes, value: bytes, e: str = e) -> bytes:
            return struct.pack(f"{e}HH2sH", group, elem, vr, len(value)) + value

        item = struct.pack(f"{e}HHL", 0x0008, 0x0100, 4) + b"CODE"  # implicit VR inside the UN
        un = struct.pack(f"{e}HH2sHL", 0x0008, 0x1140, b"UN", 0, 0xFFFFFFFF)
        un += struct.pack(f"{e}HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack(f"{e}HHL", 0xFFFE, 0xE00D, 0)
        un += struct.pack(f"{e}HHL", 0xFFFE, 0xE0DD, 0)
        data = (
            short(0x0008, 0x0060, b"ZZ", b"MR")
            + un
            + short(0x0010, 0x0020, b"LO", b"PID ")
            + short(0x0020, 0x0013, b"IS", b"7 ")
        )
        found = header.walk(data, implicit=False, little=little, complete=True)
        assert found == {"Modality": b"MR", "PatientID": b"PID ", "InstanceNumber": b"7 "}, little


def test_part10_header_reads_back_with_pydicom() -> None:
    ds = _sample_dataset()
    data = _encode(ds, False)
    raw = file_header(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "OXITESTORTHANC") + data
    back = pydicom.dcmread(io.BytesIO(raw))
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.file_meta.SourceApplicationEntityTitle == "OXITESTORTHANC"
    assert back.PatientName == "Müller^Jürgen"
    fm = FileMetaDataset(back.file_meta)
    assert fm.FileMetaInformationGroupLength == len(raw) - len(data) - 132 - 12
