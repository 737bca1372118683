"""Coverage-guided fuzzing of the DICOM upper layer (atheris, i.e. libFuzzer for Python).

Run it as a script; every argument is a libFuzzer argument (corpus folders, ``-runs=``,
``-max_total_time=``, ``-seed=``, ``-artifact_prefix=`` ...) except ``--write-seeds DIR``,
which writes the seed corpus into DIR and exits::

    .venv/bin/python tests/fuzz/fuzz_upper_layer.py --write-seeds /tmp/corpus
    nice -n 10 .venv/bin/python tests/fuzz/fuzz_upper_layer.py -max_total_time=600 /tmp/corpus

Given files instead of folders, libFuzzer runs each once (to replay a ``crash-*`` file).
``-minimize_crash=1`` re-runs
argv[0] as a program: call ``main(["/path/to/an/executable/wrapper", ...])`` from a wrapper
script that runs this harness under the venv's python.

An input is 6 bytes of choices followed by the byte stream a peer sends:

* byte 0, the acceptor's configuration: bit 0 strict; bits 1-2 maximum PDU length
  (16384, unlimited, 256, 4096); bit 3 promiscuous; bit 4 uncompressed only; bit 5 check the
  called AE title (``OXI``); bit 6 only calling AE ``RAWSCU`` allowed; bit 7 an admission hook
  that refuses every association.
* byte 1, the run: bits 0-1 what ``finish()`` of an instance sink returns (0 a StoreResult,
  1 a coroutine returning one, 2 a coroutine raising OSError, 3 a future that gets
  cancelled); bit 2 honour ``pause_reading`` (deliver nothing until ``resume_reading``, as a
  real transport; otherwise keep delivering, as if reads were already queued); bit 3 run the
  event loop between reads; bit 4 idle and PDU timeouts of 1 us (they fire whenever the
  event loop runs: between reads with bit 3, while a store is pending); bit 5 stores fail
  with a status (0xA700) instead of succeeding; bit 6 the connection is lost with an error
  (ConnectionResetError) rather than EOF; bit 7 let pending stores complete before the
  connection is lost.
* bytes 2-5, read sizes, used in turn: 0 the rest of the stream, 1-127 that many bytes,
  128-255 (n - 127) * 64 bytes.

Oracles (an AssertionError or any exception is a crash): nothing escapes the protocol or an
event loop callback; the same stream delivered in one read gives the same transcript (PDUs
written, bytes and ends of each sink, outcome) as in the fuzzed reads; every write is
one or more whole, well-formed PDUs an acceptor may send, in an order the state machine allows, and
nothing is written once the transport is closing; the last PDU before the protocol closes
the transport agrees with the outcome the handler is told; sinks receive no more bytes than
the peer sent, and each sink is finished or aborted exactly once, never written to
afterwards; with synchronous stores each finished instance gets exactly one C-STORE-RSP; a
paused transport is resumed once its store completes (unless closed); the handler's
``closed`` is called exactly once iff an association was established; connection_lost leaves
no live timer of the protocol behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import atheris

# atheris filters by top-level package only: import what the upper layer depends on first, so
# that only the upper layer (oxidicom_py.dicom, the machine, and oxidicom_py.net.protocol, its
# asyncio adapter) is instrumented (coverage counts their edges alone).
import oxidicom_py.identity
import oxidicom_py.storage.part10
import oxidicom_py.telemetry.logs
import oxidicom_py.telemetry.metrics  # noqa: F401

with atheris.instrument_imports(include=["oxidicom_py"]):
    from oxidicom_py.dicom import config, dimse, events, negotiation, pdu
    from oxidicom_py.net import protocol

TESTS = Path(__file__).resolve().parent.parent  # harness.py is in tests/
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fuzz_inputs import acceptor_config, split  # noqa: E402
from harness import associate_rq, p_data  # noqa: E402  (after the instrumented imports, on purpose)

StoreResult = events.StoreResult
_current: Run | None = None
_decode_command = dimse.decode_command


def _recording_decode_command(raw: bytes | bytearray) -> dimse.Command:
    """dimse.decode_command, noting what the protocol decoded in the current run."""
    command = _decode_command(raw)
    if _current is not None:
        _current.commands.append(command)
    return command


dimse.decode_command = _recording_decode_command

HEADER_LENGTH = 6
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
ACCEPTOR_OUTPUT = {
    pdu.A_ASSOCIATE_AC,
    pdu.A_ASSOCIATE_RJ,
    pdu.P_DATA_TF,
    pdu.A_RELEASE_RP,
    pdu.A_ABORT,
}
_LOOP_TURNS = 32
"""Event-loop iterations allowed for a store or a cancellation to complete (they need 2-3),
plus one per 8 bytes of the stream, for the stores queued in a single read."""
_REFUSAL = (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED)


# -- fakes -------------------------------------------------------------------------------------


class FakeTransport:
    """Records each write; refuses writes once closing (a real transport would drop them)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed_by_protocol = False
        self.lost = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.is_closing(), "write on a closing transport"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed_by_protocol = True

    def is_closing(self) -> bool:
        return self.closed_by_protocol or self.lost

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40404) if key == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Sink:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.received = bytearray()
        self.ended: list[str] = []

    def write(self, data: memoryview) -> None:
        assert not self.ended, f"write after {self.ended}"
        self.received += data
        self.run.sink_bytes += len(data)

    def finish(self) -> StoreResult | Awaitable[StoreResult]:
        assert not self.ended, f"finish after {self.ended}"
        self.ended.append("finish")
        self.run.finished_while_open += not self.run.transport.is_closing()
        result = StoreResult(dimse.OUT_OF_RESOURCES, "refused by the fuzzer") if self.run.fail else StoreResult(0)
        kind = self.run.finish_kind
        if kind == 0:
            return result
        if kind == 1:
            return _later(result)
        if kind == 2:
            return _later(None)
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        return future

    def abort(self, reason: str) -> None:
        assert not self.ended, f"abort after {self.ended}"
        assert isinstance(reason, str) and reason
        self.ended.append("abort")


