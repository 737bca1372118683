"""CPU and memory of a process tree, read straight from /proc (cheap enough to sample every 20 ms).

:class:`TreeMonitor` follows one or more root processes and every descendant it sees
(children are discovered through ``/proc/PID/task/PID/children``). It reports:

- CPU seconds used by the tree between :meth:`start` and :meth:`stop`: the change of
  ``utime+stime`` of every process alive at the end, plus, for processes that exited in
  between, whichever is larger of their parent's change in ``cutime+cstime`` (exact, when
  the parent reaped them with ``wait``) and their last sampled ``utime+stime`` (when they
  were auto-reaped, e.g. ``SIGCHLD`` ignored, and never show up in ``cutime``);
- the resident set (sum of RSS over the live tree) at :meth:`start` ("idle") and its peak
  over the samples.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class ProcStat:
    ppid: int
    state: str
    start_ticks: int
    self_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime (children reaped with wait)
    rss_bytes: int


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3]
    return ProcStat(
        ppid=int(rest[1]),
        state=rest[0].decode(),
        start_ticks=int(rest[19]),
        self_ticks=int(rest[11]) + int(rest[12]),
        child_ticks=int(rest[13]) + int(rest[14]),
        rss_bytes=int(rest[21]) * PAGE,
    )


def children_of(pid: int, *, all_threads: bool = False) -> list[int]:
    """Direct children of ``pid`` (of its main thread only unless ``all_threads``)."""
    tids = [str(pid)]
    if all_threads:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def system_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass(slots=True)
class _Tracked:
    ppid: int
    start_ticks: int
    base_self: int
    base_child: int
    last_self: int
    last_child: int
    alive: bool = True


@dataclass
class TreeUsage:
    cpu_s: float
    idle_rss_bytes: int
    peak_rss_bytes: int
    pids_seen: int
    samples: int


@dataclass
class TreeMonitor:
    roots: list[int]
    interval: float = 0.02
    _procs: dict[int, _Tracked] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    idle_rss: int = 0
    peak_rss: int = 0
    samples: int = 0

    # -- sampling -------------------------------------------------------------------------

    def _visit(self, *, baseline: bool, all_threads: bool) -> int:
        """Refresh every live tracked process and discover children; return the tree's RSS."""
        rss = 0
        queue = list(self.roots) + [p for p, t in self._procs.items() if t.alive and p not in self.roots]
        seen: set[int] = set()
        while queue:
            pid = queue.pop()
            if pid in seen:
                continue
            seen.add(pid)
            st = read_stat(pid)
            tracked = self._procs.get(pid)
            if st is None or (tracked is not None and st.start_ticks != tracked.start_ticks):
                if tracked is not None:
                    tracked.alive = False
                continue
            if tracked is None:
                base_self, base_child = (st.self_ticks, st.child_ticks) if baseline else (0, 0)
                tracked = _Tracked(st.ppid, st.start_ticks, base_self, base_child, st.self_ticks, st.child_ticks)
                self._procs[pid] = tracked
            tracked.last_self = max(tracked.last_self, st.self_ticks)
            tracked.last_child = max(tracked.last_child, st.child_ticks)
            if st.state in ("Z", "X"):
                tracked.alive = False  # times of a zombie are final; it holds no memory
                continue
            rss += st.rss_bytes
            queue.extend(children_of(pid, all_threads=all_threads))
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                rss = self._visit(baseline=False, all_threads=False)
                self.peak_rss = max(self.peak_rss, rss)
                self.samples += 1

    def start(self, *, sample: bool = True) -> None:
        """Take the baseline; with ``sample``, keep sampling every ``interval`` until :meth:`stop`."""
        with self._lock:
            self.idle_rss = self.peak_rss = self._visit(baseline=True, all_threads=True)
        if sample:
            self._thread = threading.Thread(target=self._run, name="treemon", daemon=True)
            self._thread.start()

    def snapshot_cpu(self) -> float:
        """CPU seconds used by the tree since :meth:`start` (also works while running)."""
        with self._lock:
            rss = self._visit(baseline=False, all_threads=True)
            self.peak_rss = max(self.peak_rss, rss)
            return self._cpu()

    def stop(self) -> TreeUsage:
        cpu = self.snapshot_cpu()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return TreeUsage(cpu, self.idle_rss, self.peak_rss, len(self._procs), self.samples)

    def _cpu(self) -> float:
        ticks = 0
        dead_by_parent: dict[int, int] = {}
        for t in self._procs.values():
            if t.alive:
                ticks += t.last_self - t.base_self
            else:
                dead_by_parent[t.ppid] = dead_by_parent.get(t.ppid, 0) + (t.last_self - t.base_self)
        for pid, t in self._procs.items():
            reaped = t.last_child - t.base_child
            ticks += max(reaped, dead_by_parent.pop(pid, 0))
        ticks += sum(dead_by_parent.values())  # parents we never tracked (should not happen)
        return ticks / CLK_TCK


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (all threads' children)."""
    out: list[int] = []
    queue = [root]
    while queue and len(out) < 10_000:
        pid = queue.pop()
        if read_stat(pid) is None:
            continue
        out.append(pid)
        queue.extend(children_of(pid, all_threads=True))
    return out


def wait_listening(port: int, timeout: float, alive: object = None) -> bool:
    """Wait until something listens on TCP ``port`` (checked in /proc/net/tcp, no connection made).

    ``alive`` may be a callable returning False when waiting is pointless (the process died).
    """
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        if parts[1].endswith(want) and parts[3] == "0A":
                            return True
            except OSError:
                continue
        if callable(alive) and not alive():
            return False
        time.sleep(0.02)
    return False
