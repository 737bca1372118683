"""The pynetdicom fallback acceptor (OXIDICOM_SCP_IMPLEMENTATION=pynetdicom) feeds the same storage path.

The storage-content tests here run against both acceptors: what is stored is what was sent,
in a Part 10 file pydicom reads with the right file meta, in every kind of transfer syntax
(Big Endian and encapsulated ones included), and a big instance is streamed, never held in
memory. The fallback does not enforce strict mode, the PDU timeout or the allowed networks
(documented); protocol-level tests stay with the asyncio acceptor.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from harness import (
    IMPLEMENTATIONS,
    LOOPBACK,
    InProcessReceiver,
    RawClient,
    RawScu,
    associate_rq,
    dataset_bytes,
    encode_dataset,
    load_script,
    p_data,
    peer_env,
    wait_until,
)
from peers import ServeProcess
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from oxidicom_py.dicom import dimse, pdu
from oxidicom_py.net import pynetdicom_scp

pytestmark = pytest.mark.integration

MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
TRANSFER_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, RLE_LOSSLESS, JPEG_LOSSLESS, JPEG_2000)
ENCAPSULATED = {RLE_LOSSLESS, JPEG_LOSSLESS, JPEG_2000}
ROOT = "1.2.826.0.1.3680043.8.498.8841"


def _rows(db: str) -> list[tuple[str, str]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            'SELECT fname, "Modality" FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id '
            "WHERE p.identifier <> 'org.fnndsc.oxidicom'"  # instances only, not the series marker rows
        ).fetchall()


def _check_part10(path: Path, sent: bytes, transfer_syntax: str, sop_class: str, sop_instance: str) -> Dataset:
    """The stored file holds exactly the sent dataset behind a file meta pydicom reads and that names it."""
    assert dataset_bytes(path) == sent
    ds = pydicom.dcmread(path)
    meta = ds.file_meta
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.MediaStorageSOPClassUID == sop_class
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert ds.SOPInstanceUID == sop_instance  # the dataset decoded in that transfer syntax
    return ds


@pytest.mark.parametrize("processes", [1, 2])
def test_pynetdicom_acceptor_stores_and_registers(tmp_path: Path, db_uri: str, processes: int) -> None:
    synthetic = load_script("synthetic")
    files = synthetic.generate(tmp_path / "src", n_series=2, slices=10, rows=64, cols=64)
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_SCP_IMPLEMENTATION": "pynetdicom",
        "OXIDICOM_LISTENER_PROCESSES": str(processes),
    }
    with ServeProcess(env, tmp_path) as rx:
        assert any("(pynetdicom)" in str(line.get("msg")) for line in rx.lines)
        proc = subprocess.run(
            ["/usr/bin/storescu", "-aet", "FALLBACK", "-aec", "OXIDICOMTEST", LOOPBACK, str(rx.port), *map(str, files)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        scu = RawScu(rx.port, [(1, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])], called="OXIDICOMTEST")
        bad = pydicom.dcmread(files[0])
        del bad.StudyInstanceUID
        status, comment = scu.store(1, str(bad.SOPClassUID), str(bad.SOPInstanceUID), encode_dataset(bad))
        scu.release()
        assert status == dimse.CANNOT_UNDERSTAND and "StudyInstanceUID" in comment
        wait_until(lambda: len(_rows(db_uri)) == len(files), 30, what="every row")
        stored = sorted((tmp_path / "files" / "SERVICES").rglob("*.dcm"))
        assert sorted(dataset_bytes(p) for p in stored) == sorted(dataset_bytes(p) for p in files)
        for path in stored:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        staging = tmp_path / "files" / ".oxidicom-staging"
        wait_until(lambda: not list(staging.rglob("*.part")), 10, what="no staged file")
    assert rx.proc is not None and rx.proc.returncode == 0


# -- every transfer syntax, both acceptors --------------------------------------------------


def _instance(n: int, transfer_syntax: str) -> tuple[str, bytes, int]:
    """(SOP Instance UID, dataset bytes in ``transfer_syntax``, Rows) of a small MR instance.

    Encapsulated syntaxes get encapsulated pixel data whose fragments are not real codestreams:
    the receiver never decodes pixels, it stores the bytes as received."""
    sop = f"{ROOT}.3.{n}"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20240102"
    ds.Modality = "MR"
    ds.PatientName = "Endian^Test"
    ds.PatientID = "ENDIAN"
    ds.StudyInstanceUID = f"{ROOT}.1"
    ds.SeriesInstanceUID = f"{ROOT}.2"
    ds.SeriesNumber = 5
    ds.InstanceNumber = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 4 + n, 6
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagePositionPatient = [0.5, -1.25, float(n)]  # DS and US values: byte order matters
    pixels = bytes(range(2 * ds.Rows * ds.Columns))
    if transfer_syntax in ENCAPSULATED:
        ds.PixelData = encapsulate([pixels[: len(pixels) // 2], pixels[len(pixels) // 2 :]])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
    buf = DicomBytesIO()
    buf.is_implicit_VR = transfer_syntax == IMPLICIT_LE
    buf.is_little_endian = transfer_syntax != EXPLICIT_BE
    write_dataset(buf, ds)
    return sop, buf.getvalue(), int(ds.Rows)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_kind_of_transfer_syntax_is_stored_as_sent(tmp_path: Path, implementation: str) -> None:
    """Before (pynetdicom): the file meta said Transfer Syntax UID "1" (the first character of
    the context's one UID; pydicom refused the file), and so a Big Endian dataset was read as
    Little Endian and refused, "missing required tag StudyInstanceUID"."""
    contexts = [(2 * i + 1, MR, [ts]) for i, ts in enumerate(TRANSFER_SYNTAXES)]
    with InProcessReceiver(tmp_path / "files", implementation=implementation) as rx:
        scu = RawScu(rx.port, contexts)
        sent: dict[str, tuple[str, bytes, int]] = {}
        outcomes: dict[str, tuple[int, str]] = {}
        for n, (context_id, _mr, (ts,)) in enumerate(contexts, start=1):
            sop, data, rows = _instance(n, ts)
            outcomes[ts] = scu.store(context_id, MR, sop, data)
            sent[sop] = (ts, data, rows)
        scu.release()
        wait_until(rx.idle, 10, what="the association to end")
        stored = {p.name.rsplit("-", 1)[-1].removesuffix(".dcm"): p for p in rx.stored()}
        wrong = []
        for sop, (ts, data, rows) in sent.items():
            if sop not in stored:
                continue  # its status says why, below
            try:
                ds = _check_part10(stored[sop], data, ts, MR, sop)
                assert ds.Rows == rows and ds.StudyInstanceUID == f"{ROOT}.1" and ds.PatientID == "ENDIAN"
                assert ds.ImagePositionPatient[1] == -1.25
            except Exception as e:  # every transfer syntax's problem at once
                wrong.append(f"{ts}: {type(e).__name__}: {e}")
        assert wrong == []
        assert outcomes == dict.fromkeys(TRANSFER_SYNTAXES, (dimse.SUCCESS, ""))
        assert set(stored) == set(sent)
        assert sorted(row.fname.rsplit("-", 1)[-1].removesuffix(".dcm") for row in rx.rows) == sorted(sent)
        assert {row.StudyInstanceUID for row in rx.rows} == {f"{ROOT}.1"}
        assert rx.staged() == []


# -- big instances: streamed, never in memory ---------------------------------------------


class _SinkSpy:
    """Wraps an StorageStage's association handlers to record the size of every ``write``."""

    def __init__(self, on_established: Callable[[Any], Any]) -> None:
        self.on_established = on_established
        self.writes: list[int] = []

    def __call__(self, info: Any) -> Any:
        handler = self.on_established(info)
        spy = self

        class Handler:
            def begin_instance(self, command: Any, context: Any) -> Any:
                sink = handler.begin_instance(command, context)

                class Sink:
                    def write(self, data: memoryview) -> None:
                        spy.writes.append(len(data))
                        sink.write(data)

                    def finish(self) -> Any:
                        return sink.finish()

                    def abort(self, reason: str) -> None:
                        sink.abort(reason)

                return Sink()

            def closed(self, outcome: str) -> None:
                handler.closed(outcome)

        return Handler()


def test_a_big_instance_reaches_the_sink_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom writes the dataset to a temporary file in the staging folder (not /tmp); it is
    read back CHUNK_SIZE at a time into the sink, and removed."""
    synthetic = load_script("synthetic")
    (src,) = synthetic.generate(tmp_path / "src", slices=1, rows=512, cols=512, frames=13)  # 6.8 MB
    sent = dataset_bytes(src)
    assert len(sent) % pynetdicom_scp.CHUNK_SIZE  # a last, partial chunk too
    temp_files: list[str] = []
    original = pynetdicom_scp.PynetdicomListener._temporary_file

    def recording(listener: pynetdicom_scp.PynetdicomListener, assoc: Any) -> Any:
        f = original(listener, assoc)
        temp_files.append(f.name)
        return f

    monkeypatch.setattr(pynetdicom_scp.PynetdicomListener, "_temporary_file", recording)
    with InProcessReceiver(tmp_path / "files", implementation="pynetdicom") as rx:
        spy = _SinkSpy(rx.listener._on_established)
        rx.listener._on_established = spy  # type: ignore[assignment]
        proc = subprocess.run(
            ["/usr/bin/storescu", "-aet", "BIGSCU", "-aec", "OXITEST", LOOPBACK, str(rx.port), str(src)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        wait_until(rx.idle, 10, what="the association to end")
        (stored,) = rx.stored()
        original_ds = pydicom.dcmread(src, stop_before_pixels=True)
        _check_part10(stored, sent, EXPLICIT_LE, str(original_ds.SOPClassUID), str(original_ds.SOPInstanceUID))
        assert rx.staged() == []
    assert max(spy.writes) <= pynetdicom_scp.CHUNK_SIZE
    assert len(spy.writes) == math.ceil(len(sent) / pynetdicom_scp.CHUNK_SIZE)
    assert sum(spy.writes) == len(sent)
    assert len(temp_files) == 1
    assert Path(temp_files[0]).parent == rx.files.staging
    assert Path(temp_files[0]).name.startswith("pynetdicom-")  # in the worker's own folder: no PID needed
    assert not Path(temp_files[0]).exists()


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


@pytest.fixture(scope="module")
def big_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One 210 MB multi-frame MR instance (400 frames of 512 x 512), removed afterwards."""
    synthetic = load_script("synthetic")
    (path,) = synthetic.generate(tmp_path_factory.mktemp("big"), slices=1, rows=512, cols=512, frames=400)
    yield path
    path.unlink()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_210_mb_instance_is_streamed_by_the_worker(
    tmp_path: Path, db_uri: str, big_instance: Path, implementation: str
) -> None:
    """Peak RSS of the serving process grows by far less than the instance. Before (pynetdicom):
    +404 MB, the dataset held in memory (twice, at times)."""
    files_root = tmp_path / "files"
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(files_root),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_SCP_IMPLEMENTATION": implementation,
        "OXIDICOM_LISTENER_PROCESSES": "1",  # the serve process is the worker
    }
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        pid = rx.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _memory(pid)
        proc = subprocess.run(
            ["/usr/bin/storescu", "-aet", "BIGSCU", "-aec", "OXIDICOMTEST", LOOPBACK, str(rx.port), str(big_instance)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        growth = _memory(pid)["VmHWM"] - before["VmRSS"]
        assert growth < 48, f"peak RSS grew by {growth} MiB for a {big_instance.stat().st_size >> 20} MiB instance"
        wait_until(lambda: len(_rows(db_uri)) == 1, 30, what="the row")
        (stored,) = (files_root / "SERVICES").rglob("*.dcm")
        assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert _same_dataset(stored, big_instance)
        assert list((files_root / ".oxidicom-staging").rglob("*.part")) == []
    assert rx.proc.returncode == 0
    stored.unlink()  # 210 MB less in the kept temporary folders


def _same_dataset(ours: Path, theirs: Path, chunk: int = 1 << 20) -> bool:
    """Dataset bytes equal, compared a chunk at a time (not 2 x 210 MB in the test process)."""

    def dataset_file(path: Path) -> Any:
        f = path.open("rb")
        head = f.read(144)
        f.seek(144 + int.from_bytes(head[140:144], "little"))
        return f

    with dataset_file(ours) as a, dataset_file(theirs) as b:
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if x != y:
                return False
            if not x:
                return True


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ending", ["abort", "disconnect"])
def test_an_association_ending_mid_dataset_leaves_no_file(tmp_path: Path, implementation: str, ending: str) -> None:
    """Half a dataset, then A-ABORT or a closed connection: nothing stored, nothing staged
    (pynetdicom's temporary file included), and the association ended."""
    sop, data, _rows = _instance(1, EXPLICIT_LE)
    data += b"\x00" * 300_000  # more than one PDV's worth, so that something is staged
    with InProcessReceiver(tmp_path / "files", implementation=implementation) as rx:
        client = RawClient(rx.port)
        client.send(associate_rq([(1, MR, [EXPLICIT_LE])]))
        assert client.recv_pdu()[0] == pdu.A_ASSOCIATE_AC
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: MR,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: 1,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0x0000,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop,
            }
        )
        client.send(p_data(1, command, command=True) + p_data(1, data[:150_000], command=False, last=False))
        wait_until(rx.staged, 10, what="the dataset to be staged")
        if ending == "abort":
            client.send(bytes((pdu.A_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
        client.close()
        wait_until(lambda: rx.outcomes, 10, what="the association to end")
        wait_until(lambda: rx.staged() == [], 10, what="nothing staged")
        assert rx.stored() == []
        assert rx.rows == []
        counts: Any = rx.outcomes[0]
        assert counts.stored == counts.rejected == 0
