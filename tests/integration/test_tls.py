"""DICOM TLS on the listener: server certificate, required client certificates, refusals that
leave the receiver serving, and start-up errors that name the variable.

A throwaway PKI is made with the ``openssl`` CLI (EC P-256 keys: fast to generate): a CA, a
server certificate for 127.0.0.1/localhost and a client certificate signed by that CA, plus a
self-signed client certificate no CA vouches for.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    InProcessReceiver,
    RawClient,
    associate_rq,
    dataset_bytes,
    instance_rows,
    load_script,
    peer_env,
    query,
    wait_until,
)
from peers import ServeProcess

from oxidicom_py.dicom import pdu
from oxidicom_py.net import tls
from oxidicom_py.settings import Settings, SettingsError, load

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # self-signed: no CA we trust signed it
    stranger_key: Path
    folder: Path


def _openssl(folder: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _signed(folder: Path, name: str, cn: str, ext: str | None = None) -> tuple[Path, Path]:
    _openssl(folder, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    extra: tuple[str, ...] = ()
    if ext is not None:
        (folder / f"{name}.ext").write_text(ext + "\n")
        extra = ("-extfile", f"{name}.ext")
    _openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-out", f"{name}.pem", "-days", "2", *extra),
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl(d, "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=OxiTest CA")
    server = _signed(d, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _signed(d, "client", "GOODPACS")
    _openssl(d, "req", "-x509", *_EC, "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2", "-subj", "/CN=X")
    return Pki(d / "ca.pem", *server, *client, d / "stranger.pem", d / "stranger.key", d)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return load_script("synthetic").generate(tmp_path_factory.mktemp("src"), slices=3, rows=16, cols=16)


def _context(pki: Pki, *, client_ca: bool = False) -> ssl.SSLContext:
    ctx = tls.server_context(
        Settings(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca if client_ca else None)
    )
    assert ctx is not None
    return ctx


def _storescu(port: int, files: list[Path], *tls_args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "TLSSCU",
            "-aec",
            "OXITEST",
            *map(str, tls_args),
            LOOPBACK,
            str(port),
            *map(str, files),
        ],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _with_cert(pki: Pki) -> tuple[str | Path, ...]:
    """storescu options: TLS with the CA-signed client certificate; verify the server against our CA."""
    return ("+tls", pki.client_key, pki.client_cert, "+cf", pki.ca)


def _anonymous(pki: Pki) -> tuple[str | Path, ...]:
    """storescu options: TLS without a client certificate; still verify the server."""
    return ("+tla", "+cf", pki.ca)


def _handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.getMessage().startswith("TLS handshake failed")]


def _read_to_eof(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """Everything the receiver sends until it closes the connection (bounded)."""
    out = b""
    while len(out) < limit:
        try:
            part = sock.recv(4096)
        except ConnectionResetError:
            break
        if not part:
            break
        out += part
    return out


def _tls_client(pki: Pki, port: int, *, cert: bool) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=LOOPBACK)


def _associate(sock: ssl.SSLSocket) -> int | None:
    """Send an A-ASSOCIATE-RQ; the answer's PDU type, or None when the receiver closed the connection
    (with TLS 1.3 a refused client certificate shows only after the handshake, on the first read)."""
    try:
        sock.sendall(associate_rq([(1, MR, [EXPLICIT])]))
        header = b""
        while len(header) < 6:
            part = sock.recv(6 - len(header))
            if not part:
                return None
            header += part
    except (ssl.SSLError, ConnectionError):
        return None
    return header[0]


# -- the in-process receiver with DCMTK ---------------------------------------------------------


@pytest.mark.integration
def test_storescu_over_tls_stores_the_exact_bytes(tmp_path: Path, pki: Pki, files: list[Path]) -> None:
    with InProcessReceiver(tmp_path / "rx", ssl=_context(pki)) as rx:
        proc = _storescu(rx.port, files, *_anonymous(pki))
        assert proc.returncode == 0, proc.stderr

        wait_until(lambda: len(rx.rows) == len(files), 10, what="every instance registered")
        assert sorted(dataset_bytes(p) for p in rx.stored()) == sorted(dataset_bytes(p) for p in files)
        plain = _storescu(rx.port, files[:1])  # the same port does not speak plain DICOM
        assert plain.returncode != 0
        assert len(rx.rows) == len(files)


@pytest.mark.integration
def test_client_certificates_required_and_verified(
    tmp_path: Path, pki: Pki, files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:

    caplog.set_level(logging.INFO, logger="oxidicom_py.net")
    with InProcessReceiver(tmp_path / "rx", ssl=_context(pki, client_ca=True)) as rx:
        good = _storescu(rx.port, files, *_with_cert(pki))
        assert good.returncode == 0, good.stderr
        wait_until(lambda: len(rx.rows) == len(files), 10, what="the good client's instances")

        refused = {
            "no client certificate": _storescu(rx.port, files, *_anonymous(pki)),
            "certificate from no trusted CA": _storescu(
                rx.port, files, "+tls", pki.stranger_key, pki.stranger_cert, "+cf", pki.ca
            ),
            "plain DICOM": _storescu(rx.port, files),
        }
        for why, proc in refused.items():
            assert proc.returncode != 0, f"{why}: storescu succeeded"
        wait_until(lambda: len(_handshake_failures(caplog)) == 3, 10, what="a warning per refused client")
        assert set(_handshake_failures(caplog)) == {
            "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
            "TLS handshake failed: CERTIFICATE_VERIFY_FAILED",
            "TLS handshake failed: WRONG_VERSION_NUMBER (a client not speaking TLS?)",
        }

        again = _storescu(rx.port, files, *_with_cert(pki))  # still serving after the refusals
        assert again.returncode == 0, again.stderr
        wait_until(lambda: len(rx.outcomes) == 2, 10, what="the second good association to end")
        assert len(rx.rows) == 2 * len(files)  # nothing from the refused clients
        assert len(rx.outcomes) == 2  # the refused never got as far as an association
        assert len(rx.stored()) == len(files)  # the second push overwrote the same instances

    tls_lines = [r for r in caplog.records if r.getMessage() == "TLS connection"]
    assert len(tls_lines) == 2
    assert {getattr(r, "peer_certificate", None) for r in tls_lines} == {"CN=GOODPACS"}
    assert all(getattr(r, "tls_version", "") in {"TLSv1.2", "TLSv1.3"} for r in tls_lines)


# -- the in-process receiver with raw and Python clients ----------------------------------------


def test_plain_client_on_a_tls_port_is_disconnected(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oxidicom_py.net")
    with InProcessReceiver(tmp_path / "rx", ssl=_context(pki)) as rx:
        plain = RawClient(rx.port)
        plain.send(associate_rq([(1, MR, [EXPLICIT])]))
        answer = _read_to_eof(plain.sock)  # at most a TLS alert record, then EOF
        plain.close()
        assert answer[:1] != bytes((pdu.A_ASSOCIATE_AC,))
        assert answer[:1] in (b"", b"\x15")  # nothing, or a TLS alert
        assert _handshake_failures(caplog) == [
            "TLS handshake failed: WRONG_VERSION_NUMBER (a client not speaking TLS?)"
        ]
        with _tls_client(pki, rx.port, cert=False) as good:  # the receiver is still there
            assert _associate(good) == pdu.A_ASSOCIATE_AC
        assert rx.rows == [] and rx.stored() == []


def test_a_client_that_never_handshakes_is_dropped_after_artim(tmp_path: Path, pki: Pki) -> None:
    with InProcessReceiver(tmp_path / "rx", ssl=_context(pki), artim=0.3) as rx:
        silent = RawClient(rx.port)
        with _tls_client(pki, rx.port, cert=False) as good:  # served while the silent one waits
            assert _associate(good) == pdu.A_ASSOCIATE_AC
        assert silent.closed_by_peer()  # the handshake timeout (ARTIM) closes it; RawClient's 10 s bound
        silent.close()


def test_python_client_without_a_certificate_is_refused_when_one_is_required(tmp_path: Path, pki: Pki) -> None:
    with InProcessReceiver(tmp_path / "rx", ssl=_context(pki, client_ca=True)) as rx:
        try:
            anonymous = _tls_client(pki, rx.port, cert=False)
        except (ssl.SSLError, ConnectionError):  # TLS 1.2: refused in the handshake
            pass
        else:  # TLS 1.3: the client's handshake completes before the receiver checks its certificate
            with anonymous:
                assert _associate(anonymous) is None
        with _tls_client(pki, rx.port, cert=True) as good:
            assert _associate(good) == pdu.A_ASSOCIATE_AC
        assert rx.rows == []


# -- settings -----------------------------------------------------------------------------------


def test_tls_off_by_default() -> None:
    assert tls.server_context(Settings()) is None
    assert not load({}).tls


def test_tls_settings_errors_name_the_variable(pki: Pki) -> None:
    d = pki.folder

    def error(**kw: Path) -> str:
        with pytest.raises(SettingsError) as e:
            tls.server_context(Settings(**kw))  # type: ignore[arg-type]
        return str(e.value)

    assert error(tls_cert=pki.server_cert, tls_key=pki.client_key).startswith("OXIDICOM_TLS_KEY: ")
    assert "does not match" in error(tls_cert=pki.server_cert, tls_key=pki.client_key)
    assert error(tls_cert=pki.server_key, tls_key=pki.server_key).startswith("OXIDICOM_TLS_CERT: ")
    assert error(tls_cert=pki.server_cert).startswith("OXIDICOM_TLS_CERT: ")  # no key anywhere
    assert error(tls_cert=pki.server_cert, tls_key=pki.server_cert).startswith("OXIDICOM_TLS_KEY: ")
    assert error(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.client_key).startswith(
        "OXIDICOM_TLS_CLIENT_CA: "
    )
    unreadable = d / "gone.key"
    assert error(tls_cert=pki.server_cert, tls_key=unreadable).startswith("OXIDICOM_TLS_KEY: ")

    encrypted = d / "encrypted.key"  # must fail, not prompt for a passphrase on the terminal
    _openssl(d, "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted))
    assert error(tls_cert=pki.server_cert, tls_key=encrypted).startswith("OXIDICOM_TLS_KEY: ")

    combined = d / "combined.pem"  # key inside the certificate file: no OXIDICOM_TLS_KEY needed
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    assert tls.server_context(Settings(tls_cert=combined)) is not None

    with pytest.raises(SettingsError, match=r"^OXIDICOM_TLS_CERT: "):
        load({"OXIDICOM_TLS_CERT": str(d / "missing.pem")})
    with pytest.raises(SettingsError, match=r"^OXIDICOM_TLS_KEY: "):
        load({"OXIDICOM_TLS_CERT": str(pki.server_cert), "OXIDICOM_TLS_KEY": str(d / "missing.key")})
    s = load({"OXIDICOM_TLS_CERT": str(pki.server_cert), "OXIDICOM_TLS_KEY": str(pki.server_key)})
    assert s.tls and tls.describe(s) == "on"


def test_serve_refuses_to_start_with_a_mismatched_key(tmp_path: Path, pki: Pki) -> None:
    env = {
        **peer_env(),
        "OXIDICOM_DB_CONNECTION": "postgresql://127.0.0.1:1/never",  # never reached: TLS is checked first
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_LISTENER_ADDRESS": LOOPBACK,
        "OXIDICOM_LISTENER_PORT": "1",  # never bound either
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_TLS_CERT": str(pki.server_cert),
        "OXIDICOM_TLS_KEY": str(pki.client_key),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "OXIDICOM_TLS_KEY: " in proc.stderr
    assert "ready" not in proc.stderr


# -- the real service ----------------------------------------------------------------------------


def _rows(db: str) -> int:
    return instance_rows(db)


@pytest.mark.integration
@pytest.mark.parametrize("implementation", ["asyncio", "pynetdicom"])
def test_serve_over_tls_registers(
    tmp_path: Path, db_uri: str, pki: Pki, files: list[Path], implementation: str
) -> None:

    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        "OXIDICOM_SCP_IMPLEMENTATION": implementation,
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_TLS_CERT": str(pki.server_cert),
        "OXIDICOM_TLS_KEY": str(pki.server_key),
        "OXIDICOM_TLS_CLIENT_CA": str(pki.ca),
    }
    with ServeProcess(env, tmp_path) as rx:
        ready = [line for line in rx.lines if line.get("msg") == "ready"]
        assert ready[0].get("tls") == "on, client certificates required"
        assert any(str(line.get("msg", "")).startswith("listening on tls://") for line in rx.lines)
        silent = RawClient(rx.port)  # connected, never handshakes: must not hold up anyone else
        try:
            assert _storescu(rx.port, files, *_anonymous(pki)).returncode != 0
            assert _storescu(rx.port, files).returncode != 0
            good = _storescu(rx.port, files, *_with_cert(pki))
            assert good.returncode == 0, good.stderr
        finally:
            silent.close()
        wait_until(lambda: _rows(db_uri) == len(files), 30, what="every row")
        if implementation == "asyncio":  # the association's record names the client certificate
            subjects = wait_until(
                lambda: query(db_uri, "SELECT tls_subject FROM oxidicom_associations WHERE stored > 0"),
                30,
                what="the association record",
            )
            assert subjects == [{"tls_subject": "CN=GOODPACS"}]
        stored = sorted((tmp_path / "files" / "SERVICES").rglob("*.dcm"))
        assert sorted(dataset_bytes(p) for p in stored) == sorted(dataset_bytes(p) for p in files)
    assert rx.proc is not None and rx.proc.returncode == 0


@pytest.mark.integration
def test_results_are_delivered_over_tls_with_a_client_certificate(tmp_path: Path, pki: Pki, files: list[Path]) -> None:
    """A destination with ``tls``: the server verified against ``ca``, our certificate presented;
    a destination whose certificate we cannot verify gets nothing."""
    import pydicom

    from oxidicom_py.delivery.store_scu import Outgoing, Target, client_context, send

    outgoing = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        outgoing.append(Outgoing(str(ds.SOPInstanceUID), str(ds.SOPClassUID), f))
    good = client_context({"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)})
    with InProcessReceiver(tmp_path / "files", ssl=_context(pki, client_ca=True)) as rx:
        acked: list[str] = []
        outcome = send(
            Target("OXITEST", LOOPBACK, rx.port, "GOODPACS", tls=good), outgoing, lambda s, _c: acked.append(s)
        )
        assert (
            outcome.error is None
            and not outcome.failed
            and sorted(acked) == sorted(o.sop_instance_uid for o in outgoing)
        )
        assert len(rx.rows) == len(files)
        untrusting = client_context({"ca": str(pki.stranger_cert)})  # a CA that did not sign the receiver's certificate
        refused = send(Target("OXITEST", LOOPBACK, rx.port, "GOODPACS", tls=untrusting), outgoing, lambda s, _c: None)
        assert refused.error is not None and refused.sent == 0
        assert len(rx.rows) == len(files)  # nothing more arrived
