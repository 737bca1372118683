"""The C-FIND for NumberOfSeriesRelatedInstances against real peers on 127.0.0.1: Orthanc, raw TCP
servers that misbehave (silent, closing, half a PDU), and pynetdicom SCPs scripted per queried
series. Every failure must come back as ``count=None`` with a reason, within the timeouts."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydicom
import pytest
from harness import LOOPBACK, load_script, wait_until
from peers import Orthanc, free_port
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from oxidicom_py.net import cfind_transport
from oxidicom_py.net.cfind_scu import SeriesCount, query_series_count

pytestmark = pytest.mark.integration

CONNECT = 1.0
RESPONSE = 2.0
# connect + response + slack: a correctness bound (never stalls), not a speed target
BOUND = CONNECT + RESPONSE + 0.5
ORTHANC_AET = "OXITESTORTHANC"
OUR_AET = "OXITESTSCU"
SCP_AET = "OXITESTSCP"
# odd lengths, so pydicom pads them with a NUL on the wire and the NUL removal is exercised
STUDY = "1.2.826.0.1.3680043.10.1234.1"
SERIES = "1.2.826.0.1.3680043.10.1234.1.1"
OTHER_SERIES = "1.2.826.0.1.3680043.10.1234.1.3"
assert len(STUDY) % 2 == len(SERIES) % 2 == len(OTHER_SERIES) % 2 == 1


def ask(
    port: int,
    series_uid: str = SERIES,
    *,
    study_uid: str = STUDY,
    called_ae: str = SCP_AET,
    connect_timeout: float = CONNECT,
    response_timeout: float = RESPONSE,
) -> SeriesCount:
    return query_series_count(
        LOOPBACK,
        port,
        calling_ae=OUR_AET,
        called_ae=called_ae,
        study_uid=study_uid,
        series_uid=series_uid,
        connect_timeout=connect_timeout,
        response_timeout=response_timeout,
    )


def our_threads() -> list[threading.Thread]:
    """pynetdicom threads of associations we requested: reader (not a daemon) and reactor."""
    return [
        t
        for t in threading.enumerate()
        if (isinstance(t, DULServiceProvider) and t.assoc.is_requestor)
        or (isinstance(t, Association) and t.is_requestor)
    ]


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    yield
    wait_until(lambda: not our_threads(), 5, what="the SCU's pynetdicom threads to end")


# -- Orthanc ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, str, dict[str, int]]]:
    """Orthanc holding one study of two synthetic series, of 7 and 12 instances."""
    folder = tmp_path_factory.mktemp("cfind-orthanc")
    synthetic = load_script("synthetic")
    files = synthetic.generate(folder / "data", n_series=2, slices=12, rows=8, cols=8, patient_id="CFIND")
    files = [f for f in files if not (f.parent.name == "s0001" and int(f.stem[1:]) > 7)]
    counts: dict[str, int] = {}
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    assert sorted(counts.values()) == [7, 12]
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    # DicomCheckCalledAet on: otherwise Orthanc accepts any called AE title and a wrong one goes unnoticed
    with Orthanc(folder / "orthanc", aet=ORTHANC_AET, DicomCheckCalledAet=True) as pacs:
        pacs.upload(files)
        yield pacs, study, counts


def test_orthanc_counts_both_series(orthanc: tuple[Orthanc, str, dict[str, int]]) -> None:
    pacs, study, counts = orthanc
    results = {uid: ask(pacs.dicom_port, uid, study_uid=study, called_ae=ORTHANC_AET) for uid in counts}
    assert {uid: (r.count, r.error) for uid, r in results.items()} == {uid: (n, None) for uid, n in counts.items()}
    assert sorted(r.count for r in results.values() if r.count is not None) == [7, 12]
    assert all(r.elapsed < 1.0 for r in results.values())


def test_orthanc_unknown_series_is_no_match(orthanc: tuple[Orthanc, str, dict[str, int]]) -> None:
    pacs, study, _ = orthanc
    result = ask(pacs.dicom_port, "1.2.826.0.1.3680043.10.1234.99", study_uid=study, called_ae=ORTHANC_AET)
    assert result.count is None
    assert result.error is not None and "no match" in result.error
    assert result.elapsed < 1.0


def test_orthanc_wrong_called_ae_is_rejected(orthanc: tuple[Orthanc, str, dict[str, int]]) -> None:
    pacs, study, counts = orthanc
    result = ask(pacs.dicom_port, next(iter(counts)), study_uid=study, called_ae="NOTORTHANC")
    assert result.count is None
    assert result.error is not None and "rejected" in result.error
    assert result.elapsed < BOUND


def test_concurrent_queries(orthanc: tuple[Orthanc, str, dict[str, int]]) -> None:
    pacs, study, counts = orthanc
    uids = list(counts) * 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda uid: ask(pacs.dicom_port, uid, study_uid=study, called_ae=ORTHANC_AET), uids))
    assert [r.count for r in results] == [counts[uid] for uid in uids]


def test_nothing_listening() -> None:
    result = ask(free_port())
    assert result.count is None
    assert result.error is not None and "refused" in result.error.lower()
    assert result.elapsed < CONNECT + 0.5


def test_no_address_and_bad_timeouts() -> None:
    kw: dict[str, Any] = {"calling_ae": OUR_AET, "called_ae": SCP_AET, "study_uid": STUDY, "series_uid": SERIES}
    missing = query_series_count("", 104, connect_timeout=CONNECT, response_timeout=RESPONSE, **kw)
    assert missing.count is None and missing.error is not None and "address" in missing.error
    zero = query_series_count(LOOPBACK, 104, connect_timeout=0, response_timeout=RESPONSE, **kw)
    assert zero.count is None and zero.error is not None and "positive" in zero.error


# -- raw TCP peers that misbehave ------------------------------------------------------------------


class RawPeer:
    """A TCP server in a thread: ``silent`` accepts and reads but never answers, ``close`` closes
    each connection at once, ``half`` answers the A-ASSOCIATE-RQ with 16 bytes of a 206-byte PDU."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.server = socket.create_server((LOOPBACK, 0))
        self.port = int(self.server.getsockname()[1])
        self.received = bytearray()
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.server, selectors.EVENT_READ)
        connections: list[socket.socket] = []
        try:
            while not self._stop.is_set():  # ends with the fixture
                for key, _ in selector.select(timeout=0.05):
                    if key.fileobj is self.server:
                        conn, _ = self.server.accept()
                        self.accepted += 1
                        if self.behaviour == "close":
                            conn.close()
                            continue
                        connections.append(conn)
                        selector.register(conn, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    data = conn.recv(65536)
                    if not data:
                        selector.unregister(conn)
                        continue
                    first = not self.received
                    self.received += data
                    if self.behaviour == "half" and first:
                        conn.sendall(struct.pack(">BxL", 0x02, 200) + bytes(10))
        finally:
            for conn in connections:
                conn.close()
            self.server.close()
            selector.close()


@pytest.fixture
def raw_peer(request: pytest.FixtureRequest) -> Iterator[RawPeer]:
    with RawPeer(request.param) as peer:
        yield peer


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full (listen(0), one connection never accepted): the kernel
    drops further SYNs, so connecting times out."""
    with socket.create_server((LOOPBACK, 0), backlog=0) as server:
        port = int(server.getsockname()[1])
        with socket.create_connection((LOOPBACK, port), timeout=2):
            yield port


def test_connect_timeout(full_backlog: int) -> None:
    result = ask(full_backlog)
    assert result.count is None
    assert result.error == f"TCP connect timed out after {CONNECT:g} s"
    assert CONNECT - 0.05 <= result.elapsed < CONNECT + 0.5


@pytest.mark.parametrize("raw_peer", ["silent"], indirect=True)
def test_silent_peer_times_out(raw_peer: RawPeer) -> None:
    result = ask(raw_peer.port)
    assert result.count is None
    assert result.error is not None and "A-ASSOCIATE" in result.error
    assert RESPONSE - 0.1 <= result.elapsed < BOUND
    wait_until(lambda: raw_peer.received[:1] == b"\x01", 2, what="the A-ASSOCIATE-RQ at the silent peer")


@pytest.mark.parametrize("raw_peer", ["close"], indirect=True)
def test_peer_closing_the_connection(raw_peer: RawPeer) -> None:
    result = ask(raw_peer.port)
    assert result.count is None
    assert result.error is not None and "closed" in result.error
    assert result.elapsed < 1.0
    assert raw_peer.accepted == 1


@pytest.mark.parametrize("raw_peer", ["half"], indirect=True)
def test_peer_sending_half_a_pdu(raw_peer: RawPeer) -> None:
    result = ask(raw_peer.port)
    assert result.count is None
    assert result.error is not None
    assert result.elapsed < BOUND


@pytest.mark.parametrize("raw_peer", ["half"], indirect=True)
def test_deadline_holds_when_pynetdicom_blocks(raw_peer: RawPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without our socket read timeout pynetdicom's reader blocks on the half PDU and its own
    ACSE-timeout abort waits for it forever: the overall deadline must still end the query."""
    monkeypatch.setattr(cfind_transport.TcpSocket, "settimeout", socket.socket.settimeout)
    result = ask(raw_peer.port)
    assert result.count is None
    assert result.error is not None and "deadline" in result.error
    assert CONNECT + RESPONSE <= result.elapsed < BOUND


# -- pynetdicom SCPs scripted per queried series ---------------------------------------------------

# A script is a list of steps, run in order for a C-FIND whose SeriesInstanceUID is its key:
#   ("pending", series_uid, number)  a pending response (the number is sent as text, verbatim)
#   ("status", code)                 a final status, then stop
#   ("block",)                       wait, without answering, until the test ends
#   ("trickle", seconds)             a pending response with garbage every `seconds`, until cancelled
#                                    or the test ends
#   ("abort",)                       A-ABORT the association
# After the last step pynetdicom sends Success.
Script = list[tuple[Any, ...]]


class ScriptedSCP:
    def __init__(self, scripts: dict[str, Script], transfer_syntaxes: list[str], find: bool = True) -> None:
        self.scripts = scripts
        self.requests: list[Dataset] = []
        self.test_over = threading.Event()
        self.ae = AE(ae_title=SCP_AET)
        self.ae.add_supported_context(Verification)
        if find:
            self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind, transfer_syntaxes)
        self.server = self.ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._on_find)])
        self.port = int(self.server.server_address[1])

    def close(self) -> None:
        self.test_over.set()
        self.server.shutdown()

    @staticmethod
    def _answer(series_uid: str, number: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = STUDY
        ds.add(DataElement(0x0020000E, "UI", series_uid, validation_mode=pydicom_config.IGNORE))
        # LO, not IS: pydicom would not encode "abc" as IS, and would trim the spaces around a number
        ds.add(DataElement(0x00201209, "LO", number, validation_mode=pydicom_config.IGNORE))
        return ds

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier  # type: ignore[attr-defined]
        self.requests.append(identifier)
        for step in self.scripts.get(str(identifier.SeriesInstanceUID), []):
            kind = step[0]
            if kind == "pending":
                yield 0xFF00, self._answer(step[1], step[2])
            elif kind == "status":
                yield step[1], None
                return
            elif kind == "block":
                self.test_over.wait(60)
                return
            elif kind == "trickle":
                for _ in range(1000):  # ~ minutes; ends earlier on C-CANCEL or at teardown
                    if event.is_cancelled or self.test_over.wait(step[1]):  # type: ignore[attr-defined]
                        return
                    yield 0xFF00, self._answer(OTHER_SERIES, "1")
            elif kind == "abort":
                event.assoc.abort()  # type: ignore[attr-defined]
                return


@pytest.fixture
def scp() -> Iterator[ScriptedSCP]:
    server = ScriptedSCP({}, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    yield server
    server.close()


def test_query_identifier(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [("pending", SERIES, "5")]
    result = ask(scp.port)
    assert (result.count, result.error) == (5, None)
    (request,) = scp.requests
    assert request.QueryRetrieveLevel == "SERIES"
    assert request.StudyInstanceUID == STUDY
    assert request.SeriesInstanceUID == SERIES
    assert "NumberOfSeriesRelatedInstances" in request and request.NumberOfSeriesRelatedInstances in ("", None)


def test_valid_number_after_garbage(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [
        ("pending", SERIES, "abc"),
        ("pending", OTHER_SERIES, "5"),
        ("pending", SERIES, "-1"),
        ("pending", SERIES, " 42 "),
        ("pending", SERIES, "43"),
    ]
    result = ask(scp.port)
    assert (result.count, result.error) == (42, None)
    assert result.elapsed < 1.0


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([("pending", SERIES, "abc")], "invalid NumberOfSeriesRelatedInstances 'abc'"),
        ([("pending", SERIES, "-3")], "invalid NumberOfSeriesRelatedInstances '-3'"),
        ([("pending", SERIES, "")], "invalid NumberOfSeriesRelatedInstances"),
        ([("pending", SERIES, "7.5")], "invalid NumberOfSeriesRelatedInstances '7.5'"),
        ([("pending", OTHER_SERIES, "12")], "is not the queried one"),
    ],
    ids=["abc", "negative", "empty", "decimal", "other-series"],
)
def test_invalid_answers(scp: ScriptedSCP, answers: Script, reason: str) -> None:
    scp.scripts[SERIES] = answers
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "no valid answer" in result.error and reason in result.error
    assert result.elapsed < 1.0


def test_no_match(scp: ScriptedSCP) -> None:
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "no match" in result.error


def test_failure_status(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [("status", 0xA700)]
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "0xA700" in result.error


def test_scp_that_never_answers_the_find(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [("block",)]
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "C-FIND response" in result.error
    assert RESPONSE - 0.1 <= result.elapsed < RESPONSE + 0.75


def test_scp_trickling_pending_responses_hits_the_deadline(scp: ScriptedSCP) -> None:
    # each response comes well within the DIMSE timeout, so only the overall deadline ends it
    scp.scripts[SERIES] = [("trickle", 0.25)]
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "deadline" in result.error
    assert CONNECT + RESPONSE - 0.1 <= result.elapsed < BOUND


def test_answer_then_trickle_keeps_the_answer(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [("pending", SERIES, "9"), ("trickle", 0.25)]
    result = ask(scp.port)
    assert (result.count, result.error) == (9, None)
    assert result.elapsed < BOUND


def test_scp_aborting_during_the_find(scp: ScriptedSCP) -> None:
    scp.scripts[SERIES] = [("abort",)]
    result = ask(scp.port)
    assert result.count is None
    assert result.error is not None and "abort" in result.error.lower()
    assert result.elapsed < 1.0


def test_implicit_vr_only_scp() -> None:
    server = ScriptedSCP({SERIES: [("pending", SERIES, "3")]}, [ImplicitVRLittleEndian])
    try:
        assert ask(server.port).count == 3
    finally:
        server.close()


def test_scp_without_find_context() -> None:
    server = ScriptedSCP({}, [], find=False)
    try:
        result = ask(server.port)
    finally:
        server.close()
    assert result.count is None
    assert result.error is not None and "presentation context" in result.error


def test_logs_are_structured(scp: ScriptedSCP, caplog: pytest.LogCaptureFixture) -> None:
    scp.scripts[SERIES] = [("pending", SERIES, "abc")]
    with caplog.at_level("DEBUG", logger="oxidicom_py.completion"):
        ask(scp.port)
    ours = [r for r in caplog.records if r.name == "oxidicom_py.completion"]
    assert [r.levelname for r in ours] == ["WARNING", "WARNING"]
    for record in ours:
        fields = vars(record)
        assert fields["pacs_address"] == f"{LOOPBACK}:{scp.port}"
        assert fields["called_ae"] == SCP_AET
        assert fields["StudyInstanceUID"] == STUDY
        assert fields["SeriesInstanceUID"] == SERIES
        assert fields["error"]
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno < 30]
