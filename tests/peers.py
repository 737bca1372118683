"""Real processes for tests: Orthanc (Debian package) as the PACS, and ``oxidicom-py serve`` itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import LOOPBACK, peer_env, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Orthanc:
    """Orthanc in the foreground with its own config and storage in ``folder``; HTTP and DICOM on
    free ports (it binds all interfaces; tests only ever talk to 127.0.0.1)."""

    def __init__(self, folder: Path, aet: str = "OXITESTORTHANC", **config: Any) -> None:
        self.folder = folder
        self.aet = aet
        self.extra_config = config
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def __enter__(self) -> Orthanc:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "oxidicom-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomCheckModalityHost": False,
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "StorageCompression": False,
            "SaveJobs": False,
            "Plugins": [],
            **self.extra_config,
        }
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = self.folder / "orthanc.log"
        self.proc = subprocess.Popen(
            ["Orthanc", f"--logfile={log}", str(cfg)],
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, 30, what="Orthanc's REST API")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.folder / 'orthanc.log'}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 300) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            raw = rsp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def get(self, path: str) -> Any:
        return self.request("GET", path, timeout=10)

    def post_json(self, path: str, payload: Any, timeout: float = 300) -> Any:
        return self.request("POST", path, json.dumps(payload).encode(), timeout=timeout)

    def upload(self, files: Iterable[Path]) -> int:
        def one(p: Path) -> None:
            self.request("POST", "/instances", p.read_bytes(), timeout=60)

        paths = list(files)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, paths))
        return len(paths)

    def add_modality(self, name: str, aet: str, port: int) -> None:
        body = {"AET": aet, "Host": LOOPBACK, "Port": port}
        self.request("PUT", f"/modalities/{name}", json.dumps(body).encode(), timeout=10)

    def series_ids(self) -> dict[str, str]:
        """SeriesInstanceUID -> Orthanc series id."""
        out = {}
        for sid in self.get("/series"):
            out[self.get(f"/series/{sid}")["MainDicomTags"]["SeriesInstanceUID"]] = sid
        return out

    def store(self, modality: str, resources: list[str]) -> dict[str, Any]:
        return self.post_json(
            f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True, "Timeout": 120}
        )


class _LoggedProcess:
    """A ``python -m oxidicom_py COMMAND`` process with its JSON log lines collected, ready when
    it logs ``ready_message``."""

    ready_message = "ready"

    def __init__(self, env: dict[str, str], cwd: Path, command: list[str]) -> None:
        self.env = env
        self.cwd = cwd
        self.command = command
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oxidicom_py", *self.command],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_until(self._ready, 60, what=f"{self.ready_message!r} from oxidicom-py {self.command[0]}")
        except BaseException:
            self.stop()  # __exit__ is not called when __enter__ fails: never leak a process
            raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"msg": line.rstrip(), "level": "raw"})

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.command[0]} exited with {self.proc.returncode}: {self.lines[-5:]}")
        return any(line.get("msg") == self.ready_message for line in self.lines)

    def messages(self, level: str | None = None) -> list[dict[str, Any]]:
        return [line for line in self.lines if level is None or line.get("level") == level]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)  # every line the process wrote, its last ones included, is in self.lines
        return int(self.proc.returncode)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServeProcess(_LoggedProcess):
    """``python -m oxidicom_py serve`` as a user would run it, with JSON log lines collected."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = int(env.get("OXIDICOM_LISTENER_PORT") or free_port())
        full = {
            **os.environ,
            "OXIDICOM_LISTENER_ADDRESS": LOOPBACK,
            "OXIDICOM_LISTENER_PORT": str(self.port),
            **env,
        }
        super().__init__(full, cwd, ["serve"])

    def __enter__(self) -> ServeProcess:
        return super().__enter__()  # type: ignore[no-any-return]


class ProcessWorker(_LoggedProcess):
    """``python -m oxidicom_py process``: a real processing worker process, with its log lines."""

    ready_message = "processing worker ready"

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        super().__init__({**os.environ, **env}, cwd, ["process", *args])

    def __enter__(self) -> ProcessWorker:
        return super().__enter__()  # type: ignore[no-any-return]


class ConsoleProcess(_LoggedProcess):
    """``python -m oxidicom_py console`` on 127.0.0.1 and a free port; :attr:`url` without a slash."""

    ready_message = "console ready"

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        full = {**os.environ, "OXIDICOM_CONSOLE_ADDRESS": LOOPBACK, "OXIDICOM_CONSOLE_PORT": str(self.port), **env}
        super().__init__(full, cwd, ["console"])

    def __enter__(self) -> ConsoleProcess:
        return super().__enter__()  # type: ignore[no-any-return]
