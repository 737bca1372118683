"""The TCP listener: accepts connections and runs one :class:`AssociationProtocol` per connection."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
from collections.abc import Callable

from oxidicom_py.dicom import acse, pdu
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.events import AssociationInfo
from oxidicom_py.net import tls
from oxidicom_py.net.accepting import AcceptLoop
from oxidicom_py.net.balance import Balance
from oxidicom_py.net.protocol import AssociationHandler, AssociationProtocol, OnRejected
from oxidicom_py.net.proxy_header import ProxyPolicy
from oxidicom_py.net.slots import AssociationSlots

log = logging.getLogger("oxidicom_py.net")

LISTEN_BACKLOG = 512
"""Connections the kernel queues before a worker accepts them."""


class Listener:
    """Accepts associations while a slot is free (``max_associations`` in this process, or
    ``slots`` shared with the other workers); beyond that, A-ASSOCIATE-RJ (transient, local
    limit exceeded) so the sender knows to retry later."""

    def __init__(
        self,
        config: AcceptorConfig,
        on_established: Callable[[AssociationInfo], AssociationHandler],
        *,
        max_associations: int = 0,
        slots: AssociationSlots | None = None,
        overloaded: Callable[[], str | None] | None = None,
        balance: Balance | None = None,
        proxy: ProxyPolicy | None = None,
        on_rejected: OnRejected | None = None,
    ) -> None:
        """``overloaded``: returns why new associations should wait (e.g. a registration
        backlog while the database is away), or None; ``balance``: shared with the other
        workers of a pool, which of them takes the next connection; ``proxy``: connections
        start with a PROXY protocol v2 header naming the sender; ``on_rejected``: told of each
        permanent A-ASSOCIATE-RJ."""
        self.config = config
        self._on_established = on_established
        self.slots = slots if slots is not None else AssociationSlots(max_associations)
        self._overloaded = overloaded
        self._overload_reason: str | None = None
        self.balance = balance if balance is not None else Balance()
        self.accepting: AcceptLoop | None = None
        self.proxy = proxy
        self.on_rejected = on_rejected

    def _admission(self, req: pdu.AssociateRequest, peer: tuple[str, int]) -> tuple[int, int, int] | None:
        """Refuse while overloaded or without a free slot; a slot taken here is given back when
        the association closes (:class:`_Counted`): nothing between admission and establishment
        can fail."""
        refusal = self._overload_refusal()
        if refusal is None and not self.slots.try_acquire():
            refusal = acse.LOCAL_LIMIT_EXCEEDED
        return refusal

    def _overload_refusal(self) -> tuple[int, int, int] | None:
        if self._overloaded is not None:
            reason = self._overloaded()
            if reason != self._overload_reason:  # log each change, not each refusal
                if reason is None:
                    log.warning("accepting new associations again")
                else:
                    log.warning("refusing new associations for now (transient): %s", reason)
                self._overload_reason = reason
            if reason is not None:
                return acse.LOCAL_LIMIT_EXCEEDED
        return None

    def _established(self, info: AssociationInfo) -> AssociationHandler:
        return _Counted(self, self._on_established(info))

    def _protocols(
        self, kind: type[AssociationProtocol]
    ) -> Callable[[Callable[[], None], tuple[str, int] | None], AssociationProtocol]:
        """The accept loop's factory: a ``kind`` protocol that calls ``release`` when it is lost
        and sees ``peer`` (from a PROXY header) as the sender, when given."""

        def make(release: Callable[[], None], peer: tuple[str, int] | None) -> AssociationProtocol:
            protocol = kind(self.config, self._established, self._admission)
            protocol.on_lost = release
            protocol.proxied_peer = peer
            protocol.on_rejected = self.on_rejected
            return protocol

        return make

    async def start(self, host: str, port: int, ssl: _ssl.SSLContext | None = None) -> tuple[str, int]:
        """Bind and listen on ``host:port`` (port 0: any free port); TLS when ``ssl`` is given."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
        return await self.start_on(sock, ssl=ssl)

    async def start_on(self, sock: socket.socket, ssl: _ssl.SSLContext | None = None) -> tuple[str, int]:
        """Accept on an already listening socket (possibly shared with other worker processes).

        With ``ssl``, every connection does a TLS handshake first, bounded by the ARTIM timeout;
        a failed handshake (a plain client, a missing or untrusted client certificate) just
        closes that connection: the association protocol never sees it.
        """
        self.accepting = AcceptLoop(
            sock,
            self._protocols(AssociationProtocol if ssl is None else _TlsAssociationProtocol),
            self.balance,
            ssl=ssl,
            handshake_timeout=self.config.artim_timeout,
            proxy=self.proxy,
        )
        self.accepting.start()
        bound = sock.getsockname()
        scheme = "tcp" if ssl is None else "tls"
        log.info("listening on %s://%s:%d", scheme, bound[0], bound[1], extra={"ae_title": self.config.ae_title})
        return bound[0], bound[1]

    async def stop_accepting(self) -> None:
        if self.accepting is not None:
            self.accepting.close()


class _TlsAssociationProtocol(AssociationProtocol):
    """Logs who connected over TLS (version, cipher, client certificate) once the handshake is done."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        details = tls.peer_details(transport)
        if details is not None:
            self.tls_subject = str(details["peer_certificate"] or "")
            peer = self.proxied_peer or transport.get_extra_info("peername") or ("?", 0)
            self._log.info("TLS connection", extra={"peer": f"{peer[0]}:{peer[1]}", **details})
        super().connection_made(transport)


class _Counted:
    """An association's handler that gives its slot back to the listener when it closes."""

    __slots__ = ("begin_instance", "handler", "listener")

    def __init__(self, listener: Listener, handler: AssociationHandler) -> None:
        self.listener = listener
        self.handler = handler
        self.begin_instance = handler.begin_instance  # no extra call per instance

    def closed(self, outcome: str) -> None:
        self.listener.slots.release()
        self.handler.closed(outcome)
