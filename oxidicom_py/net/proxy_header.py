"""The PROXY protocol version 2 header a TCP load balancer (HAProxy ``send-proxy-v2``, AWS NLB,
MetalLB...) puts in front of a connection, so the receiver sees the sender's own address.

Only the binary version 2 is accepted. The header is read from the raw socket exactly (16
bytes, then the length it announces), before any TLS handshake or DICOM byte, so nothing of
the association is consumed. A ``LOCAL`` header (the balancer's own health check) keeps the
connection's address; an ``UNSPEC`` family too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_FIXED: Final = 16
_MAX_BODY: Final = 4096
"""Addresses are at most 216 bytes; TLVs a balancer adds are a few dozen. More is refused."""

_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
_AF_INET_STREAM: Final = 0x11
_AF_INET6_STREAM: Final = 0x21


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol v2 header (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class ProxiedPeer:
    """The sender as the balancer saw it (``None`` for a LOCAL or UNSPEC header)."""

    source: tuple[str, int] | None


def parse_fixed(fixed: bytes) -> int:
    """The first 16 bytes: checked; the number of bytes that follow."""
    if fixed[:12] != SIGNATURE:
        if fixed[:6] == b"PROXY ":
            raise ProxyHeaderError("a PROXY protocol v1 (text) header: only version 2 is accepted (send-proxy-v2)")
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}, not 2")
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    (length,) = struct.unpack_from("!H", fixed, 14)
    if length > _MAX_BODY:
        raise ProxyHeaderError(f"a PROXY header of {length} bytes (at most {_MAX_BODY})")
    return length


def parse_body(fixed: bytes, body: bytes) -> ProxiedPeer:
    """The addresses that follow the fixed part."""
    command, family = fixed[12] & 0x0F, fixed[13]
    if command == _CMD_LOCAL:
        return ProxiedPeer(None)
    if family == _AF_INET_STREAM:
        if len(body) < 12:
            raise ProxyHeaderError("a TCP over IPv4 PROXY header shorter than its addresses")
        source = str(ipaddress.IPv4Address(body[0:4]))
        (port,) = struct.unpack_from("!H", body, 8)
        return ProxiedPeer((source, port))
    if family == _AF_INET6_STREAM:
        if len(body) < 36:
            raise ProxyHeaderError("a TCP over IPv6 PROXY header shorter than its addresses")
        address = ipaddress.IPv6Address(body[0:16])
        mapped = address.ipv4_mapped
        (port,) = struct.unpack_from("!H", body, 32)
        return ProxiedPeer((str(mapped if mapped is not None else address), port))
    if family == 0x00:
        return ProxiedPeer(None)
    raise ProxyHeaderError(f"a PROXY header for address family/protocol 0x{family:02x} (not TCP)")


def parse(header: bytes) -> ProxiedPeer:
    """A whole header (for tests and tools): fixed part, then body."""
    if len(header) < _FIXED:
        raise ProxyHeaderError("a PROXY header shorter than 16 bytes")
    length = parse_fixed(header[:_FIXED])
    if len(header) < _FIXED + length:
        raise ProxyHeaderError("a PROXY header shorter than its announced length")
    return parse_body(header[:_FIXED], header[_FIXED : _FIXED + length])


def encode(source: tuple[str, int] | None, destination: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """A v2 header as a balancer sends it (``None``: LOCAL), IPv4 or IPv6 by ``source``."""
    if source is None:
        return SIGNATURE + bytes((0x20, 0x00)) + struct.pack("!H", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == 4:
        body = src.packed + ipaddress.IPv4Address(destination[0]).packed + struct.pack("!HH", source[1], destination[1])
        family = _AF_INET_STREAM
    else:
        dst6 = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
        body = src.packed + dst6.packed + struct.pack("!HH", source[1], destination[1])
        family = _AF_INET6_STREAM
    return SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = await loop.sock_recv(sock, n - got)
        if not chunk:
            raise ProxyHeaderError(f"the connection closed inside the PROXY header ({got} of {n} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def read(sock: socket.socket, timeout: float) -> ProxiedPeer:
    """Read and check the header at the start of ``sock`` (non-blocking), within ``timeout``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            fixed = await _recv_exactly(loop, sock, _FIXED)
            length = parse_fixed(fixed)
            body = await _recv_exactly(loop, sock, length) if length else b""
    except TimeoutError:
        raise ProxyHeaderError(f"no complete PROXY header within {timeout:g} s") from None
    return parse_body(fixed, body)


class ProxyNotAllowed(ProxyHeaderError):
    """A connection that would send a PROXY header from outside the balancers' networks."""


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Every connection starts with a PROXY v2 header, from one of ``networks`` (the balancers)."""

    networks: tuple[object, ...]
    timeout: float

    async def read_from(self, conn: socket.socket) -> ProxiedPeer:
        """The sender behind ``conn``; :class:`ProxyNotAllowed` or :class:`ProxyHeaderError` if
        the connection must be dropped."""
        balancer = conn.getpeername()[0]
        try:
            ip = ipaddress.ip_address(balancer)
        except ValueError:
            raise ProxyNotAllowed(f"a connection from {balancer!r}, not a balancer's network") from None
        if not any(ip in net for net in self.networks):  # type: ignore[operator]
            raise ProxyNotAllowed(f"a connection from {balancer}, outside OXIDICOM_PROXY_NETWORKS")
        return await read(conn, self.timeout)
