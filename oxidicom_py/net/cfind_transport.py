"""The C-FIND SCU's transport: pynetdicom's association socket and AE, changed so that every
step is bounded and the query knows where it stands (phase, socket, association) when it has
to stop one. pynetdicom 3.0 internals used: ``AE._create_socket``, ``AssociationSocket._create_socket``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Protocol

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class QueryState(Protocol):
    """What the transport reads and records of the running query."""

    cancelled: threading.Event
    phase: str
    response_timeout: float
    sock: Any
    assoc: Any


class TcpSocket(socket.socket):
    """A client socket that remembers why ``connect`` failed and keeps a read timeout."""

    io_timeout: float | None = None
    connect_error: OSError | None = None
    connected = False
    query: QueryState | None = None

    def settimeout(self, value: float | None) -> None:
        # pynetdicom clears the timeout once connected; without one, a peer that sends half a
        # PDU would block pynetdicom's reader thread forever
        super().settimeout(self.io_timeout if value is None else value)

    def connect(self, address: Any) -> None:
        if self.query is not None and self.query.cancelled.is_set():
            raise OSError("query stopped")
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise
        self.connected = True
        if self.query is not None:
            self.query.phase = "waiting for the A-ASSOCIATE response"

    def shut(self) -> None:
        with contextlib.suppress(OSError):
            self.shutdown(socket.SHUT_RDWR)


class QueryAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper, creating a :class:`TcpSocket` (TCP_NODELAY, read timeout)."""

    def __init__(self, query: QueryState, assoc: Association, address: AddressInformation) -> None:
        self._query = query
        super().__init__(assoc, address=address)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        family = socket.AF_INET if address.is_ipv4 else socket.AF_INET6
        sock = TcpSocket(family, socket.SOCK_STREAM)
        self._query.phase = "connecting"
        sock.query = self._query
        sock.io_timeout = self._query.response_timeout
        # one small PDU each way at a time: without this every exchange may wait ~40 ms (Nagle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._query.response_timeout)
        sock.bind(address.as_tuple)
        self._is_connected = False
        self._query.sock = sock
        return sock


class QueryAE(AE):
    """An AE whose associations use :class:`QueryAssociationSocket` and are known to the query."""

    def __init__(self, query: QueryState, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self._query = query
        self.implementation_class_uid = IMPLEMENTATION_CLASS_UID  # ours, not pynetdicom's
        self.implementation_version_name = IMPLEMENTATION_VERSION_NAME

    def _create_socket(self, assoc: Association, address: AddressInformation, tls_args: Any) -> AssociationSocket:
        self._query.assoc = assoc
        sock = QueryAssociationSocket(self._query, assoc, address)
        sock.tls_args = tls_args
        return sock
