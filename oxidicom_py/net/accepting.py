"""The accept loop: one connection at a time from a (possibly shared) listening socket, while
:mod:`oxidicom_py.net.balance` says this worker is the one to take it.

``loop.create_server`` accepts as many connections as are queued whenever the socket is
readable and cannot be paused; this loop watches the socket itself, accepts one connection per
readiness, and stops watching while a live peer holds fewer connections (checking again every
:data:`POLL_EVERY` seconds, only while paused). Each connection becomes a transport with
``loop.connect_accepted_socket`` (TLS handshake included, bounded by ``handshake_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Final

from oxidicom_py.net.balance import BEAT_EVERY, Balance
from oxidicom_py.net.proxy_header import ProxyHeaderError, ProxyNotAllowed, ProxyPolicy
from oxidicom_py.telemetry import metrics

log = logging.getLogger("oxidicom_py.net")

POLL_EVERY: Final = 0.005
"""While paused (or before the gate opens), how often to ask the balance again."""


class _Release:
    """Gives a connection's place in the balance back exactly once."""

    __slots__ = ("balance", "done")

    def __init__(self, balance: Balance) -> None:
        self.balance = balance
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.balance.closed()


class AcceptLoop:
    def __init__(
        self,
        sock: socket.socket,
        make_protocol: Callable[[Callable[[], None], tuple[str, int] | None], asyncio.Protocol],
        balance: Balance,
        *,
        ssl: _ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        proxy: ProxyPolicy | None = None,
    ) -> None:
        """``make_protocol(release, peer)``: a protocol for a new connection, which calls
        ``release`` when the connection is lost; ``peer`` is the sender a PROXY header named
        (``proxy``: every connection starts with one, read before the TLS handshake), or None."""
        self._sock = sock
        self._make_protocol = make_protocol
        self._balance = balance
        self._ssl = ssl
        self._handshake_timeout = handshake_timeout
        self._proxy = proxy
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False
        self._poll: asyncio.TimerHandle | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_beat()
        self._check()

    def close(self) -> None:
        """Accept nothing more (connections already accepted go on), and close this process's
        copy of the listening socket: once every process sharing it has, the port is closed
        and new connections are refused rather than queued."""
        self._closed = True
        self._stop_reading()
        for handle in (self._poll, self._beat):
            if handle is not None:
                handle.cancel()
        self._balance.leave()
        self._sock.close()

    # -- watching the socket --------------------------------------------------------------
    def _check(self) -> None:
        self._poll = None
        assert self._loop is not None
        if self._closed:
            return
        if self._balance.may_accept(time.monotonic()):
            if not self._reading:
                self._loop.add_reader(self._sock.fileno(), self._on_readable)
                self._reading = True
        else:
            self._stop_reading()
            self._poll = self._loop.call_later(POLL_EVERY, self._check)

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _on_beat(self) -> None:
        assert self._loop is not None
        self._balance.beat(time.monotonic())
        self._beat = self._loop.call_later(BEAT_EVERY, self._on_beat)

    def _on_readable(self) -> None:
        assert self._loop is not None
        if self._closed or not self._balance.may_accept(time.monotonic()):
            self._check()
            return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as e:  # out of descriptors, ...: back off a little instead of spinning
            log.error("cannot accept a connection: %s", e)
            self._stop_reading()
            self._poll = self._loop.call_later(0.1, self._check)
            return
        conn.setblocking(False)
        self._balance.accepted()
        release = _Release(self._balance)
        task = self._loop.create_task(self._connect(conn, release))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        if not self._balance.may_accept(time.monotonic()):
            self._check()

    async def _connect(self, conn: socket.socket, release: _Release) -> None:
        assert self._loop is not None
        peer: tuple[str, int] | None = None
        if self._proxy is not None:
            try:
                peer = (await self._proxy.read_from(conn)).source
            except (ProxyHeaderError, OSError) as e:
                reason = "proxy_not_allowed" if isinstance(e, ProxyNotAllowed) else "proxy_header_invalid"
                with contextlib.suppress(OSError):
                    via = conn.getpeername()
                    log.warning("connection dropped: %s", e, extra={"via": f"{via[0]}:{via[1]}", "reason": reason})
                metrics.ASSOCIATIONS_REJECTED.labels(reason).inc()
                with contextlib.suppress(OSError):
                    conn.close()
                release()
                return
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._make_protocol(release, peer),
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl is not None else None,
            )
        except Exception as e:  # a failed TLS handshake, a peer gone already: only this connection
            log.debug("connection closed before it started: %s", e)
            with contextlib.suppress(OSError):
                conn.close()
            release()
