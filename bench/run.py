# ruff: noqa: RUF001
"""One sitting of the receive benchmark: the same corpora through several receivers.

    python bench/run.py [--quick] [--reps N] [--only GLOBS] [--corpora NAMES] [--assoc 1,4]
                        [--oxidicom-processes N[,M]] [--results DIR] [--regenerate]

See bench/README.md. Writes bench/results/latest.{md,json,png} plus timestamped copies and
prints the markdown table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent


if __name__ == "__main__":
    from venv_guard import reexec_in_venv

    reexec_in_venv(__file__, ("matplotlib", "psutil", "psycopg", "pydicom", "oxidicom_py"))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import fnmatch  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import corpora  # noqa: E402
import procmon  # noqa: E402
import receivers  # noqa: E402
import report  # noqa: E402
import telemetry_probe  # noqa: E402

TMPFS_ROOT = Path("/dev/shm/oxidicom-bench")
DISK_ROOT = Path("/var/tmp/oxidicom-bench")
CORPORA_ROOT = TMPFS_ROOT / "corpora"
SENDER_AET = receivers.SENDER_AET
SETTLE_S = 0.2  # after a receiver says it is ready, before the clock starts
COMMIT_POLL_S = 0.005
PG_CALIBRATION_S = 0.5  # PostgreSQL's CPU under the harness's polling alone, measured before each run
COMMIT_WAIT_S = 60.0  # after the last sender exited, how long rows may still take
SCRAPE_INTERVAL_S = 1.0  # telemetry runs: /metrics scraped this often (Prometheus' usual is 15 s, often 5 s)
QUICK_RECEIVERS = (
    "oxidicom*-tmpfs",
    "storescp-tmpfs",
    "storescp-fork-tmpfs",
    "storescp-fork-B-tmpfs",
    "orthanc-tmpfs",
    "pynetdicom-tmpfs",
)


def log(msg: str) -> None:
    print(msg, flush=True)


# -- senders ------------------------------------------------------------------------------------


@dataclass
class Sender:
    index: int
    files: list[Path]
    proc: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    exit_time: float | None = None
    cpu_s: float = 0.0

    def wait(self) -> None:
        _pid, status, usage = os.wait4(self.proc.pid, 0)
        self.exit_time = time.perf_counter()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code
        self.cpu_s = usage.ru_utime + usage.ru_stime

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


def chunked(items: list[Any], parts: int) -> list[list[Any]]:
    k = math.ceil(len(items) / parts)
    return [items[i * k : (i + 1) * k] for i in range(parts) if items[i * k : (i + 1) * k]]


def start_senders(chunks: list[list[Path]], aet: str, port: int, log_dir: Path) -> tuple[float, list[Sender]]:
    env = receivers.base_env()
    senders: list[Sender] = []
    t0 = time.perf_counter()
    for i, files in enumerate(chunks):
        log_path = log_dir / f"storescu-{i}.log"
        with log_path.open("wb") as out:
            cmd = ["/usr/bin/storescu", "-aet", SENDER_AET, "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
            proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        senders.append(Sender(i, files, proc, log_path))
    return t0, senders


def wait_senders(senders: list[Sender], timeout: float) -> bool:
    threads = [threading.Thread(target=s.wait, daemon=True) for s in senders]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if all(not t.is_alive() for t in threads):
        return True
    for s in senders:
        if s.exit_code is None:
            receivers.kill_group(s.proc)
    for t in threads:
        t.join(10)
    return False


# -- registration watcher (oxidicom_py) ----------------------------------------------------------


class CommitWatcher:
    """Polls the run's database every ~5 ms for newly visible rows and notes, per association
    (= a contiguous chunk of files), when the last of its instances became visible.

    Rows are matched to chunks by SOPInstanceUID: a stored path ends with
    ``-{SOPInstanceUID}.dcm`` (UIDs contain no ``-``). Rows outside ``SERVICES/PACS/BENCH/``
    (oxidicom_py's series-completion markers) are only counted. Each poll fetches only rows above the
    highest id below which every id was already seen, so rows of transactions that commit out of
    id order are not missed.
    """

    def __init__(self, uri: str, chunks: list[list[str]]) -> None:
        import psycopg

        self.conn = psycopg.connect(uri, autocommit=True)
        self.prefix = f"SERVICES/PACS/{SENDER_AET}/"
        self.chunk_of = {uid: c for c, uids in enumerate(chunks) for uid in uids}
        self.sizes = [len(uids) for uids in chunks]
        self.counts = [0] * len(chunks)
        self.done_at: list[float | None] = [None] * len(chunks)
        self.first_row_at: float | None = None
        self.unknown = 0
        self.other_rows = 0
        self.polls = 0
        self.error: str | None = None
        self._seen: set[int] = set()
        self._watermark = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def complete(self) -> bool:
        return all(t is not None for t in self.done_at)

    def _poll(self) -> None:
        t = time.perf_counter()
        rows = self.conn.execute(
            "SELECT id, fname FROM pacsfiles_pacsfile WHERE id > %s", (self._watermark,), prepare=True
        ).fetchall()
        self.polls += 1
        for row_id, fname in rows:
            if row_id in self._seen:
                continue
            self._seen.add(row_id)
            if not fname.startswith(self.prefix):
                self.other_rows += 1
                continue
            if self.first_row_at is None:
                self.first_row_at = t
            uid = fname.rsplit("/", 1)[-1].removesuffix(".dcm").rsplit("-", 1)[-1]
            c = self.chunk_of.get(uid)
            if c is None:
                self.unknown += 1
                continue
            self.counts[c] += 1
            if self.counts[c] == self.sizes[c]:
                self.done_at[c] = t
        while self._watermark + 1 in self._seen:
            self._watermark += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self.complete:
                started = time.perf_counter()
                self._poll()
                self._stop.wait(max(0.0, COMMIT_POLL_S - (time.perf_counter() - started)))
        except Exception as e:  # reported with the run
            self.error = repr(e)

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.complete

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def oxidicom_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("OXIDICOM_"):
            raise SystemExit(f"--oxidicom-env {pair!r}: expected OXIDICOM_NAME=VALUE")
        env[name] = value
    return env


# -- one run -----------------------------------------------------------------------------------


def wait_for_quiet(max_wait: float, threshold_cores: float = 0.25, window: float = 0.25) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the machine's busy CPU over ``window`` is below
    ``threshold_cores``; return (seconds waited, busy cores in the last window)."""
    start = time.monotonic()
    busy = 0.0
    while True:
        b0 = procmon.system_busy_seconds()
        time.sleep(window)
        busy = (procmon.system_busy_seconds() - b0) / window
        if busy < threshold_cores or time.monotonic() - start >= max_wait:
            return time.monotonic() - start, busy


@dataclass
class Sitting:
    args: argparse.Namespace
    run_root_tmpfs: Path
    run_root_disk: Path
    log_root: Path
    db: receivers.Database | None = None
    pg: Any = None
    pg_version: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    counter: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)


