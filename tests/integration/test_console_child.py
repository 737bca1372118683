"""``serve`` starts the console as a child process (``OXIDICOM_CONSOLE_PORT``; 0: none): it
answers from the receiver's database, it goes when ``serve`` stops, and a port already taken
is one clear error, not a restart loop."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from harness import LOOPBACK, load_script, storescu, wait_until
from peers import ServeProcess, free_port

pytestmark = pytest.mark.integration


def _env(db_uri: str, tmp: Path, port: int) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp / "files"),
        "OXIDICOM_SCP_AET": "OXICHILD",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_CONSOLE_ADDRESS": LOOPBACK,
        "OXIDICOM_CONSOLE_PORT": str(port),
    }


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_runs_the_console_and_stops_it(db_uri: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    files = load_script("synthetic").generate(tmp_path / "src", slices=3, rows=16, cols=16, seed=3)
    with ServeProcess(_env(db_uri, tmp_path, port), tmp_path) as rx:
        wait_until(lambda: _answers(url + "/api/health"), 30, what="the console child answering")
        storescu(rx.port, files, calling="CHILDPACS", called="OXICHILD")
        wait_until(
            lambda: httpx.get(url + "/api/series", timeout=5).json()["total"] == 1, 30, what="the series in the console"
        )
        ready = [line for line in rx.lines if line.get("msg") == "console ready"]
        assert ready and ready[0]["url"] == url + "/"
    assert rx.proc is not None and rx.proc.returncode == 0
    assert not _answers(url + "/api/health")  # gone with serve


def test_a_taken_console_port_is_one_error_and_reception_goes_on(db_uri: str, tmp_path: Path) -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        files = load_script("synthetic").generate(tmp_path / "src", slices=2, rows=16, cols=16, seed=4)
        with ServeProcess(_env(db_uri, tmp_path, port), tmp_path) as rx:
            wait_until(
                lambda: any("is not restarted" in str(line.get("msg")) for line in rx.lines),
                30,
                what="serve giving up on the console",
            )
            storescu(rx.port, files, calling="CHILDPACS", called="OXICHILD")  # receiving is untouched
    errors = [line["msg"] for line in rx.lines if line.get("level") == "error"]
    assert errors == [
        f"console not started: {LOOPBACK}:{port} is in use (another console?); set OXIDICOM_CONSOLE_PORT",
        "console exited and is not restarted (see its error above)",
    ]
    assert rx.proc is not None and rx.proc.returncode == 0


def test_no_console_with_port_0(db_uri: str, tmp_path: Path) -> None:
    with ServeProcess(_env(db_uri, tmp_path, 0), tmp_path) as rx:
        pass
    assert not any("console" in str(line.get("msg")) for line in rx.lines)
