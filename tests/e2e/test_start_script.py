"""The README's quick start: ``./start.sh`` on the embedded defaults (its own PostgreSQL, no
database setting) prints the console's URL, and the console it started shows what is pushed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from harness import LOOPBACK, PROJECT, load_script, storescu, wait_until
from peers import free_port

pytestmark = pytest.mark.integration


def _said(lines: list[str], message: str) -> bool:
    for line in list(lines):
        with contextlib.suppress(ValueError):
            if json.loads(line).get("msg") == message:
                return True
    return False


def test_start_sh_prints_the_console_url_and_the_board_shows_a_push(tmp_path: Path) -> None:
    listener, console = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OXIDICOM_")},
        "OXIDICOM_STATE_DIR": str(tmp_path / "state"),
        "OXIDICOM_LISTENER_PORT": str(listener),
        "OXIDICOM_LISTENER_ADDRESS": LOOPBACK,
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_CONSOLE_PORT": str(console),
    }
    proc = subprocess.Popen(
        [str(PROJECT / "start.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    url = f"http://{LOOPBACK}:{console}/"
    try:
        said = wait_until(lambda: [line for line in out if line.startswith("oxidicom_py console:")], 120, what="URL")
        assert said[0].split()[2] == url
        wait_until(lambda: _said(err, "ready") or proc.poll() is not None, 120, what="serve ready")
        wait_until(lambda: _said(err, "console ready") or proc.poll() is not None, 60, what="console ready")
        assert proc.poll() is None, err[-5:]
        files = load_script("synthetic").generate(tmp_path / "src", slices=3, rows=16, cols=16, seed=8)
        storescu(listener, files, calling="QUICKPACS", called="ChRIS")
        with httpx.Client(base_url=url, timeout=5) as http:
            wait_until(
                lambda: (page := http.get("api/series").json())["total"] == 1 and page["items"][0]["received"] == 3,
                60,
                what="the pushed series on the console",
            )
            board = http.get("")
            assert board.status_code == 200 and 'id="board"' in board.text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for reader in readers:
            reader.join(10)
    assert proc.returncode == 0, err[-5:]