def run_one(
    sitting: Sitting, rdef: receivers.ReceiverDef, corpus: corpora.Corpus, assoc: int, rep: int
) -> dict[str, Any]:
    sitting.counter += 1
    run_id = f"{sitting.counter:03d}-{rdef.key}-{corpus.spec.name}-x{assoc}"
    root = sitting.run_root_tmpfs if rdef.storage == "tmpfs" else sitting.run_root_disk
    run_dir = root / run_id
    log_dir = sitting.log_root / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "run": run_id,
        "rep": rep,
        "corpus": corpus.spec.name,
        "memory_only": corpus.spec.memory_only,
        "associations": assoc,
        "receiver": rdef.key,
        "kind": rdef.kind,
        "label": rdef.label,
        "storage": rdef.storage_label,
        "instances": corpus.n,
        "bytes": corpus.total_bytes,
        "ok": False,
        "error": None,
    }
    chunks_idx = chunked(list(range(corpus.n)), assoc)
    file_chunks = [[corpus.files[i] for i in ch] for ch in chunks_idx]
    running: receivers.Running | None = None
    watcher: CommitWatcher | None = None
    scraper: telemetry_probe.Scraper | None = None
    senders: list[Sender] = []
    t_window_end: float | None = None
    try:
        running = receivers.start(
            rdef, run_dir, sitting.db, sitting.args.oxidicom_src, extra_env=oxidicom_env(sitting.args.oxidicom_env)
        )
        record["port"] = running.port
        if rdef.is_oxidicom:
            record["processes"] = running.info.get("processes")
        time.sleep(SETTLE_S)
        if rdef.registers:
            assert running.db_uri is not None
            watcher = CommitWatcher(running.db_uri, [[corpus.sop_uids[i] for i in ch] for ch in chunks_idx])
            watcher.start()
        record["quiet_wait_s"], record["busy_cores_before"] = wait_for_quiet(sitting.args.idle_wait)
        if running.metrics_port is not None:
            url = f"http://127.0.0.1:{running.metrics_port}/metrics"
            scraper = telemetry_probe.Scraper(url, SCRAPE_INTERVAL_S).start()
        pg_mon = None
        pg_idle_rate = 0.0
        if rdef.is_oxidicom and sitting.db is not None:
            # PostgreSQL's CPU while only the harness polls (every 5 ms), subtracted below
            calibration = procmon.TreeMonitor([sitting.db.postmaster_pid])
            calibration.start(sample=False)
            c0 = time.perf_counter()
            time.sleep(PG_CALIBRATION_S)
            pg_idle_rate = calibration.stop().cpu_s / (time.perf_counter() - c0)
            pg_mon = procmon.TreeMonitor([sitting.db.postmaster_pid])
            pg_mon.start(sample=False)
        mon = procmon.TreeMonitor(running.root_pids)
        mon.start()
        busy0 = procmon.system_busy_seconds()
        w0 = time.perf_counter()
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        timeout = min(900.0, 60.0 + corpus.n * 0.05 + corpus.total_bytes / 5e6)
        t0, senders = start_senders(file_chunks, rdef.aet, running.port, log_dir)
        finished = wait_senders(senders, timeout)
        t_end = max((s.exit_time or time.perf_counter()) for s in senders)
        wall = t_end - t0
        if watcher is not None:
            watcher.wait(COMMIT_WAIT_S)
        if scraper is not None:
            scraper.stop()
        usage = mon.stop()
        t_window_end = time.perf_counter()
        busy1 = procmon.system_busy_seconds()
        window = time.perf_counter() - w0
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        harness_cpu = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
        pg_cpu = pg_mon.stop().cpu_s if pg_mon is not None else None
        sender_cpu = sum(s.cpu_s for s in senders)
        n = corpus.n
        record.update(
            wall_s=wall,
            inst_per_s=n / wall,
            mb_per_s=corpus.total_bytes / wall / report.MB,
            cpu_s=usage.cpu_s,
            cpu_s_per_1k=usage.cpu_s / n * 1000,
            idle_rss_mb=usage.idle_rss_bytes / report.MB,
            peak_rss_mb=usage.peak_rss_bytes / report.MB,
            rss_increase_mb=(usage.peak_rss_bytes - usage.idle_rss_bytes) / report.MB,
            rss_samples=usage.samples,
            receiver_pids_seen=usage.pids_seen,
            sender_cpu_s=sender_cpu,
            sender_cpu_s_per_1k=sender_cpu / n * 1000,
            sender_exit_codes=[s.exit_code for s in senders],
            db_cpu_s=pg_cpu,
            db_cpu_s_per_1k=pg_cpu / n * 1000 if pg_cpu is not None else None,
            db_idle_cpu_s_per_s=pg_idle_rate if pg_cpu is not None else None,
            db_net_cpu_s_per_1k=max(0.0, pg_cpu - pg_idle_rate * window) / n * 1000 if pg_cpu is not None else None,
            total_cpu_s_per_1k=(usage.cpu_s + max(0.0, (pg_cpu or 0.0) - pg_idle_rate * window)) / n * 1000,
            system_busy_s=busy1 - busy0,
            harness_cpu_s=harness_cpu,
            window_s=window,
            other_cpu_s=(busy1 - busy0) - usage.cpu_s - sender_cpu - (pg_cpu or 0.0) - harness_cpu,
        )
        problems: list[str] = []
        if not finished:
            problems.append(f"senders did not finish within {timeout:.0f} s (killed)")
        bad = [s for s in senders if s.exit_code != 0]
        if bad:
            problems.append("storescu exit codes " + ",".join(str(s.exit_code) for s in senders) + f": {bad[0].tail()}")
        if watcher is not None:
            record["commit_latency_ms"] = [
                (done - s.exit_time) * 1000 if done is not None and s.exit_time is not None else None
                for done, s in zip(watcher.done_at, senders, strict=True)
            ]
            record["commit_polls"] = watcher.polls
            record["last_commit_after_t0_s"] = (
                max(watcher.done_at) - t0 if watcher.complete else None  # type: ignore[type-var]
            )
            if watcher.error:
                problems.append(f"database poll failed: {watcher.error}")
            if not watcher.complete:
                problems.append(
                    f"only {sum(watcher.counts)}/{n} rows visible {COMMIT_WAIT_S:.0f} s after the last sender exited"
                )
            if watcher.unknown:
                problems.append(f"{watcher.unknown} rows that match no sent SOPInstanceUID")
        counts = running.count_received()
        if rdef.kind == "orthanc":  # Orthanc answers after storing; allow its index a moment anyway
            deadline = time.monotonic() + 5
            while counts["orthanc_instances"] < n and time.monotonic() < deadline:
                time.sleep(0.1)
                counts = running.count_received()
        record["received"] = counts
        if rdef.is_oxidicom:
            record["other_rows"] = running.count_other_rows()
        if rdef.registers:
            record["batches"] = running.count_batches()
            record["rows_per_batch"] = n / record["batches"] if record["batches"] else None
            if rdef.rules:
                record["jobs"] = running.count_jobs()
                if not record["jobs"]:
                    problems.append("rules on, but no series end deferred a job")
        for what, got in counts.items():
            if got != n:
                problems.append(f"{what}: {got}/{n} ({n - got:+d} lost)" if got < n else f"{what}: {got}/{n}")
        if scraper is not None:
            assert running.metrics_port is not None
            problems += check_metrics(record, scraper, running.metrics_port, n)
        if problems:
            record["error"] = "; ".join(problems)
        else:
            record["ok"] = True
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        for s in senders:
            if s.proc.returncode is None:
                receivers.kill_group(s.proc)
        if watcher is not None:
            watcher.close()
        if running is not None:
            stop = running.stop()
            record["receiver_exit"] = stop
            if rdef.is_oxidicom and stop.get("exit_code") not in (0, None) and record["ok"]:
                record.setdefault("warnings", []).append(f"oxidicom-py exited {stop.get('exit_code')} after SIGTERM")
            errors = stop.get("log_levels", {}).get("error", 0) + stop.get("log_levels", {}).get("critical", 0)
            if errors:
                record.setdefault("warnings", []).append(f"{errors} error lines in the receiver log")
            if running.db_name and sitting.db is not None:
                with contextlib.suppress(Exception):
                    sitting.db.drop(running.db_name)
            with contextlib.suppress(OSError):
                shutil.copy(running.log_path, log_dir / "receiver.log")
            if running.sink is not None:  # after stop(): the drain exported the last spans
                trouble = check_spans(record, running.sink, len(senders), t_window_end)
                if trouble:
                    record["ok"] = False
                    record["error"] = "; ".join(filter(None, [record.get("error"), trouble]))
            if (run_dir / "orthanc.log").exists():
                with contextlib.suppress(OSError):
                    shutil.copy(run_dir / "orthanc.log", log_dir / "orthanc.log")
        shutil.rmtree(run_dir, ignore_errors=True)
        if rdef.storage == "disk":
            os.sync()  # no write-back of this run's files during the next run
        if record["ok"] and not record.get("warnings"):
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            record["logs"] = str(log_dir)
    return record