async def _later(result: StoreResult | None) -> StoreResult:
    await asyncio.sleep(0)
    if result is None:
        raise OSError("disk full (fuzzer)")
    return result


class Handler:
    def __init__(self, run: Run, info: events.AssociationInfo) -> None:
        self.run = run
        self.info = info
        self.outcomes: list[str] = []

    def begin_instance(self, command: dimse.Command, context: negotiation.AcceptedContext) -> Sink:
        assert not self.outcomes, "begin_instance after closed"
        assert command.command_field == dimse.C_STORE_RQ and command.has_data_set
        assert self.info.contexts.get(context.context_id) == context
        sink = Sink(self.run)
        self.run.sinks.append(sink)
        return sink

    def closed(self, outcome: str) -> None:
        self.outcomes.append(outcome)


class Run:
    """One input: its choices and what the protocol did."""

    def __init__(self, flags: int, mode: int) -> None:
        self.flags, self.mode = flags, mode
        self.timers_fire = bool(mode & 0x10)
        timeouts = 1e-6 if self.timers_fire else None
        self.config = acceptor_config(config, negotiation, flags, timeouts)
        self.refuse = bool(flags & 0x80)
        self.finish_kind = mode & 0x03
        self.honour_pause = bool(mode & 0x04)
        self.yield_between_reads = bool(mode & 0x08)
        self.fail = bool(mode & 0x20)
        self.lost_with = ConnectionResetError("reset by the fuzzer") if mode & 0x40 else None
        self.settle_before_loss = bool(mode & 0x80)
        self.transport = FakeTransport()
        self.handlers: list[Handler] = []
        self.sinks: list[Sink] = []
        self.sink_bytes = 0
        self.finished_while_open = 0
        self.admissions = 0
        self.commands: list[dimse.Command] = []  # command sets the protocol decoded

    def on_established(self, info: events.AssociationInfo) -> Handler:
        assert not self.handlers, "a second association on one connection"
        handler = Handler(self, info)
        self.handlers.append(handler)
        return handler

    def admission(self, req: pdu.AssociateRequest, peer: tuple[str, int]) -> tuple[int, int, int] | None:
        self.admissions += 1
        assert peer == ("192.0.2.7", 40404)
        return _REFUSAL if self.refuse else None

    def transcript(self) -> tuple[Any, ...]:
        """What the peer and the pipeline saw: equal however the stream was split into reads."""
        return (
            b"".join(self.transport.writes),  # the bytes, however they were grouped into writes
            self.transport.closed_by_protocol,
            [(bytes(sink.received), sink.ended) for sink in self.sinks],
            [handler.outcomes for handler in self.handlers],
        )


