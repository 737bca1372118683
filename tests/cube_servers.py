"""Real servers for the tests of current ChRIS's side, on 127.0.0.1 and free ports: Debian's
``redis-server`` (CUBE's Celery broker) and ``nats-server``, a real Celery worker standing in for
CUBE's (:mod:`cube_celery_app`), and a NATS subscriber that keeps every LONK message."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import LOOPBACK, wait_until
from peers import free_port

TESTS = Path(__file__).resolve().parent


def servers_missing() -> str | None:
    """Why these tests cannot run here, or None."""
    for tool in ("redis-server", "nats-server"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"needs {tool} (apt-get install redis-server nats-server)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class _Server:
    ready_text = ""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, what=f"{self.argv[0]} ready")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.argv[0]} exited: {self.log_path.read_text()[-2000:]}")
        return self.ready_text in self.log_path.read_text(errors="replace").split("--- start")[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        with self.log_path.open("a") as out:
            out.write("--- start\n")
        self.start()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Server):
    ready_text = "Ready to accept connections"

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        argv = [_tool("redis-server"), "--port", str(self.port), "--bind", LOOPBACK, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder), "--protected-mode", "yes"]
        super().__init__(argv, folder / "redis.log")


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RabbitServer(_Server):
    """Debian's RabbitMQ in the foreground, a node of its own (name, ports, data, cookie) in
    ``folder``; stopped with its whole process group, and the Erlang port mapper with it."""

    ready_text = "completed with"

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port, dist = free_port(), free_port()
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.port}//"
        (folder / "plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(folder),
            "RABBITMQ_NODENAME": f"oxidicomtest{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "ERL_EPMD_ADDRESS": LOOPBACK,
        }
        super().__init__([str(RABBITMQ_SERVER)], folder / "rabbitmq.log")

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        wait_until(self._ready, 60, what="RabbitMQ ready")

    def stop(self) -> None:
        if self.proc is None:
            return
        import signal

        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # the shell wrapper and the Erlang VM under it
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10, env=self.env)


class NatsServer(_Server):
    ready_text = "Server is ready"

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        super().__init__([_tool("nats-server"), "-a", LOOPBACK, "-p", str(self.port)], folder / "nats.log")


class CeleryWorker(_Server):
    """``celery worker`` on :mod:`cube_celery_app`, taking queue ``queue`` from ``broker``; each
    task it runs is a JSON line in :attr:`record`."""

    ready_text = "ready."

    def __init__(self, folder: Path, broker: str, queue: str = "main2") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.record = folder / "tasks.jsonl"
        self.record.touch()
        argv = [sys.executable, "-m", "celery", "-A", "cube_celery_app", "worker", "-Q", queue, "--pool", "solo"]
        argv += ["--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        argv += ["--without-heartbeat", "-n", f"cube-stand-in-{os.getpid()}@%h"]
        self.env = {**os.environ, "CUBE_TEST_BROKER": broker, "CUBE_TEST_RECORD": str(self.record)}
        self.env["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        super().__init__(argv, folder / "celery.log")

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=TESTS)
        wait_until(self._ready, 60, what="the Celery worker ready")

    def tasks(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


class LonkSubscriber:
    """Every message on ``{root}.>`` with its arrival time, from a thread of its own."""

    def __init__(self, address: str, root: str = "oxidicom") -> None:
        self.address = address
        self.root = root
        self.messages: list[tuple[str, bytes, float]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Any = None

    def __enter__(self) -> LonkSubscriber:
        import nats

        self._thread.start()

        async def connect() -> None:
            self._nc = await nats.connect(f"nats://{self.address}", connect_timeout=5)
            await self._nc.subscribe(f"{self.root}.>", cb=self._on_message)
            await self._nc.flush()

        asyncio.run_coroutine_threadsafe(connect(), self._loop).result(20)
        return self

    async def _on_message(self, msg: Any) -> None:
        self.messages.append((msg.subject, bytes(msg.data), time.monotonic()))

    def on(self, subject: str) -> list[bytes]:
        return [payload for s, payload, _t in list(self.messages) if s == subject]

    def __exit__(self, *exc: object) -> None:
        if self._nc is not None:
            asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