# -- telemetry checks (the -telemetry variants) -------------------------------------------------


def check_metrics(record: dict[str, Any], scraper: telemetry_probe.Scraper, port: int, n: int) -> list[str]:
    """One more scrape after the measurement: oxidicom_instances_stored_total must be ``n``."""
    scrapes = scraper.scrapes
    ok = [s for s in scrapes if s.error is None]
    info: dict[str, Any] = record.setdefault("telemetry", {})
    info.update(
        scrape_interval_s=SCRAPE_INTERVAL_S,
        scrapes=len(scrapes),
        scrape_errors=[s.error for s in scrapes if s.error][:5],
        scrape_ms_median=report.percentile([s.seconds * 1000 for s in ok], 50),
        scrape_ms_max=max((s.seconds * 1000 for s in ok), default=None),
        scrape_bytes=ok[-1].size if ok else None,
    )
    problems: list[str] = []
    if len(ok) < len(scrapes):
        problems.append(f"{len(scrapes) - len(ok)}/{len(scrapes)} /metrics scrapes failed: {info['scrape_errors'][0]}")
    try:
        samples = telemetry_probe.parse_metrics(telemetry_probe.fetch(f"http://127.0.0.1:{port}/metrics").decode())
    except Exception as e:
        return [*problems, f"final /metrics scrape failed: {e!r}"]
    stored = telemetry_probe.sample_sum(samples, "oxidicom_instances_stored_total", calling_ae=SENDER_AET)
    received = telemetry_probe.sample_sum(samples, "oxidicom_received_bytes_total", calling_ae=SENDER_AET)
    associations = telemetry_probe.sample_sum(samples, "oxidicom_associations_total", calling_ae=SENDER_AET)
    batches = telemetry_probe.sample_sum(samples, "oxidicom_registration_batch_seconds_count")
    info.update(
        instances_stored_total=stored,
        received_bytes_total=received,
        associations_total=associations,
        registration_batches=batches,
    )
    if stored != n:
        problems.append(
            f"/metrics says oxidicom_instances_stored_total{{calling_ae={SENDER_AET!r}}} = {stored}, sent {n}"
        )
    if received != record["bytes"]:
        # dataset bytes exclude the file meta the corpus files carry: only noted
        info["received_bytes_vs_corpus_bytes"] = (received or 0) / record["bytes"]
    return problems


