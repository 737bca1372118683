"""Behind a TCP load balancer: the PROXY protocol v2 header gives the sender's own address to the
logs and the network allow-list; connections without one, or from outside the balancers'
networks, are dropped and counted. One test puts Debian's HAProxy (``send-proxy-v2``) in front."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest
from harness import RawScu, dataset_bytes, load_script, sop_of, storescu, wait_until
from peers import ServeProcess, free_port

from oxidicom_py.net.proxy_header import encode

pytestmark = pytest.mark.integration

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _env(db_uri: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_PROXY_PROTOCOL": "true",
        "OXIDICOM_PROXY_NETWORKS": "127.0.0.0/8",
        **extra,
    }


def _rows(db_uri: str) -> int:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pacsfiles_pacsfile WHERE fname NOT LIKE %s", ("%/org.fnndsc.%",)
        ).fetchone()
    return int(row[0]) if row else 0


def _closed_without_answer(port: int, data: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_the_header_names_the_sender_for_logs_and_the_allow_list(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=1, rows=32, cols=32)
    env = _env(db_uri, tmp_path, OXIDICOM_SCP_ALLOWED_NETWORKS="198.51.100.0/24")
    with ServeProcess(env, tmp_path) as rx:
        # a sender the balancer saw as 198.51.100.7 (allowed), though the connection comes from 127.0.0.1
        scu = RawScu(rx.port, [(1, MR, [EXPLICIT])], called="OXI", preamble=encode(("198.51.100.7", 40001)))
        assert scu.store(1, *sop_of(files[0]), dataset_bytes(files[0]))[0] == 0
        scu.release()
        accepted = wait_until(
            lambda: [line for line in rx.lines if str(line.get("msg", "")).startswith("association accepted")],
            10,
            what="the association's log line",
        )
        assert accepted[0]["peer"] == "198.51.100.7:40001"
        # one the balancer saw as 203.0.113.9: refused by the allow-list on its own address
        assert _closed_without_answer(rx.port, encode(("203.0.113.9", 5)))
        refused = wait_until(
            lambda: [line for line in rx.lines if "network that is not allowed" in str(line.get("msg"))],
            10,
            what="the allow-list's refusal",
        )
        assert refused[0]["peer"] == "203.0.113.9:5"
        # no header at all (a sender bypassing the balancer): dropped before any PDU is answered
        from harness import associate_rq

        assert _closed_without_answer(rx.port, associate_rq([(1, MR, [EXPLICIT])], called="OXI"))
        dropped = wait_until(
            lambda: [line for line in rx.lines if line.get("reason") == "proxy_header_invalid"],
            10,
            what="the dropped connection's log line",
        )
        assert "no PROXY protocol v2 signature" in dropped[0]["msg"] and dropped[0]["via"].startswith("127.0.0.1:")
    assert _rows(db_uri) == 1


def test_a_connection_from_outside_the_balancers_networks_is_dropped(tmp_path: Path, db_uri: str) -> None:
    with ServeProcess(_env(db_uri, tmp_path, OXIDICOM_PROXY_NETWORKS="192.0.2.0/24"), tmp_path) as rx:
        assert _closed_without_answer(rx.port, encode(("198.51.100.7", 40001)))
        dropped = wait_until(
            lambda: [line for line in rx.lines if line.get("reason") == "proxy_not_allowed"], 10, what="the drop"
        )
        assert "outside OXIDICOM_PROXY_NETWORKS" in dropped[0]["msg"]


def test_the_settings_name_what_is_missing() -> None:
    from oxidicom_py.settings import SettingsError, load

    with pytest.raises(SettingsError, match=r"^OXIDICOM_PROXY_NETWORKS: required"):
        load({"OXIDICOM_PROXY_PROTOCOL": "true"})
    with pytest.raises(SettingsError, match=r"^OXIDICOM_PROXY_PROTOCOL: not available"):
        load(
            {
                "OXIDICOM_PROXY_PROTOCOL": "true",
                "OXIDICOM_PROXY_NETWORKS": "10.0.0.0/8",
                "OXIDICOM_SCP_IMPLEMENTATION": "pynetdicom",
            }
        )


HAPROXY_CFG = """
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend dicom
    bind 127.0.0.1:{lb}
    default_backend receivers
backend receivers
    server r1 127.0.0.1:{rx} send-proxy-v2
"""


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (./test.sh installs it)")
def test_dcmtk_through_haproxy_send_proxy_v2(tmp_path: Path, db_uri: str) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=5, rows=32, cols=32)
    lb = free_port()
    with ServeProcess(_env(db_uri, tmp_path, OXIDICOM_SCP_ALLOWED_NETWORKS="127.0.0.1/32"), tmp_path) as rx:
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(lb=lb, rx=rx.port))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        balancer = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:

            def listening() -> bool:
                assert balancer.poll() is None, balancer.stdout.read() if balancer.stdout else ""
                try:
                    socket.create_connection(("127.0.0.1", lb), timeout=1).close()
                    return True
                except OSError:
                    return False

            wait_until(listening, 10, what="HAProxy listening")
            storescu(lb, files=files, calling="VIAHAPROXY")
            wait_until(lambda: _rows(db_uri) == 5, 30, what="the five instances registered")
        finally:
            balancer.terminate()
            balancer.wait(10)
        accepted = [line for line in rx.lines if str(line.get("msg", "")).startswith("association accepted")]
        assert accepted and all(line["calling_ae"] == "VIAHAPROXY" for line in accepted)
        assert not [line for line in rx.lines if str(line.get("reason", "")).startswith("proxy_")]
