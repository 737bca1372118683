"""Bad input: fuzzed PDUs, hostile tag values, pydicom's whole test corpus."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from harness import (
    IMPLEMENTATIONS,
    InProcessReceiver,
    RawScu,
    associate_rq,
    dataset_bytes,
    encode_dataset,
    load_script,
    p_data,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidicom_py.dicom import dimse, pdu
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.negotiation import AcceptancePolicy
from oxidicom_py.net.protocol import AssociationProtocol
from oxidicom_py.storage.ingest import StorageStage
from oxidicom_py.storage.writer import FilesRoot

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_VALID_RQ = associate_rq([(1, MR, [EXPLICIT])], called="OXI")


def _run_protocol(chunks: list[bytes], root: Path) -> tuple[AssociationProtocol, _Transport]:
    async def scenario() -> tuple[AssociationProtocol, _Transport]:
        files = FilesRoot(root, fsync=False)
        ingest = StorageStage(files, None)
        proto = AssociationProtocol(
            AcceptorConfig("OXI", 16384, True, AcceptancePolicy(), artim_timeout=5), ingest.association
        )
        transport = _Transport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break
            proto.data_received(chunk)
        proto.connection_lost(None)
        await asyncio.sleep(0)
        return proto, transport

    return asyncio.run(scenario())


def _pdu_types(transport: _Transport) -> list[int]:
    out, stream = [], b"".join(transport.sent)
    pos = 0
    while pos + 6 <= len(stream):
        pdu_type, length = struct.unpack_from(">BxL", stream, pos)
        out.append(pdu_type)
        pos += 6 + length
    return out


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.binary(max_size=300),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    split=st.integers(1, 64),
    prefix_valid=st.booleans(),
)
def test_fuzzed_streams_never_crash_and_end_cleanly(
    tmp_path: Path, garbage: bytes, edits: list[tuple[int, int]], split: int, prefix_valid: bool
) -> None:
    """Random and mutated association requests and PDUs, in random read sizes: the protocol
    never raises, answers only with the PDUs an acceptor may send, and leaves no file behind."""
    stream = (_mutate(_VALID_RQ, edits) if prefix_valid else b"") + garbage
    chunks = [stream[i : i + split] for i in range(0, len(stream), split)]
    _proto, transport = _run_protocol(chunks, tmp_path)
    assert set(_pdu_types(transport)) <= {
        pdu.A_ASSOCIATE_AC,
        pdu.A_ASSOCIATE_RJ,
        pdu.A_ABORT,
        pdu.P_DATA_TF,
        pdu.A_RELEASE_RP,
    }
    assert not list((tmp_path / ".oxidicom-staging").rglob("*.part"))
    assert not (tmp_path / "SERVICES").exists() or not list((tmp_path / "SERVICES").rglob("*.dcm"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=0, max_size=400))
def test_fuzzed_p_data_after_a_valid_association(tmp_path: Path, body: bytes) -> None:
    """After a real association, arbitrary P-DATA bodies get an abort or are ignored, never a crash."""
    stream = _VALID_RQ + bytes((pdu.P_DATA_TF, 0)) + len(body).to_bytes(4, "big") + body
    _proto, transport = _run_protocol([stream], tmp_path)
    types = _pdu_types(transport)
    assert types[0] == pdu.A_ASSOCIATE_AC
    assert set(types[1:]) <= {pdu.A_ABORT, pdu.P_DATA_TF}


HOSTILE = ["../../../../etc/passwd", "/etc/shadow", "a\x00b", "x" * 10_000, "..", ".", "a/../../b", "\\..\\x"]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_tag_values_stay_inside_the_files_root(tmp_path: Path, value: str) -> None:
    src = load_script("synthetic").generate(tmp_path / "src", slices=1, rows=8, cols=8)[0]
    ds = pydicom.dcmread(src)
    ds.PatientID = value
    ds.StudyDescription = value
    ds.SeriesDescription = value
    # Series/InstanceNumber are IS; pydicom will not encode a non-number as IS, so send them as LO
    # (the receiver reads the bytes whatever the VR says).
    del ds.SeriesNumber, ds.InstanceNumber
    ds.add_new(0x00200011, "LO", value[:64])
    ds.add_new(0x00200013, "LO", value[:64])
    root = tmp_path / "root"
    with InProcessReceiver(root) as rx:
        scu = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        status, comment = scu.store(1, MR, str(ds.SOPInstanceUID), encode_dataset(ds))
        scu.release()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "src")]
    assert all(p.is_relative_to(root) for p in outside)
    if status == 0:
        (stored,) = rx.stored()
        assert stored.resolve().is_relative_to(root.resolve())
        assert stored.relative_to(root).parts[:3] == ("SERVICES", "PACS", "RAWSCU")
    else:
        assert comment  # a refusal says why


_CORPUS = sorted(
    p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm") if "deflate" not in p.name.lower()
)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_file_of_pydicoms_corpus_gets_a_defined_outcome(tmp_path: Path, implementation: str) -> None:
    """Each test file of pydicom is sent in its own transfer syntax: it is stored (as sent, behind
    a file meta naming that transfer syntax), or refused with a failure status and a reason;
    the receiver never drops the association."""
    outcomes: dict[str, int] = {}
    sent: dict[str, set[tuple[str, str]]] = {}  # SOP Instance UID -> (transfer syntax, dataset digest) stored
    with InProcessReceiver(tmp_path / "root", promiscuous=True, implementation=implementation) as rx:
        for path in _CORPUS:
            try:
                ds = pydicom.dcmread(path, force=True)
                tsyntax = str(ds.file_meta.TransferSyntaxUID)
                sop_class = str(ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"))
                sop_instance = str(ds.get("SOPInstanceUID", "1.2.3"))
                raw = dataset_bytes(path)
            except Exception:
                continue  # not a Part 10 file pydicom can split: nothing to send
            scu = RawScu(rx.port, [(1, sop_class, [tsyntax])], calling="CORPUS")
            item = scu.ac.find(bytes((0x21, 0)), 68)
            if item < 0 or scu.ac[item + 6] != pdu.PC_ACCEPTANCE:  # e.g. deflated: refused at negotiation
                scu.release()
                continue
            status, comment = scu.store(1, sop_class, sop_instance, raw)
            scu.release()
            assert status == 0 or (status in (dimse.CANNOT_UNDERSTAND, dimse.OUT_OF_RESOURCES) and comment), path
            outcomes[path.name] = status
            if status == 0:
                sent.setdefault(sop_instance, set()).add((tsyntax, hashlib.sha256(raw).hexdigest()))
    assert len(outcomes) > 50
    assert sum(1 for s in outcomes.values() if s == 0) > 30
    assert rx.staged() == []
    for stored in rx.stored():
        uid = stored.name.rsplit("-", 1)[-1].removesuffix(".dcm")
        meta = pydicom.filereader.read_file_meta_info(stored)
        digest = hashlib.sha256(dataset_bytes(stored)).hexdigest()
        assert (str(meta.TransferSyntaxUID), digest) in sent.get(uid, set()), stored.name


def test_p_data_to_an_unknown_context_and_oversized_command_are_aborted(tmp_path: Path) -> None:
    stream = _VALID_RQ + p_data(3, b"\x00" * 10, command=True)
    _proto, transport = _run_protocol([stream], tmp_path)
    assert _pdu_types(transport) == [pdu.A_ASSOCIATE_AC, pdu.A_ABORT]