def check_spans(
    record: dict[str, Any], sink: telemetry_probe.OtlpSink, associations: int, t_window_end: float | None
) -> str | None:
    """After the receiver stopped: the sink must have received the association spans and batch spans."""
    from oxidicom_py.telemetry import tracing

    posts = sink.snapshot()
    spans, bad = telemetry_probe.decode_spans(posts)
    by_name: dict[str, int] = {}
    for s in spans:
        by_name[s.name] = by_name.get(s.name, 0) + 1
    info: dict[str, Any] = record.setdefault("telemetry", {})
    info.update(
        otlp_requests=len(posts),
        otlp_requests_in_window=sum(1 for p in posts if t_window_end is not None and p.t <= t_window_end),
        otlp_bytes=sum(len(p.body) for p in posts),
        otlp_undecodable=bad,
        spans=by_name,
    )
    problems = []
    if bad:
        problems.append(f"{bad} OTLP request(s) not decodable")
    got = by_name.get(tracing.ASSOCIATION, 0)
    if got != associations:
        problems.append(f"OTLP sink got {got} {tracing.ASSOCIATION!r} spans, expected {associations}")
    if not by_name.get(tracing.REGISTRATION_BATCH):
        problems.append(f"OTLP sink got no {tracing.REGISTRATION_BATCH!r} spans")
    return "; ".join(problems) or None


