"""The fallback acceptor: pynetdicom's thread-per-association SCP feeding the same storage path.

Selected with ``OXIDICOM_SCP_IMPLEMENTATION=pynetdicom``. Every instance still goes through
:mod:`oxidicom_py.storage.ingest` (validation, paths, atomic write, registration) on the
worker's event loop; pynetdicom only does the networking. It is slower (it polls with short
sleeps, and every dataset is written twice) and does not enforce ``OXIDICOM_SCP_STRICT``,
``OXIDICOM_SCP_PDU_TIMEOUT`` or ``OXIDICOM_SCP_ALLOWED_NETWORKS``.

Datasets are never held in memory. pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` mode writes
each received dataset, PDV by PDV, to a temporary file; we put that file in the files root's
staging folder (``{FILES_ROOT}/.oxidicom-staging/{instance}/{worker}/pynetdicom-*.part``: the storage
filesystem, not ``/tmp``, which may be RAM), and once the dataset is complete the
association's thread reads it back in 1 MiB chunks, each handed to the instance sink on the
event loop (``begin_instance`` -> ``write`` per chunk -> ``finish``), so the loop is never
blocked for a whole file. The temporary file is removed after the C-STORE whatever its
outcome; one left by an association that ended mid-dataset is removed when the association
ends, and one left by a worker that died goes with that worker's staging folder, which the
supervisor empties. The peak memory this costs is in RELIABILITY.md, and checked by
``tests/integration/test_fallback_scp.py``.

pynetdicom 3.0 internals used (check them on upgrade): ``pynetdicom.dimse_messages`` calls
``NamedTemporaryFile`` by that module-level name from the DUL reader thread, whose ``assoc``
attribute is the association (we replace the name with a function choosing the folder for
our own AEs, and leaving every other pynetdicom SCP of the process as it was); the event's
``dataset_path`` is a Part 10 file with a file meta group length; the C-STORE handler and
``EVT_ABORTED`` run on the association's thread, ``EVT_CONN_CLOSE`` on the DUL thread.
``_config.STORE_RECV_CHUNKED_DATASET`` and ``_config.UNRESTRICTED_STORAGE_SERVICE`` are
process-wide settings of pynetdicom.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext, SSLSocket
from typing import IO, Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.transport import ThreadedAssociationServer
from ulid import ULID

from oxidicom_py.dicom import dimse
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.contexts import VERIFICATION, accepted_transfer_syntaxes, storage_sop_classes
from oxidicom_py.dicom.events import AssociationInfo, StoreResult
from oxidicom_py.dicom.negotiation import AcceptedContext
from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from oxidicom_py.net.protocol import AssociationHandler, InstanceSink

log = logging.getLogger("oxidicom_py.net")
_STORE_TIMEOUT = 600.0
CHUNK_SIZE = 1 << 20
"""Bytes of a received dataset read from pynetdicom's temporary file and handed to the sink at a time."""
TEMP_FILE_PREFIX = "pynetdicom-"
"""Temporary files are ``pynetdicom-*.part`` in the worker's own staging folder: a dead worker's
leftovers go with that folder."""

_listeners: weakref.WeakKeyDictionary[AE, PynetdicomListener] = weakref.WeakKeyDictionary()
"""Our AEs, for the temporary file factory (which sees the association, not us)."""


def _temporary_file(*args: Any, **kwargs: Any) -> IO[bytes]:
    """Replaces ``NamedTemporaryFile`` in ``pynetdicom.dimse_messages`` (called on the DUL thread
    when a C-STORE's dataset begins): our AEs' files go to their listener's folder."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    listener = _listeners.get(ae) if isinstance(ae, AE) else None
    if listener is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)  # someone else's SCP: as pynetdicom does it
    return listener._temporary_file(assoc)


def _use_chunked_datasets() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _temporary_file  # type: ignore[attr-defined,assignment]


def _dataset_offset(head: bytes) -> int:
    """Where the dataset begins in a Part 10 file starting with ``head`` (at least 144 bytes)."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise OSError("the received dataset's temporary file has no File Meta Information group length")
    return 144 + int.from_bytes(head[140:144], "little")


