"""The acceptor state machine in memory: bytes and a fake clock in, events and bytes out.

No socket, no event loop, no wall clock: each timer is checked to the millisecond."""

from __future__ import annotations

import struct

import pytest
from harness import _command_values, associate_rq, p_data

from oxidicom_py.dicom import dimse, pdu
from oxidicom_py.dicom.acceptor import (
    STA1_IDLE,
    STA2_AWAIT_RQ,
    STA6_ESTABLISHED,
    STA13_AWAIT_CLOSE,
    AcceptorMachine,
)
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.events import (
    AssociationEstablished,
    AssociationRejected,
    CloseConnection,
    ConnectionClosed,
    Event,
    InstanceAborted,
    InstanceBegun,
    InstanceComplete,
    InstanceData,
    StoreResult,
)
from oxidicom_py.dicom.negotiation import AcceptancePolicy

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
CONTEXTS = [(1, MR, [EXPLICIT]), (3, VERIFICATION, [EXPLICIT])]


def machine(now: float = 0.0, **config: object) -> AcceptorMachine:
    cfg = AcceptorConfig("OXITEST", 16384, False, AcceptancePolicy(), **config)  # type: ignore[arg-type]
    return AcceptorMachine(cfg, "ULIDTEST", ("127.0.0.1", 4242), now)


def established(now: float = 0.0, **config: object) -> AcceptorMachine:
    m = machine(now, **config)
    events = m.receive_data(associate_rq(CONTEXTS), now)
    assert [type(e) for e in events] == [AssociationEstablished]
    assert m.pop_output()[0] == pdu.A_ASSOCIATE_AC
    return m


def store_rq(message_id: int, instance: str = "1.2.3.4") -> bytes:
    return dimse.encode_command(
        {
            dimse.AFFECTED_SOP_CLASS_UID: MR,
            dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
            dimse.MESSAGE_ID: message_id,
            dimse.PRIORITY: 0,
            dimse.COMMAND_DATA_SET_TYPE: 0,
            dimse.AFFECTED_SOP_INSTANCE_UID: instance,
        }
    )


def echo_rq(message_id: int) -> bytes:
    return dimse.encode_command(
        {
            dimse.AFFECTED_SOP_CLASS_UID: VERIFICATION,
            dimse.COMMAND_FIELD: dimse.C_ECHO_RQ,
            dimse.MESSAGE_ID: message_id,
            dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET,
        }
    )


def kinds(events: list[Event]) -> list[type]:
    return [type(e) for e in events]