# -- one input ---------------------------------------------------------------------------------


async def _turns(until: Any, bound: int) -> None:
    """Run the loop until ``until()`` holds, then two more turns for the done callbacks of
    finished tasks (scheduled with call_soon); at most ``bound`` turns in all."""
    for _ in range(bound):
        if until():
            break
        await asyncio.sleep(0)
    for _ in range(2):
        await asyncio.sleep(0)


def _our_tasks(start: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t not in start and not t.done()]


def decode(data: bytes) -> tuple[int, int, list[bytes], bytes]:
    """(configuration flags, run mode, reads, stream) of a fuzzer input."""
    fdp = atheris.FuzzedDataProvider(data)
    flags, mode = fdp.ConsumeUInt(1), fdp.ConsumeUInt(1)
    pattern = fdp.ConsumeBytes(4)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    return flags, mode, split(stream, pattern), stream


async def scenario(run: Run, chunks: list[bytes], stream: bytes) -> None:
    """Connect, deliver ``chunks`` as reads, lose the connection, then check what happened."""
    global _current
    _current = run
    before = set(asyncio.all_tasks())
    transport = run.transport
    # a store completes in 3 turns; each store needs >= 40 bytes of input
    bound = _LOOP_TURNS + len(stream) // 8

    proto = protocol.AssociationProtocol(run.config, run.on_established, run.admission)
    proto.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closed_by_protocol:
            break  # a closed transport reads no more
        if run.honour_pause and transport.paused:
            await _turns(lambda: not transport.paused or transport.closed_by_protocol, bound)
            assert not transport.paused or transport.closed_by_protocol, "reading was never resumed"
            if transport.closed_by_protocol:
                break
        proto.data_received(chunk)
        if run.yield_between_reads:
            await asyncio.sleep(0)
    if run.settle_before_loss:
        await _turns(lambda: not _our_tasks(before) and (not transport.paused or transport.closed_by_protocol), bound)
        assert not transport.paused or transport.closed_by_protocol, "reading was never resumed"
    transport.lost = True
    proto.connection_lost(run.lost_with)
    await _turns(lambda: not _our_tasks(before), bound)
    assert not _our_tasks(before), "a store never completed"
    _current = None
    check(run, proto, stream)


# -- oracles -----------------------------------------------------------------------------------


def _items(body: bytes, pos: int) -> list[tuple[int, bytes]]:
    out = []
    while pos < len(body):
        assert pos + 4 <= len(body), "truncated item header"
        item_type, length = struct.unpack_from(">BxH", body, pos)
        pos += 4
        assert pos + length <= len(body), "item overruns"
        out.append((item_type, body[pos : pos + length]))
        pos += length
    return out


def _parse_ac(body: bytes) -> set[int]:
    """Accepted context ids of a well-formed A-ASSOCIATE-AC."""
    assert len(body) >= 68 and body[:2] == b"\x00\x01", "A-ASSOCIATE-AC fixed fields"
    accepted: set[int] = set()
    seen: set[int] = set()
    kinds = []
    for item_type, value in _items(body, 68):
        kinds.append(item_type)
        if item_type == 0x21:
            assert len(value) >= 4 and value[0] % 2 == 1 and value[0] not in seen, value[:4]
            seen.add(value[0])
            assert value[2] in (0, 1, 2, 3, 4), value[2]
            (sub,) = _items(value, 4)
            assert sub[0] == 0x40 and sub[1], sub
            if value[2] == pdu.PC_ACCEPTANCE:
                accepted.add(value[0])
        elif item_type == 0x50:
            subs = dict(_items(value, 0))
            assert len(subs.get(0x51, b"")) == 4 and subs.get(0x52), subs
        else:
            assert item_type == 0x10 and value == b"1.2.840.10008.3.1.1.1", (item_type, value)
    assert kinds[0] == 0x10 and kinds[-1] == 0x50, kinds
    return accepted


