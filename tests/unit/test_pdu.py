"""The PDU codec (PS3.8 9.3) on its own: no socket."""

from __future__ import annotations

import struct

import pytest
from harness import associate_rq

from oxidicom_py.dicom import pdu

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _body(raw: bytes) -> bytes:
    pdu_type, length = pdu.PDU_HEADER.unpack_from(raw)
    assert pdu_type == pdu.A_ASSOCIATE_RQ and length == len(raw) - 6
    return raw[6:]


def test_an_associate_rq_is_parsed_field_by_field() -> None:
    raw = associate_rq([(1, MR, [EXPLICIT, "1.2.840.10008.1.2"]), (3, "1.2.840.10008.1.1", [EXPLICIT])], max_pdu=32768)
    req = pdu.parse_associate_rq(_body(raw))
    assert (req.calling_ae, req.called_ae, req.protocol_version) == ("RAWSCU", "OXITEST", 1)
    assert req.application_context == "1.2.840.10008.3.1.1.1"
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in req.contexts] == [
        (1, MR, [EXPLICIT, "1.2.840.10008.1.2"]),
        (3, "1.2.840.10008.1.1", [EXPLICIT]),
    ]
    assert (req.max_pdu_length, req.implementation_class_uid) == (32768, "1.2.3.4")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:60], "shorter than its fixed fields"),
        (lambda b: b[:-3], "overruns"),
        (lambda b: b.replace(b"1.2.840.10008.3.1.1.1", b"").replace(b"\x10\x00\x00\x15", b"\x11\x00\x00\x00"), ""),
    ],
    ids=["short", "truncated-item", "no-application-context"],
)
def test_a_malformed_associate_rq_raises_pdu_error(mangle: object, message: str) -> None:
    body = mangle(_body(associate_rq([(1, MR, [EXPLICIT])])))  # type: ignore[operator]
    with pytest.raises(pdu.PduError, match=message):
        pdu.parse_associate_rq(body)


def test_an_even_or_repeated_context_id_is_refused() -> None:
    for contexts in ([(2, MR, [EXPLICIT])], [(1, MR, [EXPLICIT]), (1, MR, [EXPLICIT])]):
        with pytest.raises(pdu.PduError, match="presentation context id"):
            pdu.parse_associate_rq(_body(associate_rq(contexts)))


def test_the_replies_are_well_formed() -> None:
    req = pdu.parse_associate_rq(_body(associate_rq([(1, MR, [EXPLICIT])])))
    ac = pdu.encode_associate_ac(
        req,
        [pdu.ContextResult(1, pdu.PC_ACCEPTANCE, EXPLICIT)],
        max_pdu_length=16384,
        implementation_class_uid="2.25.1",
        implementation_version_name="TEST",
    )
    pdu_type, length = pdu.PDU_HEADER.unpack_from(ac)
    assert pdu_type == pdu.A_ASSOCIATE_AC and length == len(ac) - 6
    assert ac[10:26] == req.raw_called_ae and ac[26:42] == req.raw_calling_ae  # echoed as received
    assert b"2.25.1" in ac and EXPLICIT.encode() in ac
    assert pdu.encode_associate_rj(2, 3, 2) == bytes((3, 0, 0, 0, 0, 4, 0, 2, 3, 2))
    assert pdu.encode_release_rp() == bytes((6, 0, 0, 0, 0, 4, 0, 0, 0, 0))
    assert pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, 6) == bytes((7, 0, 0, 0, 0, 4, 0, 0, 2, 6))
    data = pdu.encode_p_data(5, b"abcd", command=True)
    assert data == bytes((4, 0)) + struct.pack(">L", 10) + struct.pack(">LBB", 6, 5, 0x03) + b"abcd"
    assert pdu.encode_p_data(5, b"", command=False, last=False)[-1] == 0x00
