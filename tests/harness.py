"""Test helpers: an in-process receiver on a background event loop, a raw DICOM client, peers' env.

Only 127.0.0.1 is ever a network target.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from oxidicom_py.dicom import pdu
from oxidicom_py.dicom.config import AcceptorConfig
from oxidicom_py.dicom.negotiation import AcceptancePolicy
from oxidicom_py.net.pynetdicom_scp import PynetdicomListener
from oxidicom_py.net.server import Listener
from oxidicom_py.record import PacsFileRow
from oxidicom_py.storage.ingest import StorageStage
from oxidicom_py.storage.writer import FilesRoot

PROJECT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
IMPLEMENTATIONS = ("asyncio", "pynetdicom")
"""The acceptors (OXIDICOM_SCP_IMPLEMENTATION): storage tests run against both."""


def peer_env(**extra: str) -> dict[str, str]:
    """Environment for DCMTK tools and Orthanc: Nagle off, or every C-STORE costs ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1", **extra}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def query(db_uri: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """The rows of one query, as dicts."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(db_uri, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def marker_values(db_uri: str, series_uid: str, key: str) -> list[str]:
    """Values of a series' marker rows of one kind (``NumberOfSeriesRelatedInstances``,
    ``OxidicomAttemptedPushCount``), oldest first."""
    rows = query(
        db_uri,
        'SELECT "SeriesDescription" AS value FROM pacsfiles_pacsfile WHERE "SeriesInstanceUID" = %s '
        'AND "ProtocolName" = %s AND fname LIKE %s ORDER BY id',
        series_uid,
        key,
        "SERVICES/PACS/org.fnndsc.oxidicom/%",
    )
    return [r["value"] for r in rows]


def instance_rows(db_uri: str, pacs: str | None = None) -> int:
    """Registered instances (not the series marker rows), of one calling AE title if given."""
    import psycopg

    where = "p.identifier = %s" if pacs is not None else "p.identifier <> 'org.fnndsc.oxidicom'"
    with psycopg.connect(db_uri, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id WHERE " + where,
            (pacs,) if pacs is not None else None,
        ).fetchone()
    assert row is not None
    return int(row[0])


def load_script(name: str) -> Any:
    """Import ``sample_data/<name>.py`` (not a package) as a module."""
    path = PROJECT / "sample_data" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sample_data_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Collector:
    """Storage's observer in tests: tells the receiver of every stored row and of each
    association's counts at its end."""

    def __init__(self, receiver: InProcessReceiver) -> None:
        self.receiver = receiver

    def validated(self, row: PacsFileRow) -> None:
        pass

    def stored(self, row: PacsFileRow) -> None:
        self.receiver._stored(row)

    def ended(self, outcome: str, counts: Any) -> None:
        self.receiver.outcomes.append(counts)

    def refused(self, series_uid: str, problem: str) -> None:
        pass


class InProcessReceiver:
    """The real listener and storage path on a background uvloop; registration collected in a list."""

    def __init__(
        self,
        files_root: Path,
        *,
        ae_title: str = "OXITEST",
        max_pdu: int = 131072,
        strict: bool = False,
        promiscuous: bool = False,
        uncompressed_only: bool = False,
        fsync: bool = False,
        artim: float = 30.0,
        max_associations: int = 16,
        ssl: Any = None,
        implementation: str = "asyncio",
        **access: Any,
    ) -> None:
        """``access``: AcceptorConfig's access fields (allowed_calling_aets, allowed_networks,
        check_called_aet, idle_timeout). ``ssl``: an ``ssl.SSLContext`` for a TLS listener.
        ``implementation``: the acceptor, as ``OXIDICOM_SCP_IMPLEMENTATION`` (``asyncio`` or
        ``pynetdicom``, the fallback), built as the service builds it."""
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, not {implementation!r}")
        self.implementation = implementation
        self.rows: list[PacsFileRow] = []
        self.outcomes: list[Any] = []
        self.files = FilesRoot(files_root, fsync=fsync)
        self.config = AcceptorConfig(
            ae_title,
            max_pdu,
            strict,
            AcceptancePolicy(promiscuous, uncompressed_only),
            artim_timeout=artim,
            **access,
        )
        self.max_associations = max_associations
        self.ssl = ssl
        self.loop = uvloop.new_event_loop()  # the loop production runs on
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def _observe(self, info: object) -> Collector:
        return Collector(self)

    def _stored(self, row: PacsFileRow) -> None:
        self.rows.append(row)

    def __enter__(self) -> InProcessReceiver:
        self._thread.start()

        async def start() -> int:
            self.ingest = StorageStage(self.files, None, self._observe)
            if self.implementation == "pynetdicom":
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((LOOPBACK, 0))
                sock.listen(64)
                self.listener: Listener | PynetdicomListener = PynetdicomListener(
                    self.config, self.ingest.association, max_associations=self.max_associations
                )
                _host, port = await self.listener.start_on(sock, ssl=self.ssl)
            else:
                self.listener = Listener(self.config, self.ingest.association, max_associations=self.max_associations)
                _host, port = await self.listener.start(LOOPBACK, 0, ssl=self.ssl)
            return port

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.listener.stop_accepting()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def stored(self) -> list[Path]:
        return sorted((self.files.root / "SERVICES").rglob("*.dcm"))

    def staged(self) -> list[Path]:
        return sorted(self.files.staging.iterdir())

    def idle(self) -> bool:
        return self.ingest.idle.is_set()