def _context_of(cx: Any) -> AcceptedContext:
    """An AcceptedContext from a pynetdicom context: a ``PresentationContext`` (its
    ``transfer_syntax`` is a list) or a ``PresentationContextTuple`` (a single UID string)."""
    ts = cx.transfer_syntax
    return AcceptedContext(cx.context_id, str(cx.abstract_syntax), str(ts if isinstance(ts, str) else ts[0]))


@dataclass(slots=True)
class _Open:
    """One established association: its handler, and whether a C-STORE is being stored."""

    handler: AssociationHandler
    info: AssociationInfo
    storing: int = 0
    closing: str | None = None
    """The association ended while an instance was being stored: ``closed`` waits for it."""


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
        temp_dir: Path | None = None,
    ) -> None:
        """``temp_dir``: where pynetdicom writes each dataset as it arrives; by default the
        staging folder of the files root ``on_established`` stores into (an
        :meth:`StorageStage.association <oxidicom_py.storage.ingest.StorageStage.association>`), else
        the system's temporary folder."""
        self.config = config
        self._on_established = on_established
        self.max_associations = max_associations
        self.temp_dir = temp_dir if temp_dir is not None else _staging_of(on_established)
        self._server: _AdoptedSocketServer | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[int, _Open] = {}
        self._temp_files: dict[int, set[str]] = {}
        """Temporary files of datasets being received, by association, not yet claimed by a C-STORE."""
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
        _listeners[ae] = self
        return ae

    async def start_on(self, sock: socket.socket, ssl: SSLContext | None = None) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        if self.config.strict:
            log.warning("OXIDICOM_SCP_STRICT is not enforced by the pynetdicom acceptor")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        _use_chunked_datasets()
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

    def _temporary_file(self, assoc: Any) -> IO[bytes]:
        """A file for a dataset about to arrive on ``assoc`` (on its DUL thread)."""
        prefix = TEMP_FILE_PREFIX
        try:
            f = tempfile.NamedTemporaryFile("wb", prefix=prefix, suffix=".part", dir=self.temp_dir, delete=False)  # noqa: SIM115
        except OSError as e:
            log.warning("cannot create a temporary file in %s (%s): using %s", self.temp_dir, e, tempfile.gettempdir())
            f = tempfile.NamedTemporaryFile("wb", prefix=prefix, suffix=".part", delete=False)  # noqa: SIM115
        with self._lock:
            self._temp_files.setdefault(id(assoc), set()).add(f.name)
        return f

    def _established(self, event: evt.Event) -> None:
        assoc = event.assoc
        contexts = {cx.context_id: _context_of(cx) for cx in assoc.accepted_contexts}
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
            self._open[id(assoc)] = _Open(handler, info)

    def _ended(self, event: evt.Event, outcome: str) -> None:
        """Released, aborted or disconnected (called up to three times per association)."""
        with self._lock:
            state = self._open.pop(id(event.assoc), None)
            leftovers = self._temp_files.pop(id(event.assoc), set())
            if state is not None and state.storing:
                state.closing = outcome  # the C-STORE under way closes it when done
                state = None
        for name in leftovers:  # datasets that never arrived whole
            with contextlib.suppress(OSError):
                os.unlink(name)
        if state is not None:
            handler = state.handler
            self._on_loop(lambda: handler.closed(outcome))

    def _c_store(self, event: evt.Event) -> int | Dataset:
        path = event.dataset_path  # the temporary file (None if pynetdicom kept the dataset in memory)
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        with self._lock:
            state = self._open.get(id(event.assoc))
            if name is not None:
                self._temp_files.get(id(event.assoc), set()).discard(name)
            if state is not None:
                state.storing += 1
        try:
            if state is None:
                return dimse.PROCESSING_FAILURE
            result = self._store(event, state, name)
        finally:
            if name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(name)
            if state is not None:
                with self._lock:
                    state.storing -= 1
                    closing = state.closing if not state.storing else None
                if closing is not None:
                    handler = state.handler
                    self._on_loop(lambda: handler.closed(closing))
        if not result.comment:
            return result.status
        status = Dataset()
        status.Status = result.status
        status.ErrorComment = result.comment
        return status

    def _store(self, event: evt.Event, state: _Open, name: str | None) -> StoreResult:
        req = event.request
        command = dimse.Command(
            command_field=dimse.C_STORE_RQ,
            message_id=int(req.MessageID),
            data_set_type=1,
            affected_sop_class=str(req.AffectedSOPClassUID),
            affected_sop_instance=str(req.AffectedSOPInstanceUID),
        )
        # event.context is a PresentationContextTuple: its transfer_syntax is one UID, not a list
        context = state.info.contexts.get(event.context.context_id) or _context_of(event.context)
        if name is None:
            source: IO[bytes] = req.DataSet
            source.seek(0)
            return self._stream(state.handler, command, context, source, len(req.DataSet.getbuffer()))
        try:
            source = open(name, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as e:
            return self._unreadable(state, command, context, e)
        with source:
            try:
                offset = _dataset_offset(source.read(144))
                size = os.fstat(source.fileno()).st_size
                source.seek(offset)
            except OSError as e:
                return self._unreadable(state, command, context, e)
            return self._stream(state.handler, command, context, source, max(0, size - offset))

    def _unreadable(self, state: _Open, command: dimse.Command, context: AcceptedContext, e: OSError) -> StoreResult:
        """pynetdicom's temporary file cannot be read: the instance is counted, and fails."""
        reason = f"cannot read the received dataset: {e.strerror or e}"
        log.error("instance not stored: %s", reason, extra={"association": state.info.ulid})
        self._on_loop(lambda: state.handler.begin_instance(command, context).abort(reason))
        return StoreResult(dimse.OUT_OF_RESOURCES, reason[:64])

    def _stream(
        self,
        handler: AssociationHandler,
        command: dimse.Command,
        context: AcceptedContext,
        source: IO[bytes],
        remaining: int,
    ) -> StoreResult:
        """Hand ``remaining`` bytes of ``source`` to a new sink, CHUNK_SIZE at a time, each on the
        loop (begin_instance with the first chunk, finish with the last: one loop call for
        instances up to CHUNK_SIZE); the reads happen here, on the association's thread."""
        sinks: list[InstanceSink] = []

        def step(chunk: bytes, last: bool) -> Any:
            if not sinks:
                sinks.append(handler.begin_instance(command, context))
            if chunk:
                sinks[0].write(memoryview(chunk))
            return sinks[0].finish() if last else None

        try:
            while True:
                chunk = source.read(min(CHUNK_SIZE, remaining))
                if not chunk and remaining:
                    raise OSError(f"the received dataset ended {remaining} bytes early")
                remaining -= len(chunk)
                result = self._on_loop(functools.partial(step, chunk, not remaining))
                if not remaining:
                    assert isinstance(result, StoreResult)
                    return result
        except Exception as e:
            log.error("storing an instance failed", exc_info=e)
            if sinks:
                with contextlib.suppress(Exception):
                    self._on_loop(functools.partial(sinks[0].abort, f"storage failure: {e}"))
            return StoreResult(dimse.OUT_OF_RESOURCES, "storage failure")


def _staging_of(on_established: Callable[..., Any]) -> Path | None:
    """The staging folder of the files root behind ``on_established`` (an StorageStage's method)."""
    files = getattr(getattr(on_established, "__self__", None), "files", None)
    staging = getattr(files, "staging", None)
    return Path(staging) if staging is not None else None