# -- sitting -----------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        for line in (out.stdout + out.stderr).splitlines():
            if line.strip():
                return line.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def machine_facts(pg_version: str | None, oxidicom_src: Path | None = None) -> dict[str, Any]:
    from importlib.metadata import version

    cpu_model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    git = _first_line(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"])
    if oxidicom_src is not None:
        git = f"from {oxidicom_src}; checkout {git}"
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "dcmtk": _first_line(["/usr/bin/storescp", "--version"]).strip("$ "),
        "orthanc": _first_line(["Orthanc", "--version"]).removeprefix("Orthanc ").strip(),
        "pynetdicom": version("pynetdicom"),
        "pydicom": version("pydicom"),
        "psycopg": version("psycopg"),
        "uvloop": version("uvloop"),
        "postgresql": pg_version or "not started",
        "oxidicom_py": f"{version('oxidicom_py')} ({git})",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tmpfs": str(TMPFS_ROOT),
        "disk": str(DISK_ROOT),
    }


def cleanup_stale() -> None:
    """Kill what a killed earlier sitting left running (receivers live in their own sessions) and
    remove its run folders: anything whose command line or cwd lies in a runs-PID folder of a dead PID."""
    import psutil

    stale: list[Path] = []
    for root in (TMPFS_ROOT, DISK_ROOT):
        for folder in root.glob("runs-*"):
            pid = folder.name.removeprefix("runs-")
            if pid.isdigit() and int(pid) != os.getpid() and procmon.read_stat(int(pid)) is None:
                stale.append(folder)
    if not stale:
        return
    prefixes = tuple(str(f) for f in stale)
    killed = 0
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        text = " ".join(proc.info.get("cmdline") or []) + " " + (proc.info.get("cwd") or "")
        if any(p in text for p in prefixes) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    log(f"cleaned up after an earlier sitting: {len(stale)} run folder(s), {killed} process(es) killed")