# -- a raw client, for what real peers never send ------------------------------------------


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    *,
    calling: str = "RAWSCU",
    called: str = "OXITEST",
    max_pdu: int = 16384,
    app_context: str = "1.2.840.10008.3.1.1.1",
) -> bytes:
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += item(0x10, app_context.encode())
    for cid, abstract, transfers in contexts:
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in transfers)
        body += item(0x20, bytes((cid, 0, 0, 0)) + sub)
    body += item(0x50, item(0x51, struct.pack(">L", max_pdu)) + item(0x52, b"1.2.3.4"))
    return struct.pack(">BxL", pdu.A_ASSOCIATE_RQ, len(body)) + body


def p_data(context_id: int, payload: bytes, *, command: bool, last: bool = True) -> bytes:
    return pdu.encode_p_data(context_id, payload, command=command, last=last)


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes, chunk: int = 0) -> None:
        if not chunk:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i : i + chunk])

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            part = self.sock.recv(n - len(out))
            if not part:
                raise ConnectionError("closed by the receiver")
            out += part
        return out

    def recv_pdu(self) -> tuple[int, bytes]:
        pdu_type, length = struct.unpack(">BxL", self.recv_exact(6))
        return pdu_type, self.recv_exact(length)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information group."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM", path
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


class RawScu(RawClient):
    """A minimal storage SCU on the raw client.

    Used where a test needs to hold an association open or read a response precisely:
    pynetdicom's SCU (3.0.4) sometimes loses a C-STORE-RSP that arrives within
    microseconds -- its reactor thread takes the message off the queue before ``send_c_store``
    waits for it ("Received unexpected C-STORE service message"), and the store then times out.
    """

    def __init__(
        self, port: int, contexts: list[tuple[int, str, list[str]]], *, preamble: bytes = b"", **kw: Any
    ) -> None:
        """``preamble``: bytes sent before the A-ASSOCIATE-RQ (a PROXY protocol header)."""
        super().__init__(port)
        self.send(preamble + associate_rq(contexts, **kw))
        pdu_type, self.ac = self.recv_pdu()
        assert pdu_type == pdu.A_ASSOCIATE_AC, pdu_type
        self.message_id = 0

    def store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> tuple[int, str]:
        """Send one C-STORE; return (status, error comment) of the response."""
        from oxidicom_py.dicom import dimse

        self.message_id += 1
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: sop_class,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: self.message_id,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0x0000,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
            }
        )
        self.send(p_data(context_id, command, command=True) + p_data(context_id, dataset, command=False))
        return self.read_store_status()

    def echo(self, context_id: int) -> int:
        """Send one C-ECHO (``context_id`` must be a Verification context); its response's status."""
        from oxidicom_py.dicom import dimse

        self.message_id += 1
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.1.1",
                dimse.COMMAND_FIELD: 0x0030,
                dimse.MESSAGE_ID: self.message_id,
                dimse.COMMAND_DATA_SET_TYPE: 0x0101,
            }
        )
        self.send(p_data(context_id, command, command=True))
        return self.read_store_status()[0]

    def read_store_status(self) -> tuple[int, str]:
        """The next C-STORE-RSP's (status, error comment)."""
        pdu_type, body = self.recv_pdu()
        assert pdu_type == pdu.P_DATA_TF, pdu_type
        values = _command_values(body[6:])
        status = int.from_bytes(values.get(0x0900, b"\xff\xff"), "little")
        return status, values.get(0x0902, b"").decode("ascii", "replace").strip(" \x00")

    def release(self) -> None:
        self.send(bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
        assert self.recv_pdu()[0] == pdu.A_RELEASE_RP
        self.close()


def _command_values(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(raw):
        _group, elem, length = struct.unpack_from("<HHL", raw, pos)
        out[elem] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def sop_of(path: Path) -> tuple[str, str]:
    """(SOPClassUID, SOPInstanceUID) of a Part 10 file."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def encode_dataset(ds: Any, implicit: bool = False) -> bytes:
    """A pydicom dataset as the bytes a sender puts in its P-DATA (little endian)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_implicit_VR = implicit
    buf.is_little_endian = True
    write_dataset(buf, ds)
    return buf.getvalue()


def storescu(
    port: int, files: list[Path], *, calling: str, called: str = "OXIDICOMTEST", args: tuple[str, ...] = ()
) -> None:
    """Push ``files`` with DCMTK's storescu (Nagle off) and fail the test if it fails."""
    import subprocess

    proc = subprocess.run(
        ["/usr/bin/storescu", "-aet", calling, "-aec", called, *args, LOOPBACK, str(port), *map(str, files)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def slow_inserts(db_uri: str, seconds: float) -> None:
    """Make every INSERT statement on the files table take ``seconds`` (the schema is created
    first): registration lags behind acknowledged files, as with an overloaded database.
    :func:`fast_inserts` undoes it."""
    import psycopg

    from oxidicom_py.registry.schema import ensure_schema_sync

    with psycopg.connect(db_uri, autocommit=True) as conn:
        ensure_schema_sync(conn)
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON pacsfiles_pacsfile FOR EACH STATEMENT EXECUTE FUNCTION slow()"
        )


def fast_inserts(db_uri: str) -> None:
    import psycopg

    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute("DROP TRIGGER slow ON pacsfiles_pacsfile")
