"""The receivers under test: how to start each one fresh, count what it received, stop it.

Every receiver gets an empty output folder, a free port, ``TCP_NODELAY=1`` in its environment
(DCMTK and Orthanc leave Nagle on otherwise) and its own session (process group), so that
stopping it also ends its children. Only 127.0.0.1 is ever addressed.

The ``-telemetry`` variants of oxidicom_py also get ``OXIDICOM_METRICS_PORT`` (on 127.0.0.1) and
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an OTLP sink of the bench (:mod:`telemetry_probe`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import procmon
import telemetry_probe

BENCH_DIR = Path(__file__).resolve().parent
DCMTK_STORESCP = "/usr/bin/storescp"
"""DCMTK by its real path: pynetdicom installs a storescp of its own into the venv's bin/."""
SENDER_AET = "BENCH"  # calling AE title of every storescu
START_TIMEOUT = 60.0
OTEL_EXPORT_EVERY_MS = 1000  # telemetry variants: OTEL_BSP_SCHEDULE_DELAY
STOP_TIMEOUT = 30.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """Our environment without any OXIDICOM_*, OTEL_* or PROMETHEUS_MULTIPROC_DIR setting of the
    caller's shell (telemetry is on only where a receiver asks for it), plus TCP_NODELAY=1."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OXIDICOM_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["TCP_NODELAY"] = "1"
    return env


def count_files(folder: Path, suffix: str = "") -> int:
    n = 0
    for _dirpath, _dirnames, filenames in os.walk(folder):
        n += sum(1 for f in filenames if f.endswith(suffix))
    return n


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal ``proc``'s process group (it was started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


VARIANTS_DIR = Path(__file__).with_name("variants")


@dataclass(frozen=True)
class ReceiverDef:
    key: str  # unique id, used by --only
    kind: str  # oxidicom | storescp (the ratios' baseline) | storescp-alt | storescp-fork | orthanc | pynetdicom
    storage: str  # tmpfs | disk
    label: str
    aet: str
    fsync: bool | None = None  # oxidicom only
    processes: int | None = None  # oxidicom only: OXIDICOM_LISTENER_PROCESSES (None: its default)
    big: bool = False  # also receives the big500m memory corpus
    # oxidicom only: "both" = /metrics (scraped by the bench) and OTLP traces to the bench's sink;
    # "metrics" or "traces" = one of them (to tell their costs apart); "" = neither
    telemetry: str = ""
    # oxidicom only: with a rules file whose one rule matches every series (OXIDICOM_RULES=bench/rules-ab.yaml,
    # no worker): what the trigger costs on the receive path (a job is deferred in each series' end)
    rules: bool = False
    # oxidicom only: a variant with parts removed (bench/variants/sitecustomize.py): "notrack" (no series
    # bookkeeping) or "nodb" (no registration either); what bench/profile.py subtracts
    variant: str = ""
    # storescp only: its options (default: the bench's historical baseline, "+xa -pdu 131072")
    options: tuple[str, ...] = ("+xa", "-pdu", "131072")

    @property
    def storage_label(self) -> str:
        if self.kind == "oxidicom" and self.fsync is False:
            return f"{self.storage} (fsync=false)"
        return self.storage

    @property
    def is_oxidicom(self) -> bool:
        return self.kind == "oxidicom"

    @property
    def registers(self) -> bool:
        """oxidicom_py writing rows (every variant but ``nodb``)."""
        return self.kind == "oxidicom" and self.variant != "nodb"

    @property
    def is_baseline(self) -> bool:
        return self.kind == "storescp"


# (id suffix, label suffix, ReceiverDef.telemetry) of oxidicom_py's telemetry variants (tmpfs only)
TELEMETRY_VARIANTS = (
    ("telemetry", "+telemetry", "both"),
    ("metrics", "+metrics only", "metrics"),
    ("traces", "+traces only", "traces"),
)


def receiver_defs(oxidicom_processes: list[int | None]) -> list[ReceiverDef]:
    defs: list[ReceiverDef] = []
    for p in oxidicom_processes:
        tag = "" if p is None else f"-p{p}"
        label = "oxidicom_py" if p is None else f"oxidicom_py P={p}"
        defs += [
            ReceiverDef(f"oxidicom{tag}-tmpfs", "oxidicom", "tmpfs", label, "ChRIS", True, p, big=True),
            *(
                ReceiverDef(
                    f"oxidicom{tag}-tmpfs-{suffix}",
                    "oxidicom",
                    "tmpfs",
                    f"{label} {what}",
                    "ChRIS",
                    True,
                    p,
                    telemetry=mode,
                )
                for suffix, what, mode in TELEMETRY_VARIANTS
            ),
            ReceiverDef(
                f"oxidicom{tag}-tmpfs-rules", "oxidicom", "tmpfs", f"{label} +rules", "ChRIS", True, p, rules=True
            ),
            *(
                ReceiverDef(
                    f"oxidicom{tag}-tmpfs-{variant}",
                    "oxidicom",
                    "tmpfs",
                    f"{label} without {what}",
                    "ChRIS",
                    True,
                    p,
                    variant=variant,
                )
                for variant, what in (("notrack", "series progress"), ("nodb", "registration"))
            ),
            ReceiverDef(f"oxidicom{tag}-disk", "oxidicom", "disk", label, "ChRIS", True, p),
            ReceiverDef(f"oxidicom{tag}-disk-nofsync", "oxidicom", "disk", label, "ChRIS", False, p),
        ]
    defs += [
        ReceiverDef("storescp-tmpfs", "storescp", "tmpfs", "storescp", "RECV", big=True),
        ReceiverDef("storescp-disk", "storescp", "disk", "storescp", "RECV"),
        ReceiverDef("storescp-fork-tmpfs", "storescp-fork", "tmpfs", "storescp --fork", "RECV", big=True),
        # the configurations a performance-minded user picks: defaults, and bit-preserving (+B:
        # the dataset written as received, no re-encoding), one process or one per association
        ReceiverDef("storescp-plain-tmpfs", "storescp-alt", "tmpfs", "storescp (defaults)", "RECV", options=()),
        ReceiverDef("storescp-B-tmpfs", "storescp-alt", "tmpfs", "storescp +B", "RECV", options=("+B",)),
        ReceiverDef("storescp-fork-B-tmpfs", "storescp-fork", "tmpfs", "storescp --fork +B", "RECV", options=("+B",)),
        ReceiverDef("orthanc-tmpfs", "orthanc", "tmpfs", "Orthanc", "ORTHANC", big=True),
        ReceiverDef("pynetdicom-tmpfs", "pynetdicom", "tmpfs", "pynetdicom raw", "PYSCP", big=True),
    ]
    return defs


@dataclass
class Database:
    """The sitting's embedded PostgreSQL; one fresh database per oxidicom_py run."""

    uri: str  # of the maintenance database "postgres"
    postmaster_pid: int
    counter: int = 0

    def uri_for(self, dbname: str) -> str:
        parts = urlsplit(self.uri)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def create(self) -> str:
        import psycopg

        self.counter += 1
        name = f"bench_{os.getpid()}_{self.counter}"
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Running:
    """A started receiver."""

    rdef: ReceiverDef
    proc: subprocess.Popen[bytes]
    port: int
    out_dir: Path
    run_dir: Path
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    http_port: int | None = None
    db_name: str | None = None
    db_uri: str | None = None
    metrics_port: int | None = None  # telemetry variants
    sink: telemetry_probe.OtlpSink | None = None  # telemetry variants; closed by stop() after the drain
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    log_levels: dict[str, int] = field(default_factory=dict)
    _reader: threading.Thread | None = None

    @property
    def root_pids(self) -> list[int]:
        return [self.proc.pid]

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- counting ----------------------------------------------------------------------------

    def count_received(self) -> dict[str, int]:
        """How many instances the receiver holds: files on disk, and rows or its own count.

        oxidicom_py: ``.dcm`` files and rows of the sending PACS (``SERVICES/PACS/BENCH``); rows
        of other "PACS" (the series-completion markers under ``org.fnndsc.oxidicom``) are
        reported separately by :meth:`count_other_rows` and not counted as instances.
        """
        kind = self.rdef.kind
        if kind == "oxidicom":
            files = count_files(self.out_dir / "SERVICES" / "PACS" / SENDER_AET, ".dcm")
            if not self.rdef.registers:
                return {"files": files}
            ((rows,),) = self._query(
                "SELECT count(*) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id"
                " WHERE p.identifier = %s",
                (SENDER_AET,),
            )
            return {"files": files, "rows": int(rows)}
        if kind == "orthanc":
            stats = self.orthanc_get("/statistics")
            return {"orthanc_instances": int(stats.get("CountInstances", -1))}
        return {"files": count_files(self.out_dir)}

    def count_other_rows(self) -> dict[str, int]:
        """oxidicom_py: rows per PACS identifier other than the sender's (e.g. completion markers)."""
        rows = self._query(
            "SELECT p.identifier, count(*) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id"
            " WHERE p.identifier <> %s GROUP BY p.identifier",
            (SENDER_AET,),
        )
        return {str(k): int(v) for k, v in rows}

    def count_batches(self) -> int:
        """oxidicom_py: registration transactions that inserted instance rows (each batch's rows
        share one creation_date, unique per batch)."""
        ((batches,),) = self._query(
            "SELECT count(DISTINCT f.creation_date) FROM pacsfiles_pacsfile f"
            " JOIN pacsfiles_pacs p ON p.id = f.pacs_id WHERE p.identifier = %s",
            (SENDER_AET,),
        )
        return int(batches)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """oxidicom_py: the rows of one query on this run's database."""
        import psycopg

        with psycopg.connect(self.db_uri or "", autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def count_jobs(self) -> int:
        """oxidicom_py with rules: the jobs its series ends deferred (the A/B is void without them)."""
        ((jobs,),) = self._query("SELECT count(*) FROM oxidicom_jobs")
        return int(jobs)

    def orthanc_get(self, path: str) -> dict[str, Any]:
        with _NO_PROXY.open(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            data = json.loads(r.read())
        return data if isinstance(data, dict) else {"value": data}

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> dict[str, Any]:
        """Stop it (oxidicom_py: SIGTERM and its drain; the others: SIGKILL); end its group."""
        result: dict[str, Any] = {}
        if self.proc.poll() is None:
            if self.rdef.is_oxidicom:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    result["exit_code"] = self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    result["exit_code"] = None
                    result["stop_error"] = f"did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; killed"
            kill_group(self.proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        else:
            result["exit_code"] = self.proc.returncode
            result["stop_error"] = f"had already exited with {self.proc.returncode}"
        kill_group(self.proc)  # leftovers (fork children, workers)
        if self._reader is not None:
            self._reader.join(5)
        if self.sink is not None:
            self.sink.close()  # after the drain, which exported the last spans
        result["log_levels"] = dict(self.log_levels)
        return result


def _read_json_lines(running: Running, ready: threading.Event, log_file: Path) -> None:
    """Drain oxidicom_py's stderr (it would block on a full pipe), spot the "ready" line."""
    assert running.proc.stderr is not None
    with log_file.open("wb") as log:
        for raw in running.proc.stderr:
            log.write(raw)
            line = raw.decode(errors="replace").rstrip()
            running.stderr_tail.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                running.log_levels["non-json"] = running.log_levels.get("non-json", 0) + 1
                continue
            if not isinstance(record, dict):
                continue
            level = str(record.get("level", "?"))
            running.log_levels[level] = running.log_levels.get(level, 0) + 1
            if record.get("msg") == "ready" and not ready.is_set():
                running.info = {
                    "processes": record.get("processes"),
                    "worker_pids": record.get("worker_pids"),
                    "address": record.get("address"),
                }
                ready.set()
    ready.set()  # process ended: unblock the waiter, which then sees it dead


def _popen(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, *, pipe_stderr: bool = False) -> Any:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.PIPE if pipe_stderr else subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def start(
    rdef: ReceiverDef,
    run_dir: Path,
    db: Database | None,
    oxidicom_src: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Running:
    """Start ``rdef`` into ``run_dir/out`` and wait until it accepts associations.

    ``oxidicom_src``: run oxidicom_py from that folder (it holds the ``oxidicom_py`` package)
    instead of the installed one, e.g. an exported commit for an A/B comparison.
    ``extra_env``: more variables for oxidicom_py (e.g. ``OXIDICOM_PACS_ADDRESS``; bench/observe.py).
    """
    out_dir = run_dir / "out"
    shutil.rmtree(run_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    port = free_port()
    env = base_env()
    log_path = run_dir / "receiver.log"
    running: Running
    if rdef.kind == "oxidicom":
        if db is None:
            raise RuntimeError("oxidicom_py needs the sitting's database")
        db_name = db.create()
        env.update(
            OXIDICOM_DB_CONNECTION=db.uri_for(db_name),
            OXIDICOM_LISTENER_ADDRESS="127.0.0.1",
            OXIDICOM_LISTENER_PORT=str(port),
            OXIDICOM_FILES_ROOT=str(out_dir),
            OXIDICOM_STATE_DIR=str(run_dir / "state"),
            OXIDICOM_CONSOLE_PORT="0",  # the receiver is measured, not the console (a process of its own)
        )
        if rdef.fsync is False:
            env["OXIDICOM_STORAGE_FSYNC"] = "false"
        if rdef.processes is not None:
            env["OXIDICOM_LISTENER_PROCESSES"] = str(rdef.processes)
        sink = None
        metrics_port = None
        if rdef.telemetry in ("both", "metrics"):
            metrics_port = free_port()
            env.update(OXIDICOM_METRICS_PORT=str(metrics_port), OXIDICOM_METRICS_ADDRESS="127.0.0.1")
        if rdef.telemetry in ("both", "traces"):
            sink = telemetry_probe.OtlpSink()
            env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
                # export every second instead of the SDK's 5 s, so that a run of a few seconds pays for its
                # exports inside the measurement (as a long-running receiver does continuously)
                OTEL_BSP_SCHEDULE_DELAY=str(OTEL_EXPORT_EVERY_MS),
            )
        if rdef.rules:
            env.update(OXIDICOM_RULES=str(Path(__file__).with_name("rules-ab.yaml")), OXIDICOM_PROCESS_IN_SERVE="false")
        env.update(extra_env or {})
        if rdef.variant:
            env["OXIDICOM_BENCH_VARIANT"] = rdef.variant
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(VARIANTS_DIR), env.get("PYTHONPATH")]))
        if oxidicom_src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(oxidicom_src), env.get("PYTHONPATH")]))
            cmd = [sys.executable, "-m", "oxidicom_py", "serve"]
        else:
            exe = Path(sys.executable).with_name("oxidicom-py")
            cmd = [str(exe) if exe.exists() else "oxidicom-py", "serve"]
        proc = _popen(cmd, env, run_dir, run_dir / "stdout.log", pipe_stderr=True)
        running = Running(
            rdef,
            proc,
            port,
            out_dir,
            run_dir,
            log_path,
            db_name=db_name,
            db_uri=db.uri_for(db_name),
            metrics_port=metrics_port,
            sink=sink,
        )
        ready = threading.Event()
        running._reader = threading.Thread(target=_read_json_lines, args=(running, ready, log_path), daemon=True)
        running._reader.start()
        try:
            if not ready.wait(START_TIMEOUT) or not running.alive() or not running.info:
                raise RuntimeError("oxidicom-py did not log 'ready': " + " | ".join(list(running.stderr_tail)[-5:]))
            if metrics_port is not None:  # the endpoint starts before 'ready'; make sure it answers
                telemetry_probe.fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        except BaseException:
            running.stop()
            db.drop(db_name)
            raise
        return running
    if rdef.kind in ("storescp", "storescp-alt", "storescp-fork"):
        cmd = [DCMTK_STORESCP, "-aet", rdef.aet, *rdef.options, "-od", str(out_dir)]
        if rdef.kind == "storescp-fork":
            cmd.append("--fork")
        proc = _popen([*cmd, str(port)], env, run_dir, log_path)
        running = Running(rdef, proc, port, out_dir, run_dir, log_path)
    elif rdef.kind == "pynetdicom":
        cmd = [sys.executable, str(BENCH_DIR / "pyscp.py"), str(out_dir), str(port)]
        proc = _popen(cmd, env, run_dir, log_path)
        running = Running(rdef, proc, port, out_dir, run_dir, log_path)
    elif rdef.kind == "orthanc":
        http_port = free_port()
        config = {
            "Name": "OXIBENCH",
            "StorageDirectory": str(out_dir),
            "IndexDirectory": str(out_dir),
            "HttpPort": http_port,
            "DicomPort": port,
            "DicomAet": rdef.aet,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "SaveJobs": False,
        }
        cfg = run_dir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        proc = _popen(["Orthanc", f"--logfile={run_dir / 'orthanc.log'}", str(cfg)], env, run_dir, log_path)
        running = Running(rdef, proc, port, out_dir, run_dir, log_path, http_port=http_port)
    else:
        raise ValueError(rdef.kind)
    try:
        if not procmon.wait_listening(port, START_TIMEOUT, running.alive):
            raise RuntimeError(f"{rdef.key} is not listening on {port} (exit {proc.poll()}); see {log_path}")
        if rdef.kind == "orthanc":
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    running.orthanc_get("/system")
                    break
                except OSError:
                    if time.monotonic() > deadline or not running.alive():
                        raise RuntimeError(f"Orthanc's REST API did not come up; see {run_dir}") from None
                    time.sleep(0.05)
    except BaseException:
        running.stop()
        raise
    return running