def start_database(sitting: Sitting) -> None:
    import psycopg

    from oxidicom_py.registry.embedded import EmbeddedPostgres, stop_stale_servers

    DISK_ROOT.mkdir(parents=True, exist_ok=True)
    stopped = stop_stale_servers(DISK_ROOT)
    if stopped:
        log(f"stopped {stopped} PostgreSQL server(s) left behind by an earlier sitting")
    for old in DISK_ROOT.glob("pg-*"):
        pid = old.name.removeprefix("pg-")
        if pid.isdigit() and not procmon.read_stat(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    pg = EmbeddedPostgres(DISK_ROOT / f"pg-{os.getpid()}" / "pgdata")
    sitting.pg = pg
    t = time.monotonic()
    uri = pg.start()
    pid = pg.pid
    if pid is None:
        raise RuntimeError("embedded PostgreSQL has no postmaster")
    sitting.db = receivers.Database(uri, pid)
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    sitting.pg_version = str(row[0]) if row else "?"
    log(f"embedded PostgreSQL {sitting.pg_version} ready in {time.monotonic() - t:.1f} s ({pg.pgdata})")


def stop_database(sitting: Sitting) -> None:
    if sitting.pg is None:
        return
    with contextlib.suppress(Exception):
        sitting.pg.stop()
        log("embedded PostgreSQL stopped")
    shutil.rmtree(sitting.pg.pgdata.parent, ignore_errors=True)
    sitting.pg = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Run the receive benchmark: corpora x association counts x receivers, interleaved.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep, small corpora, tmpfs receivers only")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated receiver ids or globs, e.g. 'oxidicom*,storescp-tmpfs' (see --list)",
    )
    p.add_argument("--corpora", default=None, help=f"comma-separated subset of {','.join(corpora.ORDER)}")
    p.add_argument("--assoc", default="1,4", help="association counts (default 1,4); big500m always uses 1")
    p.add_argument(
        "--oxidicom-processes",
        default=None,
        help="OXIDICOM_LISTENER_PROCESSES for oxidicom_py (default: its own default, = CPUs);"
        " a comma-separated list gives one set of rows per value",
    )
    p.add_argument(
        "--oxidicom-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an OXIDICOM_* setting for every oxidicom_py receiver (repeatable), e.g. OXIDICOM_DB_LINGER_MS=50",
    )
    p.add_argument(
        "--oxidicom-src",
        type=Path,
        default=None,
        help="run oxidicom_py from this folder (holding the oxidicom_py package, e.g. an exported commit:"
        " git archive HEAD oxidicom_py | tar -x -C DIR) instead of the installed one",
    )
    p.add_argument("--results", type=Path, default=HERE / "results", help="output folder (default bench/results)")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=3.0,
        help="before each run, wait up to this many seconds for the machine to be quiet (<0.25 core busy;"
        " default 3; 0 = never wait)",
    )
    p.add_argument("--regenerate", action="store_true", help="regenerate the corpora even if present")
    p.add_argument("--list", action="store_true", help="list receiver ids and corpora, then exit")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if not 1 <= args.reps <= 20:
        p.error("--reps must be between 1 and 20")
    try:
        args.assoc_list = sorted({int(x) for x in args.assoc.split(",") if x.strip()})
    except ValueError:
        p.error("--assoc: comma-separated integers")
    if not args.assoc_list or not all(1 <= a <= 16 for a in args.assoc_list):
        p.error("--assoc: values between 1 and 16")
    procs: list[int | None] = [None]
    if args.oxidicom_processes:
        try:
            procs = [int(x) for x in args.oxidicom_processes.split(",") if x.strip()]
        except ValueError:
            p.error("--oxidicom-processes: comma-separated integers")
        if not procs or not all(1 <= x <= 64 for x in procs):
            p.error("--oxidicom-processes: values between 1 and 64")
    args.procs = procs
    if args.oxidicom_src is not None:
        args.oxidicom_src = args.oxidicom_src.resolve()
        if not (args.oxidicom_src / "oxidicom_py" / "__init__.py").is_file():
            p.error(f"--oxidicom-src: {args.oxidicom_src} holds no oxidicom_py package")
    specs = corpora.QUICK if args.quick else corpora.FULL
    names = [c.strip() for c in (args.corpora or ",".join(corpora.ORDER)).split(",") if c.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        p.error(f"--corpora: unknown {unknown}; choose from {list(corpora.ORDER)}")
    args.specs = [specs[n] for n in corpora.ORDER if n in names]
    defs = receivers.receiver_defs(procs)
    patterns = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    if patterns is None and args.quick:
        patterns = list(QUICK_RECEIVERS)
    if patterns:
        chosen = [d for d in defs if any(fnmatch.fnmatchcase(d.key, pat) for pat in patterns)]
        missing = [pat for pat in patterns if not any(fnmatch.fnmatchcase(d.key, pat) for d in defs)]
        if missing:
            p.error(f"--only: {missing} match no receiver; ids: {[d.key for d in defs]}")
        defs = chosen
    else:  # the variants with parts removed are for bench/profile.py: only when named
        defs = [d for d in defs if not d.variant]
    args.defs = defs
    if args.list:
        for d in receiver_defs_all(procs):
            print(f"{d.key:32} {d.label} ({d.storage_label}){'  [big500m]' if d.big else ''}")
        for n in corpora.ORDER:
            print(f"{n:32} {specs[n].description}")
        sys.exit(0)
    return args


def receiver_defs_all(procs: list[int | None]) -> list[receivers.ReceiverDef]:
    return receivers.receiver_defs(procs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    started_utc = dt.datetime.now(dt.UTC)
    stamp = started_utc.strftime("%Y%m%dT%H%M%SZ")
    missing = [t for t in ("storescu", "storescp", "Orthanc") if shutil.which(t) is None]
    need = {"storescp", "storescp-alt", "storescp-fork", "orthanc"} & {d.kind for d in args.defs}
    if "storescu" in missing or any(
        (k.startswith("storescp") and "storescp" in missing) or (k == "orthanc" and "Orthanc" in missing) for k in need
    ):
        sys.exit(f"missing tools: {missing} (apt-get install -y dcmtk orthanc)")

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sitting = Sitting(
        args,
        TMPFS_ROOT / f"runs-{os.getpid()}",
        DISK_ROOT / f"runs-{os.getpid()}",
        TMPFS_ROOT / "logs" / stamp,
    )
    skipped: list[str] = []
    specs = list(args.specs)
    if any(s.kind == "real" for s in specs):
        ok, why = corpora.real_samples_available()
        if not ok:
            skipped.append(f"real576: sample data not available ({why})")
            specs = [s for s in specs if s.kind != "real"]
    if not specs or not args.defs:
        sys.exit("nothing to run (check --corpora / --only)")
    log(
        f"sitting {stamp}: {len(args.defs)} receivers ({', '.join(d.key for d in args.defs)}),"
        f" corpora {', '.join(s.name for s in specs)}, assoc {args.assoc_list}, {args.reps} rep(s)"
    )
    try:
        cleanup_stale()
        corpus_map = corpora.ensure(specs, CORPORA_ROOT, regenerate=args.regenerate, log=log)
        if any(d.is_oxidicom for d in args.defs):
            start_database(sitting)
        sitting.machine = machine_facts(sitting.pg_version, args.oxidicom_src)
        plan: list[tuple[int, corpora.Corpus, int, receivers.ReceiverDef]] = []
        for rep in range(1, args.reps + 1):
            for spec in specs:
                corpus = corpus_map[spec.name]
                for assoc in [1] if spec.memory_only else args.assoc_list:
                    for d in args.defs:
                        if spec.memory_only and not d.big:
                            continue
                        plan.append((rep, corpus, assoc, d))
        log(f"{len(plan)} runs planned")
        t_runs = time.monotonic()
        for i, (rep, corpus, assoc, d) in enumerate(plan, 1):
            rec = run_one(sitting, d, corpus, assoc, rep)
            sitting.runs.append(rec)
            elapsed = time.monotonic() - t_runs
            eta = elapsed / i * (len(plan) - i)
            head = (
                f"[{i:3d}/{len(plan)} {elapsed / 60:4.1f}m eta {eta / 60:4.1f}m] rep {rep} {corpus.spec.name} x{assoc}"
            )
            head += f" {d.key}"
            if rec["ok"]:
                extra = ""
                if rec.get("commit_latency_ms"):
                    lat = [x for x in rec["commit_latency_ms"] if x is not None]
                    extra = f", release->last row max {max(lat):.1f} ms" if lat else ""
                if rec.get("rows_per_batch"):
                    extra = f", {rec['rows_per_batch']:.0f} rows/batch" + extra
                if rec.get("db_net_cpu_s_per_1k") is not None:
                    extra = f", incl. PG {rec['total_cpu_s_per_1k']:.3f} s/1k" + extra
                log(
                    f"{head}: ok {corpus.n}/{corpus.n} in {rec['wall_s']:.2f} s = {rec['inst_per_s']:,.0f} inst/s,"
                    f" {rec['mb_per_s']:,.0f} MB/s, cpu {rec['cpu_s_per_1k']:.3f} s/1k,"
                    f" rss {rec['idle_rss_mb']:.0f}->{rec['peak_rss_mb']:.0f} MB{extra}"
                    + (f" (warnings: {'; '.join(rec['warnings'])})" if rec.get("warnings") else "")
                )
            else:
                log(f"{head}: FAILED: {rec['error']} (logs: {rec.get('logs')})")
    except KeyboardInterrupt:
        log("interrupted: writing what was measured so far")
    finally:
        stop_database(sitting)
        shutil.rmtree(sitting.run_root_tmpfs, ignore_errors=True)
        shutil.rmtree(sitting.run_root_disk, ignore_errors=True)
        with contextlib.suppress(OSError):
            sitting.log_root.rmdir()  # only if no run left logs behind
    if not sitting.runs:
        log("no runs completed")
        return 1
    doc = build_doc(sitting, args, specs, corpus_map, skipped, started_utc, time.monotonic() - started)
    paths = report.write_all(doc, args.results, stamp)
    print()
    print(report.markdown(doc))
    log(f"wrote {', '.join(str(p) for p in paths.values())} (+ {stamp}.* copies)")
    failed = sum(1 for r in sitting.runs if not r["ok"])
    return 1 if failed else 0


def build_doc(
    sitting: Sitting,
    args: argparse.Namespace,
    specs: list[corpora.CorpusSpec],
    corpus_map: dict[str, corpora.Corpus],
    skipped: list[str],
    started_utc: dt.datetime,
    duration: float,
) -> dict[str, Any]:
    runs = sitting.runs
    summary = report.aggregate(runs)
    other = [r["other_cpu_s"] / r["window_s"] for r in runs if r["ok"] and r.get("window_s")]
    big = next((s for s in specs if s.memory_only), None)
    notes = [
        "Sender: DCMTK `storescu -aet BENCH -aec <AE> 127.0.0.1 PORT files…`; ×4 = four storescu processes, each a"
        " contiguous quarter of the files. `TCP_NODELAY=1` is exported to every DCMTK tool and to Orthanc.",
        "Time: from spawning the senders to the last sender exiting. inst/s and MB/s = corpus / that time."
        " A run counts only if every storescu exited 0 and the receiver holds every instance (files in its output"
        " folder; Orthanc: `/statistics` CountInstances; oxidicom_py: `.dcm` files under SERVICES/PACS/BENCH **and**"
        " rows of PACS BENCH in `pacsfiles_pacsfile`; its series-completion marker rows under `org.fnndsc.oxidicom`"
        " are only reported, as `other_rows` in the JSON).",
        "CPU: receiver process tree (oxidicom_py: supervisor + workers; storescp --fork: parent + children), from"
        " /proc sampled every 20 ms, from the senders' start until the last sender exited (oxidicom_py: until its"
        " last row was visible). 'incl. PG' adds PostgreSQL's CPU (its whole process tree) over the same window,"
        " minus what the harness's 5 ms polling alone costs it (measured for 0.5 s before each run: JSON"
        " `db_idle_cpu_s_per_s`); CPU ratios to DCMTK use that total.",
        "Peak RSS: sum of RSS over the receiver's process tree, polled every 20 ms; 'increase' = peak − RSS just"
        " before the senders started.",
        "release→last row (oxidicom_py only): per association, from its storescu process exiting (≈ A-RELEASE) to"
        " the first 5 ms database poll that shows every instance of that association; rows are matched by the"
        " SOPInstanceUID at the end of `fname` (chunks do not align with series). Negative = all rows were"
        " visible before storescu had exited. p50/p99 over all associations of all repetitions.",
        "storescp = `storescp -aet RECV +xa -pdu 131072 -od OUT PORT` (decodes and re-encodes; not `+B`);"
        " storescp --fork adds `--fork`. pynetdicom raw = bench/pyscp.py (pynetdicom"
        f" {sitting.machine.get('pynetdicom', '?')}, 16 KiB PDU, writes preamble+meta+received bytes)."
        " Orthanc: default storage settings, SQLite index, both on tmpfs.",
        "oxidicom_py runs with its defaults (README's Configuration) plus OXIDICOM_LISTENER_ADDRESS,"
        " _PORT, _FILES_ROOT, _DB_CONNECTION (one embedded PostgreSQL per sitting, data on disk under"
        f" {DISK_ROOT}, a fresh database per run); `P=` is OXIDICOM_LISTENER_PROCESSES as it reported in its"
        " 'ready' line; OXIDICOM_CONSOLE_PORT=0 (the console is a process of its own, not measured).",
        f"tmpfs = {TMPFS_ROOT}/runs-*; disk = {DISK_ROOT}/runs-* (ext4 root disk; `sync` after each disk run)."
        " Corpora live on tmpfs.",
    ]
    if other:
        notes.append(
            "'other CPU' = the machine's busy CPU during the measurement minus receiver, senders, PostgreSQL and"
            " this harness, in % of one core (kernel threads such as jbd2/kworkers, and anything else running on"
            f" the machine): median {statistics_median(other) * 100:.0f}%, max {max(other) * 100:.0f}% over all runs."
            " A cell with a high value was measured on a busy machine."
        )
    if any(d.telemetry for d in args.defs):
        notes.append(
            "+telemetry = the same oxidicom_py with OXIDICOM_METRICS_PORT (127.0.0.1, a free port) and"
            " OTEL_EXPORTER_OTLP_ENDPOINT set to an OTLP/HTTP sink in the bench process (it reads each request and"
            " answers 200 with an empty ExportTraceServiceResponse; bodies are decoded only after the run). The bench"
            f" scrapes /metrics every {SCRAPE_INTERVAL_S:g} s during the measurement (Prometheus usually scrapes every"
            " 15 s or 5 s). A run counts only if a final scrape shows oxidicom_instances_stored_total = instances sent"
            " and the sink received one association span per storescu and registration batch spans. Spans are"
            f" exported every {receivers.OTEL_EXPORT_EVERY_MS / 1000:g} s (OTEL_BSP_SCHEDULE_DELAY; the SDK's default"
            " of 5 s would export the spans of a run this short at its drain, after the measurement); 'OTLP requests"
            " (in window)' counts those that arrived before the measurement ended. The sink and the scraper are part"
            " of the harness CPU, not the receiver's. +metrics only / +traces only (if present) = one of the two."
        )
    notes.append("Compare only within one sitting: on this VM the same cell moves by up to ~1.5× between sittings.")
    return {
        "schema": 1,
        "command": " ".join(["python bench/run.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "started_utc": started_utc.isoformat(timespec="seconds"),
        "duration_s": duration,
        "reps": args.reps,
        "quick": args.quick,
        "associations": args.assoc_list,
        "oxidicom_processes": args.procs,
        "machine": sitting.machine or machine_facts(sitting.pg_version, args.oxidicom_src),
        "corpora": [corpus_map[s.name].summary() for s in specs if s.name in corpus_map],
        "big_note": big.description if big else "",
        "receivers": [
            {"key": d.key, "label": d.label, "storage": d.storage_label, "aet": d.aet, "big": d.big} for d in args.defs
        ],
        "skipped": skipped,
        "method_notes": notes,
        "summary": summary,
        "runs": runs,
    }


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


if __name__ == "__main__":
    sys.exit(main())
