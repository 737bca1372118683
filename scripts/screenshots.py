"""Screenshots of the console for the README: the series board and a job's page, taken in
Debian's chromium (Playwright) from a real ``serve`` on its embedded defaults (its own
PostgreSQL, the example rules, the console it starts) after two synthetic pushes.

    .venv/bin/python scripts/screenshots.py            # writes docs/screenshots/board.png and job.png
    .venv/bin/python scripts/screenshots.py --out /tmp/shots

Needs DCMTK's storescu and chromium (``./test.sh`` installs both). About a minute: the example
rules wait 10 s for a series to settle, then run the volume report and the burn-in.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PROJECT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"screenshots: timed out after {timeout:.0f} s waiting for {what}")


def _synthetic() -> Any:
    spec = importlib.util.spec_from_file_location("synthetic", PROJECT / "sample_data" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _push(port: int, calling: str, files: list[Path]) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    args = ["/usr/bin/storescu", "-aet", calling, "-aec", "ChRIS", LOOPBACK, str(port), *map(str, files)]
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=120)


def take(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oxidicom-shots-") as tmp_name:
        tmp = Path(tmp_name)
        listener, console = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDICOM_")}
        env.update(
            OXIDICOM_STATE_DIR=str(tmp / "state"),
            OXIDICOM_LISTENER_ADDRESS=LOOPBACK,
            OXIDICOM_LISTENER_PORT=str(listener),
            OXIDICOM_LISTENER_PROCESSES="1",
            OXIDICOM_CONSOLE_PORT=str(console),
            OXIDICOM_RULES=str(PROJECT / "examples" / "rules.yaml"),
        )
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "oxidicom_py", "serve"], env=env, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
        reader.start()

        def said(message: str) -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"screenshots: serve exited with {proc.returncode}: {lines[-5:]}")
            return any(_message(line) == message for line in list(lines))

        url = f"http://{LOOPBACK}:{console}"
        try:
            _wait(lambda: said("ready") and said("console ready"), 120, "serve and its console")
            synthetic = _synthetic()
            brain = synthetic.generate(tmp / "mr", slices=24, rows=64, cols=64, patient_id="DEMO-1", seed=11)
            _push(listener, "SCANNER", brain)
            burn = synthetic.generate(tmp / "burn", slices=4, rows=64, cols=64, patient_id="DEMO-2", seed=12)
            _push(listener, "BURNIN", burn)
            with httpx.Client(base_url=url, timeout=10) as http:
                jobs = _wait(
                    lambda: (
                        (j := http.get("/api/jobs").json()["items"])
                        and len(j) == 2
                        and all(x["state"] in ("succeeded", "failed") for x in j)
                        and j
                    ),
                    180,
                    "both example jobs to finish",
                )
            volume = next(j for j in jobs if j["rule"] == "volume")
            shots = [out / "board.png", out / "job.png"]
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 560})
                    page.goto(url + "/")
                    page.wait_for_selector("#board[data-ready='1']")
                    page.wait_for_selector("#live[data-state='live']")
                    page.screenshot(path=str(shots[0]), full_page=True)
                    page.set_viewport_size({"width": 1280, "height": 900})
                    page.goto(f"{url}/jobs/{volume['id']}")
                    page.wait_for_selector("#job[data-ready='1']")
                    page.screenshot(path=str(shots[1]), full_page=True)
                finally:
                    browser.close()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            reader.join(10)
    return shots


def _message(line: str) -> str | None:
    try:
        return str(json.loads(line).get("msg"))
    except ValueError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROJECT / "docs" / "screenshots", help="folder for the PNGs")
    args = parser.parse_args()
    for path in take(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
