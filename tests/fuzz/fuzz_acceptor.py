"""Coverage-guided fuzzing of the acceptor state machine itself (atheris): no event loop, no
socket, a fake clock. It reads the same inputs as ``fuzz_upper_layer.py`` (which drives the
asyncio adapter around the machine), so both share one corpus::

    .venv/bin/python tests/fuzz/fuzz_upper_layer.py --write-seeds /tmp/corpus
    .venv/bin/python tests/fuzz/fuzz_acceptor.py -max_total_time=600 /tmp/corpus

An input is 6 bytes of choices, then the byte stream a peer sends:

* byte 0, the acceptor's configuration, as in ``fuzz_upper_layer.py``: bit 0 strict; bits 1-2
  maximum PDU length (16384, unlimited, 256, 4096); bit 3 promiscuous; bit 4 uncompressed only;
  bit 5 check the called AE title (``OXI``); bit 6 only calling AE ``RAWSCU`` allowed; bit 7 an
  admission hook that refuses every association.
* byte 1, the run: bits 0-1 when a store's result is given (0 at once, 1 after the next read,
  2 after two reads, 3 never: the connection is lost with it pending); bit 4 idle and PDU
  timeouts of 1 ms; bit 5 stores answered with a failure status; bits 6-7 the clock's step
  between reads (0, 0.4, 2 or 90 ms).
* bytes 2-5, read sizes, used in turn: 0 the rest of the stream, 1-127 that many bytes,
  128-255 (n - 127) * 64 bytes.

Oracles: nothing raises; every output is whole PDUs an acceptor may send, A-ASSOCIATE-AC/RJ
first, nothing after an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT; the events of each instance
are InstanceBegun, InstanceData*, then InstanceComplete or InstanceAborted, and nothing of an
instance comes while none is open; every result given for an open association is answered by
one C-STORE-RSP with that status; CloseConnection comes once, ConnectionClosed once and only
for an established association; no timer is due before its deadline, a deadline never lies in
the past after a call returns while the association is open, and after connection_lost there
is none; the same stream in one read gives the same bytes and events when no timer can fire.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import atheris

import oxidicom_py.identity
import oxidicom_py.telemetry.logs  # noqa: F401

with atheris.instrument_imports(include=["oxidicom_py"]):
    from oxidicom_py.dicom import acceptor, config, dimse, events, negotiation, pdu

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_inputs import acceptor_config, split  # noqa: E402

_STEPS = (0.0, 0.0004, 0.002, 0.09)
_REFUSAL = (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED)
_OUTPUT = {pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.P_DATA_TF, pdu.A_RELEASE_RP, pdu.A_ABORT}
_FINAL = {pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP, pdu.A_ABORT}


class Run:
    def __init__(self, flags: int, mode: int) -> None:
        timeouts = 0.001 if mode & 0x10 else None
        self.config = acceptor_config(config, negotiation, flags, timeouts)
        self.refuse = bool(flags & 0x80)
        self.result_delay = mode & 0x03
        self.timers = bool(mode & 0x10)
        self.status = dimse.OUT_OF_RESOURCES if mode & 0x20 else dimse.SUCCESS
        self.step = _STEPS[(mode >> 6) & 3]
        self.now = 1000.0
        self.output = bytearray()
        self.kinds: list[str] = []
        self.instance_open = False
        self.results_given = 0  # while the association was open
        self.closes = 0
        self.machine = acceptor.AcceptorMachine(
            self.config, "ULIDFUZZ", ("192.0.2.7", 40404), self.now, admission=self.admission
        )

    def admission(self, req: pdu.AssociateRequest, peer: tuple[str, int]) -> tuple[int, int, int] | None:
        assert peer == ("192.0.2.7", 40404)
        return _REFUSAL if self.refuse else None

    def take(self, got: list[Any]) -> None:
        self.output += self.machine.pop_output()
        for event in got:
            name = type(event).__name__
            self.kinds.append(name)
            if isinstance(event, events.InstanceBegun):
                assert not self.instance_open, "an instance begun while another is open"
                assert event.command.command_field == dimse.C_STORE_RQ and event.command.has_data_set
                self.instance_open = True
            elif isinstance(event, events.InstanceData):
                assert self.instance_open, "data of no instance"
            elif isinstance(event, events.InstanceComplete | events.InstanceAborted):
                assert self.instance_open, f"{name} of no instance"
                self.instance_open = False
            elif isinstance(event, events.CloseConnection):
                self.closes += 1
                assert self.closes == 1, "CloseConnection twice"
            elif isinstance(event, events.ConnectionClosed):
                assert self.machine.info is not None, "ConnectionClosed of no association"
                assert self.kinds.count("ConnectionClosed") == 1

    def tick(self) -> None:
        """Advance the clock; fire the timer when it is due (and check it is not early)."""
        self.now += self.step
        deadline = self.machine.deadline()
        if deadline is None:
            return
        if self.timers and self.now >= deadline:
            self.take(self.machine.timer(self.now))
        elif self.now < deadline:
            before = bytes(self.output), len(self.kinds)
            self.take(self.machine.timer(self.now))
            assert (bytes(self.output), len(self.kinds)) == before, "a timer acted before its deadline"

    def give_result(self) -> None:
        if self.machine.awaiting_result:
            if self.machine.state == acceptor.STA6_ESTABLISHED:
                self.results_given += 1
            self.take(self.machine.store_result(events.StoreResult(self.status), self.now))

    def play(self, chunks: list[bytes]) -> None:
        waiting = 0
        for chunk in chunks:
            if self.machine.state in (acceptor.STA1_IDLE, acceptor.STA13_AWAIT_CLOSE):
                break
            self.take(self.machine.receive_data(chunk, self.now))
            if self.machine.awaiting_result and self.result_delay == 0:
                while self.machine.awaiting_result:
                    self.give_result()
            elif self.machine.awaiting_result and self.result_delay < 3:
                waiting += 1
                if waiting >= self.result_delay:
                    waiting = 0
                    self.give_result()
            self.tick()
        if self.result_delay < 3:
            for _ in range(10_000):  # a result for each instance still queued, bounded
                if not self.machine.awaiting_result:
                    break
                self.give_result()
        self.take(self.machine.connection_lost())
        assert self.machine.state == acceptor.STA1_IDLE and self.machine.deadline() is None

    def check(self) -> None:
        types: list[int] = []
        stores = 0
        pos, raw = 0, bytes(self.output)
        while pos < len(raw):
            assert len(raw) - pos >= 6, "a partial PDU"
            pdu_type, length = struct.unpack_from(">BxL", raw, pos)
            assert pdu_type in _OUTPUT and pos + 6 + length <= len(raw), (pdu_type, length)
            if types:
                assert types[-1] not in _FINAL, f"PDU {pdu_type:#x} after {types[-1]:#x}"
                assert pdu_type not in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ), "a second A-ASSOCIATE reply"
            else:
                assert pdu_type in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.A_ABORT), pdu_type
            if pdu_type == pdu.P_DATA_TF:
                body = raw[pos + 12 : pos + 6 + length]
                command = dimse.decode_command(body)
                assert command.command_field & 0x8000, command
                if command.command_field == dimse.C_STORE_RSP:
                    stores += 1
            types.append(pdu_type)
            pos += 6 + length
        assert stores == self.results_given, (stores, self.results_given)

    def transcript(self) -> tuple[bytes, list[str]]:
        return bytes(self.output), [k for k in self.kinds if k != "InstanceData"]


def decode(data: bytes) -> tuple[int, int, list[bytes], bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    flags, mode = fdp.ConsumeUInt(1), fdp.ConsumeUInt(1)
    pattern = fdp.ConsumeBytes(4)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    return flags, mode, split(stream, pattern), stream


def TestOneInput(data: bytes) -> None:
    flags, mode, chunks, stream = decode(data)
    run = Run(flags, mode)
    run.play(chunks)
    run.check()
    if len(chunks) > 1 and not run.timers and run.result_delay == 0:
        whole = Run(flags, mode)
        whole.play([stream])
        whole.check()
        assert whole.transcript() == run.transcript(), "the read split changed the conversation"


def main(argv: list[str]) -> None:
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
