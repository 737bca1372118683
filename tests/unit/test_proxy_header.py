"""The PROXY protocol v2 header: what balancers send is read exactly, everything else refused."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from oxidicom_py.net import proxy_header
from oxidicom_py.net.proxy_header import ProxiedPeer, ProxyHeaderError, ProxyNotAllowed, ProxyPolicy, encode, parse


@pytest.mark.parametrize(
    ("source", "seen"),
    [
        (("198.51.100.7", 40000), ("198.51.100.7", 40000)),
        (("2001:db8::7", 1), ("2001:db8::7", 1)),
        (("::ffff:198.51.100.9", 65535), ("198.51.100.9", 65535)),  # an IPv4 sender on a dual-stack balancer
        (None, None),  # LOCAL: the balancer's own check
    ],
)
def test_a_balancers_header_names_the_sender(source: tuple[str, int] | None, seen: tuple[str, int] | None) -> None:
    assert parse(encode(source, ("192.0.2.2", 11111))) == ProxiedPeer(seen)


def test_tlvs_after_the_addresses_are_skipped() -> None:
    header = encode(("198.51.100.7", 4))
    tlv = bytes((0x04,)) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    length = struct.unpack_from("!H", header, 14)[0] + len(tlv)
    assert parse(header[:14] + struct.pack("!H", length) + header[16:] + tlv).source == ("198.51.100.7", 4)


def _with(header: bytes, index: int, value: int) -> bytes:
    return header[:index] + bytes((value,)) + header[index + 1 :]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PROXY TCP4 198.51.100.7 192.0.2.2 40000 11111\r\n", r"v1 \(text\)"),
        (b"\x01\x00\x00\x00\x00\xcc" + bytes(200), "no PROXY protocol v2 signature"),  # a bare A-ASSOCIATE-RQ
        (_with(encode(("198.51.100.7", 1)), 12, 0x11), "version 1, not 2"),
        (_with(encode(("198.51.100.7", 1)), 12, 0x2F), "unknown PROXY command"),
        (_with(encode(("198.51.100.7", 1)), 13, 0x12), "not TCP"),  # UDP over IPv4
        (encode(("198.51.100.7", 1))[:14] + struct.pack("!H", 4) + bytes(4), "shorter than its addresses"),
        (encode(None)[:14] + struct.pack("!H", 5000), "at most"),
        (encode(("198.51.100.7", 1))[:20], "shorter than its announced length"),
    ],
)
def test_anything_else_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def _pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    return client, server


def test_the_header_is_read_exactly_and_the_association_bytes_stay_in_the_socket() -> None:
    client, server = _pair()
    try:
        header = encode(("198.51.100.7", 40000))
        client.sendall(header[:5])  # a header split over segments

        async def scenario() -> ProxiedPeer:
            task = asyncio.ensure_future(ProxyPolicy((ipaddress.ip_network("127.0.0.0/8"),), 5).read_from(server))
            await asyncio.sleep(0)
            client.sendall(header[5:] + b"\x01\x00DICOM")
            return await task

        assert asyncio.run(scenario()).source == ("198.51.100.7", 40000)
        server.setblocking(True)
        assert server.recv(100) == b"\x01\x00DICOM"
    finally:
        client.close()
        server.close()


def test_a_connection_outside_the_balancers_networks_or_without_a_header_in_time_is_refused() -> None:
    client, server = _pair()
    try:
        with pytest.raises(ProxyNotAllowed, match="outside OXIDICOM_PROXY_NETWORKS"):
            asyncio.run(ProxyPolicy((ipaddress.ip_network("10.0.0.0/8"),), 5).read_from(server))
        client.sendall(proxy_header.SIGNATURE)  # then silence
        with pytest.raises(ProxyHeaderError, match=r"within 0\.2 s"):
            asyncio.run(ProxyPolicy((ipaddress.ip_network("127.0.0.1/32"),), 0.2).read_from(server))
        client.close()
        with pytest.raises(ProxyHeaderError, match="closed inside the PROXY header"):
            asyncio.run(ProxyPolicy((ipaddress.ip_network("127.0.0.1/32"),), 5).read_from(server))
    finally:
        client.close()
        server.close()