def _parse_p_data(body: bytes, accepted: set[int]) -> list[tuple[int, int]]:
    """Our P-DATA-TF: one or more complete command PDVs, each a response on an accepted context.
    Returns (command field, status) of each."""
    commands, pos = [], 0
    assert body, "empty P-DATA-TF"
    while pos < len(body):
        assert pos + 6 <= len(body), "truncated PDV header"
        length, context_id, control = struct.unpack_from(">LBB", body, pos)
        assert length >= 2 and pos + 4 + length <= len(body), "PDV overruns"
        assert context_id in accepted, f"response on context {context_id}, accepted {accepted}"
        assert control == 0x03, f"PDV control {control:#x}: we only send last command fragments"
        raw = body[pos + 6 : pos + 4 + length]
        command = _decode_command(raw)
        assert command.command_field & 0x8000 and not command.has_data_set, command
        values = _command_values(raw)
        assert len(values.get(dimse.STATUS, b"")) == 2, values
        commands.append((command.command_field, int.from_bytes(values[dimse.STATUS], "little")))
        pos += 4 + length
    return commands


def _command_values(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos < len(raw):
        _group, elem, length = struct.unpack_from("<HHL", raw, pos)
        out[elem] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def _pdus(writes: list[bytes]) -> list[bytes]:
    """The PDUs of the writes: each write is one or more whole PDUs, never a part of one."""
    out = []
    for write in writes:
        pos = 0
        while pos < len(write):
            assert len(write) - pos >= 6, f"short PDU {write[pos:].hex()}"
            (length,) = struct.unpack_from(">L", write, pos + 2)
            assert pos + 6 + length <= len(write), f"PDU length {length} for {len(write) - pos - 6} bytes"
            out.append(write[pos : pos + 6 + length])
            pos += 6 + length
    return out


def check(run: Run, proto: protocol.AssociationProtocol, stream: bytes) -> None:
    transport = run.transport
    types: list[int] = []
    accepted: set[int] = set()
    store_responses = echo_responses = refusals = 0
    for pdu_bytes in _pdus(transport.writes):
        pdu_type = pdu_bytes[0]
        assert pdu_type in ACCEPTOR_OUTPUT, f"PDU type {pdu_type:#x}"
        body = pdu_bytes[6:]
        if pdu_type == pdu.A_ASSOCIATE_AC:
            assert not types, "A-ASSOCIATE-AC not first"
            accepted = _parse_ac(body)
        elif pdu_type == pdu.A_ASSOCIATE_RJ:
            assert not types, "A-ASSOCIATE-RJ not first"
            assert len(body) == 4 and body[1] in (1, 2) and body[2] in (1, 2, 3), body.hex()
        elif pdu_type == pdu.P_DATA_TF:
            assert types and types[0] == pdu.A_ASSOCIATE_AC, "P-DATA-TF before A-ASSOCIATE-AC"
            for field, status in _parse_p_data(body, accepted):
                if status == dimse.UNRECOGNIZED_OPERATION:  # our sinks never give this status
                    refusals += 1
                elif field == dimse.C_ECHO_RSP:
                    echo_responses += 1
                else:
                    assert field == dimse.C_STORE_RSP, hex(field)
                    store_responses += 1
        else:  # A-RELEASE-RP, A-ABORT
            assert len(body) == 4, body.hex()
            if pdu_type == pdu.A_RELEASE_RP:
                assert types and types[0] == pdu.A_ASSOCIATE_AC, "A-RELEASE-RP before A-ASSOCIATE-AC"
            else:
                assert body[2] == pdu.ABORT_SOURCE_PROVIDER, body.hex()
        assert not types or types[-1] not in (pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP, pdu.A_ABORT), (
            f"PDU {pdu_type:#x} after {types[-1]:#x}"
        )
        types.append(pdu_type)
    last = types[-1] if types else None
    if last in (pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP, pdu.A_ABORT):
        assert transport.closed_by_protocol, f"PDU {last:#x} sent but the transport left open"

    # the handler's life
    established = bool(types) and types[0] == pdu.A_ASSOCIATE_AC
    assert len(run.handlers) == int(established), (len(run.handlers), types)
    assert run.admissions <= 1
    if run.handlers:
        (handler,) = run.handlers
        assert len(handler.outcomes) == 1, handler.outcomes
        (outcome,) = handler.outcomes
        if transport.closed_by_protocol:
            expected = {
                pdu.A_RELEASE_RP: "released",
                pdu.A_ABORT: "aborted by us: ",
                pdu.A_ASSOCIATE_AC: "aborted by peer",
                pdu.P_DATA_TF: "aborted by peer",
            }[last]  # type: ignore[index]
            assert outcome.startswith(expected), (outcome, last)
        else:
            assert outcome.startswith("connection lost"), outcome
    if run.refuse:
        assert not established, "admission refused, association accepted"

    # DIMSE: a C-ECHO is answered at once; every other request PS3.7 defines but C-CANCEL is
    # refused as unrecognized in a response of its own type, once its dataset (if any) is read,
    # so the last one may be left unanswered when the association ends meanwhile; C-CANCEL and
    # a response from the peer (command field with bit 15 set) get no reply; an unknown command
    # field aborts the association
    echo_requests = sum(c.command_field == dimse.C_ECHO_RQ for c in run.commands)
    others = [c.command_field for c in run.commands if c.command_field not in (dimse.C_ECHO_RQ, dimse.C_STORE_RQ)]
    assert echo_responses == echo_requests, (echo_responses, echo_requests)
    answerable = [f for f in others if f in dimse.REQUEST_NAMES and f != dimse.C_CANCEL_RQ]
    assert len(answerable) - 1 <= refusals <= len(answerable), (
        f"{refusals} replies 'unrecognized operation' to the peer's commands {[hex(f) for f in others]}, "
        f"of which {len(answerable)} are requests with a response"
        + (": a request without a response was answered" if refusals > len(answerable) else "")
    )
    if refusals < len(answerable):
        assert transport.is_closing(), "a request left unanswered on an association that goes on"
    unknown = [f for f in others if not f & 0x8000 and f not in dimse.REQUEST_NAMES]
    if unknown:
        assert last == pdu.A_ABORT, (f"an unknown command field {hex(unknown[0])} was not aborted", last)

    # the sinks
    assert run.sink_bytes <= len(stream), (run.sink_bytes, len(stream))
    for sink in run.sinks:
        assert len(sink.ended) == 1, sink.ended
    if run.finish_kind == 0:
        assert store_responses == run.finished_while_open, (store_responses, run.finished_while_open)
    else:
        assert store_responses <= run.finished_while_open, (store_responses, run.finished_while_open)
    assert not transport.paused or transport.is_closing(), "transport left paused"

    # timers: none of the protocol's may outlive connection_lost (asyncio's own loop only)
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", [])
    live = [h for h in scheduled if not h.cancelled() and getattr(h._callback, "__self__", None) is proto]
    assert not live, f"timers left after connection_lost: {live}"


# -- the libFuzzer entry point ---------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_errors: list[dict[str, Any]] = []


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None:
        if os.environ.get("OXIDICOM_FUZZ_UVLOOP"):
            import uvloop

            _loop = uvloop.new_event_loop()
        else:
            _loop = asyncio.new_event_loop()
        _loop.set_exception_handler(lambda _loop, context: _loop_errors.append(context))
        asyncio.set_event_loop(_loop)
    return _loop


def TestOneInput(data: bytes) -> None:
    _loop_errors.clear()
    loop = _event_loop()
    flags, mode, chunks, stream = decode(data)
    run = Run(flags, mode)
    loop.run_until_complete(scenario(run, chunks, stream))
    if len(chunks) > 1 and (run.finish_kind == 0 or run.settle_before_loss) and not run.timers_fire:
        # Split invariance: the same stream in a single read must give the same transcript
        # (unless stores were still pending when the connection was lost, or timers fired
        # between reads: then where the reads stopped matters).
        whole = Run(flags, mode)
        loop.run_until_complete(scenario(whole, [stream], stream))
        assert whole.transcript() == run.transcript(), _difference(whole.transcript(), run.transcript())
    if _loop_errors:
        context = _loop_errors[0]
        raise AssertionError(f"exception in an event loop callback: {context.get('message')}") from context.get(
            "exception"
        )


def _difference(whole: tuple[Any, ...], split: tuple[Any, ...]) -> str:
    names = ("writes", "closed by protocol", "sinks (bytes, ended)", "handler outcomes")
    return "; ".join(
        f"{name}: one read {a!r:.300} / split reads {b!r:.300}"
        for name, a, b in zip(names, whole, split, strict=True)
        if a != b
    )


# -- seeds -------------------------------------------------------------------------------------


def _command(field: int, message_id: int, sop_class: str, instance: str = "", data_set: bool = True) -> bytes:
    elements: dict[int, int | str] = {
        dimse.AFFECTED_SOP_CLASS_UID: sop_class,
        dimse.COMMAND_FIELD: field,
        dimse.MESSAGE_ID: message_id,
        dimse.COMMAND_DATA_SET_TYPE: 0x0000 if data_set else dimse.NO_DATA_SET,
    }
    if field == dimse.C_STORE_RQ:
        elements[dimse.PRIORITY] = 0
        elements[dimse.AFFECTED_SOP_INSTANCE_UID] = instance
    return dimse.encode_command(elements)


_RELEASE_RQ = bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_ABORT_RQ = bytes((pdu.A_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0))
# (0010,0010) PN "FUZZ^ME", (0010,0020) LO "ID1 ", explicit VR little endian
_DATASET = b"\x10\x00\x10\x00PN\x08\x00FUZZ^ME " + b"\x10\x00\x20\x00LO\x04\x00ID1 "


def seed_streams() -> dict[str, bytes]:
    rq = associate_rq([(1, MR, [EXPLICIT, IMPLICIT]), (3, VERIFICATION, [IMPLICIT])], called="OXI")
    store1 = _command(dimse.C_STORE_RQ, 1, MR, "1.2.3.4.1")
    store2 = _command(dimse.C_STORE_RQ, 2, MR, "1.2.3.4.2")
    # two PDVs in one P-DATA-TF
    two_pdvs = store2[:20], store2[20:]
    pdvs = b"".join(
        struct.pack(">LBB", len(part) + 2, 1, 0x01 | (0x02 if last else 0)) + part
        for part, last in ((two_pdvs[0], False), (two_pdvs[1], True))
    )
    store = (
        rq
        + p_data(1, store1, command=True)
        + p_data(1, _DATASET[:9], command=False, last=False)
        + p_data(1, _DATASET[9:], command=False)
        + struct.pack(">BxL", pdu.P_DATA_TF, len(pdvs))
        + pdvs
        + p_data(1, _DATASET, command=False)
        + _RELEASE_RQ
    )
    echo = rq + p_data(3, _command(dimse.C_ECHO_RQ, 7, VERIFICATION, data_set=False), command=True) + _RELEASE_RQ
    find = (
        rq
        + p_data(1, _command(0x0020, 9, MR), command=True)  # C-FIND-RQ: refused, its identifier discarded
        + p_data(1, _DATASET, command=False)
        + _RELEASE_RQ
    )
    aborted = rq + p_data(1, store1, command=True) + p_data(1, _DATASET, command=False, last=False) + _ABORT_RQ
    # a C-STORE-RQ saying it has no dataset: aborted
    no_dataset = rq + p_data(1, _command(dimse.C_STORE_RQ, 3, MR, "1.2.3.4.3", data_set=False), command=True)
    return {"store": store, "echo": echo, "find": find, "abort": aborted, "store-without-dataset": no_dataset}


SEED_MODES = {
    "sync-whole": (0x00, 0x00, b"\x00\x00\x00\x00"),
    "sync-split": (0x00, 0x08, bytes((7, 13, 130, 1))),
    "async-paused": (0x00, 0x05, bytes((5, 0, 0, 0))),
    "async-queued": (0x00, 0x81, bytes((11, 3, 64, 200))),
    "failing-store": (0x00, 0x02, bytes((50,))),
    "timers-firing": (0x00, 0x9D, bytes((100, 40, 60, 30))),
    "cancelled-store": (0x00, 0x0F, bytes((97, 0, 0, 0))),
    "strict-small-pdu-lost": (0x05, 0x68, bytes((2, 129))),
}


def seed_inputs() -> dict[str, bytes]:
    out = {}
    for stream_name, stream in seed_streams().items():
        for mode_name, (flags, mode, pattern) in SEED_MODES.items():
            out[f"seed-{stream_name}-{mode_name}"] = bytes((flags, mode)) + pattern + stream
    return out


def write_seeds(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in seed_inputs().items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    if "--write-seeds" in argv:
        i = argv.index("--write-seeds")
        for path in write_seeds(Path(argv[i + 1])):
            print(path)
        return
    logging.disable(logging.CRITICAL)  # every abort logs an error: keep libFuzzer's output readable
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