def pdu_types(raw: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        pdu_type, length = struct.unpack_from(">BxL", raw, pos)
        out.append(pdu_type)
        pos += 6 + length
    return out


# -- ARTIM -------------------------------------------------------------------------------------


def test_artim_expires_to_the_millisecond_without_a_request() -> None:
    m = machine(now=10.0, artim_timeout=0.25)
    assert m.state == STA2_AWAIT_RQ and m.deadline() == 10.25
    assert m.timer(10.249) == [] and m.state == STA2_AWAIT_RQ
    events = m.timer(10.25)
    assert kinds(events) == [AssociationRejected, CloseConnection]
    assert events[0].reason == "no_request_in_time"  # type: ignore[union-attr]
    assert m.state == STA13_AWAIT_CLOSE
    assert m.connection_lost() == [] and m.state == STA1_IDLE  # nothing was established


def test_a_request_stops_artim() -> None:
    m = established(now=1.0, artim_timeout=0.25)
    assert m.deadline() is None  # no idle or PDU timeout configured
    assert m.timer(100.0) == [] and m.state == STA6_ESTABLISHED


# -- the idle timer --------------------------------------------------------------------------------


def test_idle_timer_counts_from_the_last_byte() -> None:
    m = established(now=1.0, idle_timeout=0.5)
    assert m.deadline() == 1.5
    m.receive_data(p_data(3, echo_rq(1), command=True), 1.2)
    assert pdu_types(m.pop_output()) == [pdu.P_DATA_TF]
    assert m.deadline() == pytest.approx(1.7)
    assert m.timer(1.699) == []
    events = m.timer(1.7)
    assert kinds(events) == [CloseConnection]
    assert pdu_types(m.pop_output()) == [pdu.A_ABORT]
    assert m.outcome == "aborted by us: idle for 0.5 s"
    assert kinds(m.connection_lost()) == [ConnectionClosed]


# -- the PDU timer ---------------------------------------------------------------------------------


def test_a_trickled_pdu_is_aborted_at_its_deadline_a_steady_one_is_not() -> None:
    m = established(now=0.0, pdu_timeout=0.4, idle_timeout=10.0)
    dataset = b"\x08\x00\x18\x00" + b"UI" + b"\x00" * 20
    message = p_data(1, store_rq(1), command=True) + p_data(1, dataset, command=False)
    # steady: the whole store in a few reads within the timeout, then the next PDU much later
    m.receive_data(message[:10], 1.0)
    assert m.deadline() == pytest.approx(1.4)
    events = m.receive_data(message[10:], 1.3)
    assert kinds(events) == [InstanceBegun, InstanceData, InstanceComplete]
    assert m.deadline() is None  # storing: the sender waits on us, no timer counts
    m.store_result(StoreResult(dimse.SUCCESS), 5.0)
    assert pdu_types(m.pop_output()) == [pdu.P_DATA_TF]
    assert m.deadline() == pytest.approx(15.0)  # between PDUs only the idle timer runs
    # trickled: a byte every 100 ms keeps the idle timer quiet but not the PDU timer
    second = p_data(3, echo_rq(2), command=True)
    for i in range(4):
        m.receive_data(second[i : i + 1], 6.0 + i * 0.1)
        assert m.deadline() == pytest.approx(6.4)
    assert m.timer(6.39) == []
    events = m.timer(6.4)
    assert kinds(events) == [CloseConnection]
    assert m.outcome == "aborted by us: a PDU was not complete 0.4 s after it began"
    assert pdu_types(m.pop_output()) == [pdu.A_ABORT]


# -- storing -----------------------------------------------------------------------------------------


def test_bytes_that_arrive_while_an_instance_is_stored_wait_for_its_result() -> None:
    m = established()
    dataset = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"
    stream = p_data(1, store_rq(1), command=True) + p_data(1, dataset, command=False)
    stream += p_data(3, echo_rq(2), command=True)
    events = m.receive_data(stream, 1.0)
    assert kinds(events) == [InstanceBegun, InstanceData, InstanceComplete]
    assert bytes(events[1].data) == dataset  # type: ignore[union-attr]
    assert m.pop_output() == b""  # the echo is not answered before the store
    assert m.receive_data(p_data(3, echo_rq(3), command=True), 1.1) == []
    m.store_result(StoreResult(dimse.SUCCESS), 2.0)
    out = m.pop_output()
    assert pdu_types(out) == [pdu.P_DATA_TF] * 3
    # the C-STORE-RSP first, then both C-ECHO-RSPs, in order
    assert responses(out) == [(dimse.C_STORE_RSP, 1), (dimse.C_ECHO_RSP, 2), (dimse.C_ECHO_RSP, 3)]
    assert m.state == STA6_ESTABLISHED


def test_what_waits_for_a_result_is_the_senders_bytes_even_from_a_buffer_reused_after_the_call() -> None:
    """The rest of a read is kept without a copy while an instance is stored: a caller that
    hands a bytearray (or a view) and then reuses it must not change what is parsed later."""
    m = established()
    dataset = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"
    first = p_data(1, store_rq(1), command=True) + p_data(1, dataset, command=False)
    buffer = bytearray(first + p_data(3, echo_rq(2), command=True))
    assert kinds(m.receive_data(buffer, 1.0)) == [InstanceBegun, InstanceData, InstanceComplete]
    buffer[:] = bytes(len(buffer))  # the caller's next read lands in the same buffer
    view = memoryview(bytearray(p_data(3, echo_rq(3), command=True)))
    m.receive_data(view, 1.1)
    view[:] = bytes(len(view))
    m.store_result(StoreResult(dimse.SUCCESS), 2.0)
    assert responses(m.pop_output()) == [(dimse.C_STORE_RSP, 1), (dimse.C_ECHO_RSP, 2), (dimse.C_ECHO_RSP, 3)]
    assert m.state == STA6_ESTABLISHED


def responses(raw: bytes) -> list[tuple[int, int]]:
    """(Command Field, Message ID Being Responded To) of each P-DATA-TF in ``raw``."""
    out, pos = [], 0
    while pos < len(raw):
        length = struct.unpack_from(">L", raw, pos + 2)[0]
        values = _command_values(raw[pos + 12 : pos + 6 + length])
        out.append((int.from_bytes(values[0x0100], "little"), int.from_bytes(values[0x0120], "little")))
        pos += 6 + length
    return out


def test_release_mid_instance_aborts_the_instance_and_answers_the_release() -> None:
    m = established()
    m.receive_data(p_data(1, store_rq(1), command=True) + p_data(1, b"\x08\x00", command=False, last=False), 1.0)
    events = m.receive_data(bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0)), 1.1)
    assert kinds(events) == [InstanceAborted, CloseConnection]
    assert pdu_types(m.pop_output()) == [pdu.A_RELEASE_RP]
    assert [e.outcome for e in m.connection_lost() if isinstance(e, ConnectionClosed)] == ["released"]


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 64, 1000])
def test_the_same_conversation_whatever_the_read_sizes(chunk: int) -> None:
    stream = associate_rq(CONTEXTS)
    for n in range(3):
        stream += p_data(1, store_rq(n + 1, f"1.2.3.{n}"), command=True) + p_data(1, bytes(300), command=False)
    stream += p_data(3, echo_rq(9), command=True) + bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))

    def run(step: int) -> tuple[bytes, list[str], bytes]:
        m = machine()
        out, seen, data = b"", [], b""
        pending = [stream[i : i + step] for i in range(0, len(stream), step)]
        for piece in pending:
            events = m.receive_data(piece, 1.0)
            while True:
                out += m.pop_output()
                for e in events:
                    seen.append(type(e).__name__)
                    if isinstance(e, InstanceData):
                        data += bytes(e.data)
                if m.awaiting_result:
                    events = m.store_result(StoreResult(dimse.SUCCESS), 1.0)
                    continue
                break
        return out, [s for s in seen if s != "InstanceData"], data

    assert run(chunk) == run(len(stream))
