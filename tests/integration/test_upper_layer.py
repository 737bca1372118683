"""The asyncio upper layer against real peers (DCMTK, pynetdicom) and a raw client."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from harness import (
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
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from oxidicom_py.dicom import dimse, pdu

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    synthetic = load_script("synthetic")
    out = tmp_path_factory.mktemp("series")
    return synthetic.generate(out, n_series=2, slices=6, rows=64, cols=64)


def storescu(port: int, files: list[Path], *args: str, calling: str = "DCMTKSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/storescu", "-aet", calling, "-aec", "OXITEST", *args, LOOPBACK, str(port), *map(str, files)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("max_pdu", ["4096", "131072"])
def test_storescu_explicit_stores_identical_datasets(tmp_path: Path, series: list[Path], max_pdu: str) -> None:
    with InProcessReceiver(tmp_path) as rx:
        proc = storescu(rx.port, series, "-xe", "--max-pdu", max_pdu)
        assert proc.returncode == 0, proc.stderr
        wait_until(rx.idle, 10, what="association end")
        stored = rx.stored()
        assert len(stored) == len(series) == len(rx.rows)
        sent = {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in series}
        for path in stored:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == EXPLICIT
            assert ds.file_meta.SourceApplicationEntityTitle == "DCMTKSCU"
            assert dataset_bytes(path) == sent[ds.SOPInstanceUID]
        assert rx.staged() == []
        assert {r.pacs_identifier for r in rx.rows} == {"DCMTKSCU"}


def test_storescu_implicit(tmp_path: Path, series: list[Path]) -> None:
    with InProcessReceiver(tmp_path) as rx:
        proc = storescu(rx.port, series[:4], "-xi")
        assert proc.returncode == 0, proc.stderr
        wait_until(rx.idle, 10)
        stored = rx.stored()
        assert len(stored) == 4
        for path in stored:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == IMPLICIT
            original = next(
                pydicom.dcmread(p) for p in series if pydicom.dcmread(p).SOPInstanceUID == ds.SOPInstanceUID
            )
            assert ds.PixelData == original.PixelData and ds.PatientName == original.PatientName


def test_pynetdicom_several_contexts_and_echo(tmp_path: Path, series: list[Path]) -> None:
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [
        build_context(MRImageStorage, [IMPLICIT]),
        build_context(MRImageStorage, [EXPLICIT]),
        build_context(CTImageStorage, [EXPLICIT, IMPLICIT]),
        build_context(Verification),
    ]
    with InProcessReceiver(tmp_path) as rx:
        assoc = ae.associate(LOOPBACK, rx.port, ae_title="OXITEST")
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == 4
        assert assoc.send_c_echo().Status == 0
        # two stores only: pynetdicom's SCU can lose a response that arrives within microseconds
        # (a race in its reactor, see harness.RawScu); the other tests use our raw SCU
        statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in series[:1]]
        ct = pydicom.dcmread(series[3])
        ct.SOPClassUID = CTImageStorage
        ct.SOPInstanceUID = "1.2.3.999"
        ct.Modality = "CT"
        statuses.append(assoc.send_c_store(ct).Status)
        assoc.release()
        assert statuses == [0, 0]
        wait_until(rx.idle, 10)
        assert len(rx.stored()) == 2
        assert sorted(r.Modality for r in rx.rows) == ["CT", "MR"]


def test_echoscu(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path) as rx:
        proc = subprocess.run(
            ["/usr/bin/echoscu", "-aec", "OXITEST", LOOPBACK, str(rx.port)],
            env=peer_env(),
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr


def test_missing_required_tag_fails_that_instance_only(tmp_path: Path, series: list[Path]) -> None:
    with InProcessReceiver(tmp_path) as rx:
        scu = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        bad = pydicom.dcmread(series[0])
        del bad.PatientID
        worse = pydicom.dcmread(series[1])
        worse.StudyDate = "2013-13-45"
        good = pydicom.dcmread(series[2])
        dashed = pydicom.dcmread(series[3])
        dashed.StudyDate = "2013-03-08"
        rsp = [scu.store(1, MR, str(ds.SOPInstanceUID), encode_dataset(ds)) for ds in (bad, worse, good, dashed)]
        scu.release()
        assert [status for status, _ in rsp] == [dimse.CANNOT_UNDERSTAND, dimse.CANNOT_UNDERSTAND, 0, 0]
        assert "PatientID" in rsp[0][1]
        assert "StudyDate" in rsp[1][1]
        wait_until(rx.idle, 10)
        assert len(rx.stored()) == 2 and rx.staged() == []
        assert sorted(str(r.StudyDate) for r in rx.rows) == sorted([str(good.StudyDate)[:4] + "-03-15", "2013-03-08"])
        assert rx.outcomes[0].rejected == 2 and rx.outcomes[0].stored == 2


def _store_command(message_id: int, sop_instance: str) -> bytes:
    return dimse.encode_command(
        {
            dimse.AFFECTED_SOP_CLASS_UID: MR,
            dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
            dimse.MESSAGE_ID: message_id,
            dimse.PRIORITY: 0,
            dimse.COMMAND_DATA_SET_TYPE: 0x0000,
            dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
        }
    )


def _associate(client: RawClient, **kw: object) -> None:
    client.send(associate_rq([(1, MR, [EXPLICIT])], **kw))  # type: ignore[arg-type]
    pdu_type, _ = client.recv_pdu()
    assert pdu_type == pdu.A_ASSOCIATE_AC


def test_abort_mid_instance_leaves_nothing(tmp_path: Path, series: list[Path]) -> None:
    data = dataset_bytes(series[0])
    with InProcessReceiver(tmp_path) as rx:
        c = RawClient(rx.port)
        _associate(c)
        c.send(p_data(1, _store_command(1, pydicom.dcmread(series[0]).SOPInstanceUID), command=True))
        c.send(p_data(1, data[: len(data) // 2], command=False, last=False))
        wait_until(lambda: len(rx.staged()) == 1, 5, what="the staged file")
        c.send(pdu.encode_abort(pdu.ABORT_SOURCE_USER))
        assert c.closed_by_peer()
        wait_until(rx.idle, 5)
        assert rx.stored() == [] and rx.staged() == [] and rx.rows == []


def test_pdus_split_across_many_reads(tmp_path: Path, series: list[Path]) -> None:
    """Every byte of two instances sent in 7-byte writes: headers split everywhere."""
    with InProcessReceiver(tmp_path) as rx:
        c = RawClient(rx.port)
        c.send(associate_rq([(1, MR, [EXPLICIT])]), chunk=7)
        assert c.recv_pdu()[0] == pdu.A_ASSOCIATE_AC
        for i, path in enumerate(series[:2], start=1):
            data = dataset_bytes(path)
            stream = p_data(1, _store_command(i, pydicom.dcmread(path).SOPInstanceUID), command=True)
            # two PDVs in one PDU, then the rest in a second PDU
            first, rest = data[:1000], data[1000:]
            pdv1 = p_data(1, first, command=False, last=False)[6:]
            pdv2 = p_data(1, rest[:500], command=False, last=False)[6:]
            stream += struct_pdu(pdv1 + pdv2) + p_data(1, rest[500:], command=False, last=True)
            c.send(stream, chunk=7)
            pdu_type, body = c.recv_pdu()
            assert pdu_type == pdu.P_DATA_TF
            rsp = dimse.decode_command(body[6:])
            assert rsp.command_field == dimse.C_STORE_RSP
        c.send(bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0)), chunk=3)
        assert c.recv_pdu()[0] == pdu.A_RELEASE_RP
        wait_until(rx.idle, 5)
        assert len(rx.stored()) == 2
        sent = sorted(dataset_bytes(p) for p in series[:2])
        assert sorted(dataset_bytes(p) for p in rx.stored()) == sent


def struct_pdu(body: bytes) -> bytes:
    return bytes((pdu.P_DATA_TF, 0)) + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("strict", [True, False])
def test_oversized_pdu(tmp_path: Path, series: list[Path], strict: bool) -> None:
    data = dataset_bytes(series[0])
    assert len(data) > 8192
    with InProcessReceiver(tmp_path, max_pdu=4096, strict=strict) as rx:
        c = RawClient(rx.port)
        _associate(c)
        c.send(p_data(1, _store_command(1, pydicom.dcmread(series[0]).SOPInstanceUID), command=True))
        c.send(p_data(1, data, command=False, last=True))  # one PDU far above 4096
        pdu_type, body = c.recv_pdu()
        if strict:
            assert pdu_type == pdu.A_ABORT
            assert c.closed_by_peer()
            wait_until(rx.idle, 5)
            assert rx.stored() == [] and rx.staged() == []
        else:
            assert pdu_type == pdu.P_DATA_TF
            assert dimse.decode_command(body[6:]).command_field == dimse.C_STORE_RSP
            assert len(rx.stored()) == 1


def test_max_pdu_is_negotiated(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path, max_pdu=16384) as rx:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, rx.port, ae_title="OXITEST")
        assert assoc.acceptor.maximum_length == 16384
        assoc.release()


@pytest.mark.parametrize("promiscuous", [False, True])
def test_unknown_sop_class_needs_promiscuous_mode(tmp_path: Path, promiscuous: bool) -> None:
    private = "1.2.3.4.5.6.7.8.9"
    with InProcessReceiver(tmp_path, promiscuous=promiscuous) as rx:
        c = RawClient(rx.port)
        c.send(associate_rq([(1, private, [EXPLICIT]), (3, MR, [IMPLICIT])]))
        pdu_type, body = c.recv_pdu()
        assert pdu_type == pdu.A_ASSOCIATE_AC
        results = _context_results(body)
        assert results[3] == pdu.PC_ACCEPTANCE
        assert results[1] == (pdu.PC_ACCEPTANCE if promiscuous else pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED)


def test_uncompressed_only_refuses_jpeg(tmp_path: Path) -> None:
    jpeg = "1.2.840.10008.1.2.4.70"
    for uncompressed_only, expected in ((True, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED), (False, pdu.PC_ACCEPTANCE)):
        with InProcessReceiver(tmp_path, uncompressed_only=uncompressed_only) as rx:
            c = RawClient(rx.port)
            c.send(associate_rq([(1, MR, [jpeg])]))
            pdu_type, body = c.recv_pdu()
            assert pdu_type == pdu.A_ASSOCIATE_AC
            assert _context_results(body)[1] == expected


def _context_results(ac_body: bytes) -> dict[int, int]:
    out, pos = {}, 68
    while pos < len(ac_body):
        item_type, length = ac_body[pos], int.from_bytes(ac_body[pos + 2 : pos + 4], "big")
        if item_type == 0x21:
            out[ac_body[pos + 4]] = ac_body[pos + 6]
        pos += 4 + length
    return out


def test_wrong_application_context_is_rejected(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path) as rx:
        c = RawClient(rx.port)
        c.send(associate_rq([(1, MR, [EXPLICIT])], app_context="1.2.3"))
        pdu_type, body = c.recv_pdu()
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert body[1:4] == bytes((pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APP_CONTEXT_NOT_SUPPORTED))


def test_association_limit_rejects_with_local_limit_exceeded(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path, max_associations=1) as rx:
        first = RawClient(rx.port)
        _associate(first)
        second = RawClient(rx.port)
        second.send(associate_rq([(1, MR, [EXPLICIT])]))
        pdu_type, body = second.recv_pdu()
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert body[1:4] == bytes((pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 2))


def test_artim_closes_a_silent_connection(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path, artim=0.3) as rx:
        c = RawClient(rx.port, timeout=5)
        assert c.closed_by_peer()


def test_garbage_gets_an_abort_and_the_listener_lives_on(tmp_path: Path, series: list[Path]) -> None:
    with InProcessReceiver(tmp_path) as rx:
        c = RawClient(rx.port)
        c.send(b"\x09\x00\x00\x00\x00\x04abcd")
        assert c.recv_pdu()[0] == pdu.A_ABORT
        assert c.closed_by_peer()
        assert storescu(rx.port, series[:1]).returncode == 0


def test_fsync_is_skipped_on_tmpfs_only(tmp_path: Path) -> None:
    from oxidicom_py.storage.writer import FilesRoot, is_in_memory_filesystem

    assert is_in_memory_filesystem(Path("/dev/shm"))
    assert not is_in_memory_filesystem(Path("/"))
    assert FilesRoot(Path("/dev/shm") / f"oxidicom-test-{os.getpid()}", fsync=True).fsync is False
    on_disk = Path("/var/tmp") / f"oxidicom-test-{os.getpid()}"
    assert FilesRoot(on_disk, fsync=True).fsync is True
    shutil.rmtree(on_disk)
    shutil.rmtree(Path("/dev/shm") / f"oxidicom-test-{os.getpid()}")


def test_stock_storescu_with_nagle_on_does_not_stall(tmp_path: Path, series: list[Path]) -> None:
    """Debian's DCMTK leaves Nagle on and writes each PDU header and body separately; a receiver
    that delays its ACK then costs ~40 ms per PDU. This guards against that stall (the bound sits
    between the two cases; it is not a speed target)."""
    env = {k: v for k, v in peer_env().items() if k != "TCP_NODELAY"}
    series = load_script("synthetic").generate(tmp_path / "nagle", n_series=1, slices=30, rows=64, cols=64)
    with InProcessReceiver(tmp_path / "rx", max_pdu=16384) as rx:
        started = time.monotonic()
        proc = subprocess.run(
            ["/usr/bin/storescu", "-aec", "OXITEST", LOOPBACK, str(rx.port), *map(str, series)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert len(rx.stored()) == len(series)
        # with the stall: at least 30 x 40 ms = 1.2 s; without it: about 0.1 s
        assert elapsed < 0.7, f"{elapsed:.2f} s for {len(series)} instances"


def test_the_folder_cache_of_the_files_root_stays_bounded(tmp_path: Path) -> None:
    from oxidicom_py.storage import writer
    from oxidicom_py.storage.writer import FilesRoot

    files = FilesRoot(tmp_path, fsync=False)
    for i in range(writer.KNOWN_DIRS_MAX + 10):
        staged = files.stage(b"")
        staged.write(memoryview(b"x"))
        staged.commit(f"a/{i}/f.dcm")
    assert len(files._known_dirs) <= writer.KNOWN_DIRS_MAX
    assert (tmp_path / "a" / "0" / "f.dcm").read_bytes() == b"x"
