"""The fallback acceptor: pynetdicom's thread-per-association SCP feeding the same storage path.

Selected with ``OXIDICOM_SCP_IMPLEMENTATION=pynetdicom``. Every instance still goes through
:mod:`oxidicom_py.storage.ingest` (validation, paths, atomic write, registration) on the
worker's event loop; pynetdicom only does the networking. It is slower (it polls with 1 ms
sleeps and holds each dataset in memory) and does not enforce ``OXIDICOM_SCP_STRICT``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
from collections.abc import Callable
from ssl import SSLContext, SSLSocket
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from ulid import ULID

from oxidicom_py.net import dimse
from oxidicom_py.net.association import AcceptorConfig, AssociationHandler, AssociationInfo, StoreResult
from oxidicom_py.net.contexts import VERIFICATION, accepted_transfer_syntaxes, storage_sop_classes
from oxidicom_py.net.negotiation import AcceptedContext
from oxidicom_py.storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger("oxidicom_py.net")
_STORE_TIMEOUT = 600.0


class _AdoptedSocketServer(ThreadedAssociationServer):
    """pynetdicom's server, accepting on a socket we already bound (possibly shared by workers)."""

    adopted: socket.socket
    handshake_timeout: float = 30.0

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self.adopted
        # Non-blocking: with the socket shared by several workers, a connection wakes them all
        # and all but one find nothing to accept; a blocking accept() would hang that worker.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # already listening

    def server_close(self) -> None:
        # close our descriptor only: shutdown() would stop the socket for every worker sharing it
        self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # pynetdicom wraps and handshakes right here, on the one accepting thread: a client that
        # connects and says nothing would stop all accepts. Wrap only; the association's own
        # thread does the handshake (process_request_thread).
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, SSLSocket):
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as e:  # SSLError and timeouts are OSErrors
                log.warning("TLS handshake failed: %s", e, extra={"peer": f"{client_address[0]}:{client_address[1]}"})
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class PynetdicomListener:
    def __init__(
        self,
        config: AcceptorConfig,
        on_established: Callable[[AssociationInfo], AssociationHandler],
        *,
        max_associations: int,
    ) -> None:
        self.config = config
        self._on_established = on_established
        self.max_associations = max_associations
        self._server: _AdoptedSocketServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[int, AssociationHandler] = {}
        self._lock = threading.Lock()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = self.config.max_pdu_length
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = self.config.artim_timeout
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        syntaxes = sorted(accepted_transfer_syntaxes(self.config.policy.uncompressed_only))
        ae.add_supported_context(VERIFICATION)
        for uid in sorted(storage_sop_classes()):
            ae.add_supported_context(uid, syntaxes)
        _config.UNRESTRICTED_STORAGE_SERVICE = self.config.policy.promiscuous
        if self.config.allowed_calling_aets is not None:
            ae.require_calling_aet = sorted(self.config.allowed_calling_aets)
        ae.require_called_aet = self.config.check_called_aet
        if self.config.idle_timeout:
            ae.network_timeout = self.config.idle_timeout
        if self.config.allowed_networks is not None:
            log.warning("OXIDICOM_SCP_ALLOWED_NETWORKS is not enforced by the pynetdicom acceptor")
        return ae

    async def start_on(self, sock: socket.socket, ssl: SSLContext | None = None) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        if self.config.strict:
            log.warning("OXIDICOM_SCP_STRICT is not enforced by the pynetdicom acceptor")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = self._ae()
        handlers = [
            (evt.EVT_ESTABLISHED, self._established),
            (evt.EVT_C_STORE, self._c_store),
            (evt.EVT_RELEASED, self._ended, ["released"]),
            (evt.EVT_ABORTED, self._ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._ended, ["connection closed"]),
        ]
        _AdoptedSocketServer.adopted = sock
        _AdoptedSocketServer.handshake_timeout = self.config.artim_timeout
        address = sock.getsockname()
        server = _AdoptedSocketServer(
            ae, address, ae.ae_title, ae.supported_contexts, ssl_context=ssl, evt_handlers=handlers
        )
        ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="pynetdicom-acceptor", daemon=True)
        self._thread.start()
        scheme = "tls" if ssl is not None else "tcp"
        log.info(
            "listening on %s://%s:%d (pynetdicom)", scheme, address[0], address[1], extra={"ae_title": ae.ae_title}
        )
        return address[0], address[1]

    async def stop_accepting(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)

    # -- pynetdicom event handlers (run on association threads) ---------------------------
    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = fn()
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(_STORE_TIMEOUT)

    def _established(self, event: evt.Event) -> None:
        assoc = event.assoc
        contexts = {
            cx.context_id: AcceptedContext(cx.context_id, str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
        }
        info = AssociationInfo(
            ulid=str(ULID()),
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            peer=(assoc.requestor.address, assoc.requestor.port),
            contexts=contexts,
            peer_max_pdu=assoc.requestor.maximum_length,
        )
        handler = self._on_loop(lambda: self._on_established(info))
        with self._lock:
            self._handlers[id(assoc)] = handler

    def _ended(self, event: evt.Event, outcome: str) -> None:
        with self._lock:
            handler = self._handlers.pop(id(event.assoc), None)
        if handler is not None:
            self._on_loop(lambda: handler.closed(outcome))

    def _c_store(self, event: evt.Event) -> int | Dataset:
        with self._lock:
            handler = self._handlers.get(id(event.assoc))
        if handler is None:
            return dimse.PROCESSING_FAILURE
        req = event.request
        command = dimse.Command(
            command_field=dimse.C_STORE_RQ,
            message_id=int(req.MessageID),
            data_set_type=1,
            affected_sop_class=str(req.AffectedSOPClassUID),
            affected_sop_instance=str(req.AffectedSOPInstanceUID),
        )
        cx = event.context
        context = AcceptedContext(cx.context_id, str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        data = req.DataSet.getvalue()

        def store() -> Any:
            sink = handler.begin_instance(command, context)
            sink.write(memoryview(data))
            return sink.finish()

        result: StoreResult = self._on_loop(store)
        if not result.comment:
            return result.status
        status = Dataset()
        status.Status = result.status
        status.ErrorComment = result.comment
        return status
