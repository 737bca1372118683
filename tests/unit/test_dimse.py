"""DIMSE command sets (PS3.7 Annex E) on their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxidicom_py.dicom import dimse

MR = "1.2.840.10008.5.1.4.1.1.4"


def _values(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos < len(raw):
        _g, elem, length = (
            int.from_bytes(raw[pos : pos + 2], "little"),
            int.from_bytes(raw[pos + 2 : pos + 4], "little"),
            int.from_bytes(raw[pos + 4 : pos + 8], "little"),
        )
        out[elem] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def test_a_command_round_trips_with_its_group_length_and_even_values() -> None:
    raw = dimse.encode_command(
        {
            dimse.AFFECTED_SOP_CLASS_UID: MR,
            dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
            dimse.MESSAGE_ID: 7,
            dimse.COMMAND_DATA_SET_TYPE: 0,
            dimse.AFFECTED_SOP_INSTANCE_UID: "1.2.3",
        }
    )
    values = _values(raw)
    assert int.from_bytes(values[0x0000], "little") == len(raw) - 12
    assert all(len(v) % 2 == 0 for v in values.values())
    assert values[dimse.AFFECTED_SOP_INSTANCE_UID] == b"1.2.3\x00"  # UIDs padded with NUL
    command = dimse.decode_command(raw)
    assert (command.command_field, command.message_id, command.affected_sop_class) == (dimse.C_STORE_RQ, 7, MR)
    assert command.affected_sop_instance == "1.2.3" and command.has_data_set


@pytest.mark.parametrize(
    "raw",
    [b"\x00\x00\x00\x01", b"\x08\x00\x16\x00\x02\x00\x00\x00ab", b"\x00\x00\x00\x01\x10\x00\x00\x00"],
    ids=["truncated", "not-group-0000", "overruns"],
)
def test_an_undecodable_command_raises(raw: bytes) -> None:
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(raw)


def test_the_store_response_answers_the_request() -> None:
    request = dimse.Command(dimse.C_STORE_RQ, 9, 0, MR, "1.2.3")
    values = _values(dimse.store_response(request, dimse.CANNOT_UNDERSTAND, "x" * 100))
    assert int.from_bytes(values[dimse.COMMAND_FIELD], "little") == dimse.C_STORE_RSP
    assert int.from_bytes(values[dimse.MESSAGE_ID_RESPONDED_TO], "little") == 9
    assert int.from_bytes(values[dimse.STATUS], "little") == dimse.CANNOT_UNDERSTAND
    assert values[dimse.ERROR_COMMENT] == b"x" * 64  # LO: at most 64 characters


@pytest.mark.parametrize("field", sorted(dimse.REQUEST_NAMES))
def test_every_request_but_c_cancel_has_its_own_response_type(field: int) -> None:
    request = dimse.Command(field, 3, dimse.NO_DATA_SET, "", "", requested_sop_class=MR, requested_sop_instance="9.9")
    response = dimse.failure_response(request, dimse.UNRECOGNIZED_OPERATION)
    if field == dimse.C_CANCEL_RQ:
        assert response is None
        return
    assert response is not None
    values = _values(response)
    assert int.from_bytes(values[dimse.COMMAND_FIELD], "little") == field | 0x8000
    assert values[dimse.AFFECTED_SOP_CLASS_UID].rstrip(b"\x00") == MR.encode()
    assert (dimse.AFFECTED_SOP_INSTANCE_UID in values) == (field >= 0x0100)


def test_an_unknown_command_field_has_no_response() -> None:
    assert dimse.failure_response(dimse.Command(0x0777, 1, dimse.NO_DATA_SET, MR, ""), 0x0211) is None


@given(
    sop_class=st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,8}){0,12}", fullmatch=True),
    sop_instance=st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,8}){0,12}", fullmatch=True),
    message_id=st.integers(0, 0xFFFF),
    status=st.integers(0, 0xFFFF),
    comment=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
)
def test_the_direct_store_response_is_the_generic_encoding(
    sop_class: str, sop_instance: str, message_id: int, status: int, comment: str
) -> None:
    """store_response writes its elements in tag order without a dict; the bytes must be what
    the generic encoder makes of the same elements."""
    request = dimse.Command(
        command_field=dimse.C_STORE_RQ,
        message_id=message_id,
        data_set_type=0,
        affected_sop_class=sop_class,
        affected_sop_instance=sop_instance,
    )
    elements: dict[int, int | str] = {
        dimse.AFFECTED_SOP_CLASS_UID: sop_class,
        dimse.COMMAND_FIELD: dimse.C_STORE_RSP,
        dimse.MESSAGE_ID_RESPONDED_TO: message_id,
        dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET,
        dimse.STATUS: status,
        dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
    }
    if comment:
        elements[dimse.ERROR_COMMENT] = comment[:64]
    assert dimse.store_response(request, status, comment) == dimse.encode_command(elements)
