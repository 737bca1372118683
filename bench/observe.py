# ruff: noqa: RUF001
"""oxidicom_py as a monitoring stack sees it: one command that draws docs/observability.png.

    python bench/observe.py [--out docs/observability.png] [--pause 2.5] [--keep-json PATH]

Starts an embedded PostgreSQL, a C-FIND peer (pynetdicom, answering
NumberOfSeriesRelatedInstances for the corpus' series), an OTLP/HTTP trace receiver and
``oxidicom-py serve`` (files on tmpfs, ``OXIDICOM_METRICS_PORT`` and ``OTEL_EXPORTER_OTLP_ENDPOINT``
set), all on 127.0.0.1. It then sends three bursts with four concurrent DCMTK ``storescu``
processes each, with pauses between (half of tiny10k, all of mr130k, the other half of tiny10k;
the benchmark's cached corpora), scraping ``/metrics`` every 0.25 s throughout. Afterwards the
receiver is stopped with SIGTERM (its drain exports the last spans), the spans are decoded and
the figure is drawn: (a) instances stored/s, (b) MB/s received, (c) active associations and
registration queue depth, (d) registration batch latency p50/p99 per scrape interval from the
histogram's bucket deltas (with every batch span's duration as dots), (e) the trace of one
association: its span, its C-FIND child spans and the registration batch spans that overlap it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent


if __name__ == "__main__":
    from venv_guard import reexec_in_venv

    reexec_in_venv(__file__, ("matplotlib", "psycopg", "pynetdicom", "oxidicom_py"))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import corpora  # noqa: E402
import receivers  # noqa: E402
import telemetry_probe as tp  # noqa: E402

TMPFS_ROOT = Path("/dev/shm/oxidicom-bench")
DISK_ROOT = Path("/var/tmp/oxidicom-bench")
SCRAPE_S = 0.25
SENDERS = 4
SCP_AET = "ChRIS"
SENDER_AET = receivers.SENDER_AET
ASSOCIATION = "dicom.association"
CFIND = "dicom.c-find series count"
BATCH = "registration batch"


def log(msg: str) -> None:
    print(f"[observe {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the C-FIND peer -----------------------------------------------------------------------------


class FindPeer:
    """Answers oxidicom_py's Study Root C-FIND (SERIES level) with NumberOfSeriesRelatedInstances."""

    def __init__(self, counts: dict[str, int]) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        self.counts = counts
        self.queries = 0
        ae = AE(ae_title=SENDER_AET)  # oxidicom_py asks the calling AE title of the association
        ae.add_supported_context(
            StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._on_find)])
        self.port = int(self.server.server_address[1])

    def _on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        from pydicom.dataset import Dataset

        self.queries += 1
        query = event.identifier
        series = str(query.get("SeriesInstanceUID", ""))
        if series in self.counts:
            answer = Dataset()
            answer.QueryRetrieveLevel = "SERIES"
            answer.StudyInstanceUID = query.get("StudyInstanceUID", "")
            answer.SeriesInstanceUID = series
            answer.NumberOfSeriesRelatedInstances = self.counts[series]
            yield 0xFF00, answer

    def close(self) -> None:
        self.server.shutdown()


def series_counts(files: list[Path]) -> dict[str, int]:
    """SeriesInstanceUID → number of files, reading one header per folder (the corpora keep one series per folder)."""
    from pydicom import dcmread

    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    counts: dict[str, int] = {}
    for folder_files in by_folder.values():
        uid = str(
            dcmread(folder_files[0], stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID
        )
        counts[uid] = counts.get(uid, 0) + len(folder_files)
    return counts


# -- senders -------------------------------------------------------------------------------------


@dataclass
class Burst:
    name: str
    files: list[Path]
    start: float = 0.0  # time.time()
    end: float = 0.0
    exit_codes: tuple[int | None, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def send_burst(burst: Burst, port: int, log_dir: Path) -> None:
    """``SENDERS`` storescu processes at once, each a contiguous share of the files; bounded wait."""
    k = math.ceil(len(burst.files) / SENDERS)
    chunks = [burst.files[i * k : (i + 1) * k] for i in range(SENDERS) if burst.files[i * k : (i + 1) * k]]
    env = receivers.base_env()  # TCP_NODELAY=1: Debian's DCMTK leaves Nagle on otherwise
    procs: list[subprocess.Popen[bytes]] = []
    burst.start = time.time()
    for i, chunk in enumerate(chunks):
        with (log_dir / f"storescu-{burst.name}-{i}.log").open("wb") as out:
            cmd = ["storescu", "-aet", SENDER_AET, "-aec", SCP_AET, "127.0.0.1", str(port), *map(str, chunk)]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    deadline = time.monotonic() + 60 + 0.05 * len(burst.files)
    try:
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log(f"burst {burst.name}: storescu did not finish in time; killed")
    finally:
        for p in procs:
            if p.poll() is None:
                receivers.kill_group(p)
                p.wait(10)
    burst.end = time.time()
    burst.exit_codes = tuple(p.returncode for p in procs)


def notable_log_lines(path: Path, limit: int = 12) -> list[str]:
    """The receiver's warning and error lines (JSON logs), shortened, at most ``limit``."""
    out: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical"):
            extra = {k: v for k, v in record.items() if k not in ("ts", "level", "logger", "msg")}
            out.append(f"{record['level']}: {record.get('msg')} {json.dumps(extra)[:300]}")
            if len(out) >= limit:
                break
    return out


# -- series from the scrapes ---------------------------------------------------------------------


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs, +Inf last."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # the highest finite bound, as Prometheus does
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


@dataclass
class Series:
    t: list[float]  # seconds since the first scrape (middle of the interval for rates)
    t_point: list[float]  # seconds since the first scrape, per scrape (for gauges)
    inst_per_s: list[float]
    mb_per_s: list[float]
    active: list[float]
    queue: list[float]
    p50_ms: list[float]
    p99_ms: list[float]
    batches: list[float]
    stored_total: float
    bytes_total: float
    cfind_total: float


def series_from(scrapes: list[tp.Scrape], t0: float) -> Series:
    parsed = []
    for s in scrapes:
        if s.text is None:
            continue
        samples = tp.parse_metrics(s.text)
        bucket_keys = sorted(
            {dict(labels)["le"] for (name, labels) in samples if name == "oxidicom_registration_batch_seconds_bucket"},
            key=float,
        )
        buckets = [
            (float(le), tp.sample_sum(samples, "oxidicom_registration_batch_seconds_bucket", le=le) or 0.0)
            for le in bucket_keys
        ]
        parsed.append(
            (
                s.wall - t0,
                tp.sample_sum(samples, "oxidicom_instances_stored_total") or 0.0,
                tp.sample_sum(samples, "oxidicom_received_bytes_total") or 0.0,
                tp.sample_sum(samples, "oxidicom_associations_active") or 0.0,
                tp.sample_sum(samples, "oxidicom_registration_queue_depth") or 0.0,
                buckets,
                tp.sample_sum(samples, "oxidicom_cfind_total") or 0.0,
            )
        )
    out = Series([], [], [], [], [], [], [], [], [], 0.0, 0.0, 0.0)
    for t, _stored, _b, active, queue, _bk, _cf in parsed:
        out.t_point.append(t)
        out.active.append(active)
        out.queue.append(queue)
    for prev, cur in itertools.pairwise(parsed):
        dt = cur[0] - prev[0]
        if dt <= 0:
            continue
        out.t.append((cur[0] + prev[0]) / 2)
        out.inst_per_s.append((cur[1] - prev[1]) / dt)
        out.mb_per_s.append((cur[2] - prev[2]) / dt / 1e6)
        before = dict(prev[5])
        delta = [(le, c - before.get(le, 0.0)) for le, c in cur[5]]
        n = delta[-1][1] if delta else 0.0
        out.batches.append(n)
        p50 = histogram_quantile(0.5, delta) if n > 0 else None
        p99 = histogram_quantile(0.99, delta) if n > 0 else None
        out.p50_ms.append(p50 * 1000 if p50 is not None else math.nan)
        out.p99_ms.append(p99 * 1000 if p99 is not None else math.nan)
    if parsed:
        out.stored_total, out.bytes_total, out.cfind_total = parsed[-1][1], parsed[-1][2], parsed[-1][6]
    return out


# -- the figure ----------------------------------------------------------------------------------


def pick_association(spans: list[tp.Span], window: tuple[float, float]) -> tp.Span | None:
    """The first association span starting within ``window`` (unix s) that has C-FIND children."""
    parents = {s.parent_span_id for s in spans if s.name == CFIND}
    candidates = sorted(
        (s for s in spans if s.name == ASSOCIATION and window[0] <= s.start_ns / 1e9 <= window[1]),
        key=lambda s: s.start_ns,
    )
    with_cfind = [s for s in candidates if s.span_id in parents]
    return (with_cfind or candidates or [None])[0]


def _lane(span: tp.Span) -> str:
    role = span.resource.get("oxidicom.role", "?")
    worker = span.resource.get("oxidicom.worker")
    return f"{role} {worker}" if worker is not None else str(role)


def draw(
    path: Path,
    series: Series,
    bursts: list[Burst],
    spans: list[tp.Span],
    t0: float,
    footnote: str,
) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 15.5))
    grid = fig.add_gridspec(5, 1, height_ratios=[1, 1, 1, 1.15, 2.0], hspace=0.45)
    axes = [fig.add_subplot(grid[i]) for i in range(4)]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    wf = fig.add_subplot(grid[4])
    red, blue, green, grey = "#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"

    assoc = pick_association(spans, (bursts[1].start, bursts[1].end)) if len(bursts) > 1 else None
    assoc_win = (assoc.start_ns / 1e9 - t0, assoc.end_ns / 1e9 - t0) if assoc is not None else None

    def shade(ax: Any) -> None:
        for b in bursts:
            ax.axvspan(b.start - t0, b.end - t0, color="#000000", alpha=0.05, lw=0)
        if assoc_win is not None:
            ax.axvspan(*assoc_win, color="#ff7f0e", alpha=0.18, lw=0)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)

    ax = axes[0]
    ax.step(series.t, series.inst_per_s, where="mid", color=red, lw=1.4)
    for b in bursts:
        mean = len(b.files) / max(b.end - b.start, 1e-9)
        ax.annotate(
            f"{b.name}\n{len(b.files):,} inst, ×{SENDERS} assoc\n(mean {mean:,.0f}/s)",
            ((b.start + b.end) / 2 - t0, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7.5,
            color="#444444",
        )
    ax.set_ylabel("instances/s")
    ax.set_ylim(0, max([*series.inst_per_s, 1]) * 1.45)
    ax.set_title(
        "(a) instances stored per second: Δ oxidicom_instances_stored_total / Δt between scrapes",
        fontsize=10,
        loc="left",
    )
    shade(ax)

    ax = axes[1]
    ax.step(series.t, series.mb_per_s, where="mid", color=blue, lw=1.4)
    ax.set_ylabel("MB/s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        "(b) dataset bytes received: Δ oxidicom_received_bytes_total / Δt (MB = 10⁶ bytes)", fontsize=10, loc="left"
    )
    shade(ax)

    ax = axes[2]
    ax.step(series.t_point, series.active, where="post", color=green, lw=1.4)
    ax.set_ylabel("open associations", color=green)
    ax.set_ylim(0, max([*series.active, SENDERS]) + 1)
    ax2 = ax.twinx()
    ax2.step(series.t_point, series.queue, where="post", color="#9467bd", lw=1.2)
    ax2.set_ylabel("rows waiting", color="#9467bd")
    ax2.set_ylim(0, max([*series.queue, 1]) * 1.25)
    ax2.tick_params(axis="y", colors="#9467bd")
    ax.set_title(
        "(c) gauges at each scrape: oxidicom_associations_active (green, left),"
        " oxidicom_registration_queue_depth (purple, right)",
        fontsize=10,
        loc="left",
    )
    shade(ax)

    ax = axes[3]
    batch_spans = [s for s in spans if s.name == BATCH]
    ax.scatter(
        [s.end_ns / 1e9 - t0 for s in batch_spans],
        [max(s.duration_s * 1000, 0.05) for s in batch_spans],
        s=5,
        color=grey,
        alpha=0.35,
        lw=0,
        label=f"each batch's span (OTLP), n={len(batch_spans):,}",
    )
    ax.plot(series.t, series.p50_ms, "o-", ms=3, lw=1.2, color="#ff7f0e", label="p50 per scrape interval")
    ax.plot(series.t, series.p99_ms, "s-", ms=3, lw=1.2, color="#8c564b", label="p99 per scrape interval")
    ax.set_yscale("log")
    ax.set_ylabel("batch commit, ms")
    ax.set_xlabel(
        f"seconds since the first scrape (scraped every {SCRAPE_S:g} s; grey bands: bursts; orange band: the"
        " association in (e))"
    )
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    ax.set_title(
        "(d) registration batch latency: histogram_quantile over Δ oxidicom_registration_batch_seconds_bucket"
        " between scrapes",
        fontsize=10,
        loc="left",
    )
    shade(ax)
    for a in axes[:3]:
        a.tick_params(labelbottom=False)

    info: dict[str, Any] = {}
    if assoc is None:
        wf.text(0.5, 0.5, "no association span received", ha="center", va="center")
        wf.set_axis_off()
    else:
        a0 = assoc.start_ns
        cfinds = sorted(
            (s for s in spans if s.name == CFIND and s.parent_span_id == assoc.span_id), key=lambda s: s.start_ns
        )
        overlapping = [s for s in batch_spans if s.start_ns < assoc.end_ns and s.end_ns > assoc.start_ns]
        lanes = sorted({_lane(s) for s in overlapping})
        rows: list[tuple[str, list[tp.Span], str]] = [
            (
                f"{ASSOCIATION} ({_lane(assoc)})\n"
                f"{assoc.attributes.get('oxidicom.instances.stored', '?')} instances, "
                f"{assoc.attributes.get('dicom.calling_ae_title', '?')} →"
                f" {assoc.attributes.get('dicom.called_ae_title', '?')}",
                [assoc],
                red,
            )
        ]
        for i, c in enumerate(cfinds, 1):
            rows.append((f"child {i}: {CFIND} → {c.attributes.get('oxidicom.cfind.result', '?')}", [c], green))
        separators: list[float] = [len(rows) - 0.5]
        for lane in lanes:
            mine = sorted((s for s in overlapping if _lane(s) == lane), key=lambda s: s.start_ns)
            n_rows = sum(int(s.attributes.get("oxidicom.batch.rows", 0)) for s in mine)
            packed: list[list[tp.Span]] = []  # concurrent batches side by side: first free sub-lane
            for s in mine:
                free = next((p for p in packed if p[-1].end_ns <= s.start_ns), None)
                if free is None:
                    packed.append([s])
                else:
                    free.append(s)
            for k, sub in enumerate(packed):
                label = (
                    f"{BATCH} spans, {lane}\n{len(mine)} batches, {n_rows:,} rows; ≤{len(packed)} at once"
                    if k == 0
                    else ""
                )
                rows.append((label, sub, blue))
            separators.append(len(rows) - 0.5)
        for y, (_label, row_spans, color) in enumerate(rows):
            bars = [((s.start_ns - a0) / 1e6, max((s.end_ns - s.start_ns) / 1e6, 0.3)) for s in row_spans]
            wf.broken_barh(bars, (y - 0.38, 0.76), facecolors=color, edgecolors="white", linewidth=0.4)
        for y, c in enumerate(cfinds, 1):
            wf.annotate(
                f"{(c.end_ns - c.start_ns) / 1e6:.1f} ms",
                ((c.end_ns - a0) / 1e6, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7.5,
            )
        wf.annotate(
            f"{(assoc.end_ns - assoc.start_ns) / 1e6:,.0f} ms (ends when its rows are registered)",
            ((assoc.end_ns - a0) / 1e6, 0),
            xytext=(-4, 0),
            textcoords="offset points",
            va="center",
            ha="right",
            fontsize=7.5,
            color="white",
            fontweight="bold",
        )
        for y in separators[:-1]:
            wf.axhline(y, color="#999999", lw=0.6)
        wf.set_yticks(range(len(rows)))
        wf.set_yticklabels([r[0] for r in rows], fontsize=8)
        wf.invert_yaxis()
        wf.set_xlabel("ms since the association span started")
        wf.set_xlim(-0.02 * (assoc.end_ns - a0) / 1e6, 1.04 * (assoc.end_ns - a0) / 1e6)
        wf.grid(axis="x", alpha=0.3)
        wf.set_axisbelow(True)
        wf.set_title(
            f"(e) OTLP spans: one association of burst {bursts[1].name[:1]}, its C-FIND children, and the registration"
            " batches overlapping it",
            fontsize=10,
            loc="left",
        )
        info = {
            "association_ms": (assoc.end_ns - assoc.start_ns) / 1e6,
            "cfind_ms": [(c.end_ns - c.start_ns) / 1e6 for c in cfinds],
            "overlapping_batches": len(overlapping),
            "lanes": lanes,
        }
    fig.suptitle("oxidicom_py as seen from /metrics and OTLP", fontsize=14, y=0.995)
    fig.text(0.01, 0.004, footnote, fontsize=7.5, color="#444444", ha="left", va="bottom", wrap=True)
    fig.subplots_adjust(left=0.2, right=0.93, top=0.965, bottom=0.065)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return info


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/observe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "observability.png", help="the PNG to write")
    p.add_argument("--pause", type=float, default=2.5, help="seconds between bursts (default 2.5)")
    p.add_argument("--keep-json", type=Path, default=None, help="also write the scraped series and spans as JSON")
    args = p.parse_args(argv)
    if not 0.5 <= args.pause <= 30:
        p.error("--pause: between 0.5 and 30 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from oxidicom_py.registry.embedded import EmbeddedPostgres

    for tool in ("storescu",):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool} (apt-get install -y dcmtk)")

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    specs = [corpora.FULL["tiny10k"], corpora.FULL["mr130k"]]
    corpus = corpora.ensure(specs, TMPFS_ROOT / "corpora", log=log)
    tiny, mr = corpus["tiny10k"], corpus["mr130k"]
    half = len(tiny.files) // 2
    bursts = [
        Burst("A: tiny10k ½", tiny.files[:half]),
        Burst("B: mr130k", mr.files),
        Burst("C: tiny10k ½", tiny.files[half:]),
    ]
    counts = series_counts(tiny.files + mr.files)
    work = TMPFS_ROOT / f"observe-{os.getpid()}"
    pg_root = DISK_ROOT / f"observe-pg-{os.getpid()}"
    pg: Any = None
    peer: FindPeer | None = None
    running: receivers.Running | None = None
    scraper: tp.Scraper | None = None
    spans: list[tp.Span] = []
    ok = True
    try:
        work.mkdir(parents=True, exist_ok=True)
        log_dir = work / "logs"
        log_dir.mkdir()
        pg = EmbeddedPostgres(pg_root / "pgdata")
        uri = pg.start()
        if pg.pid is None:
            raise RuntimeError("embedded PostgreSQL has no postmaster")
        db = receivers.Database(uri, pg.pid)
        log(f"embedded PostgreSQL up ({pg.pgdata})")
        peer = FindPeer(counts)
        rdef = receivers.ReceiverDef(
            "observe", "oxidicom", "tmpfs", "oxidicom_py", SCP_AET, True, None, telemetry="both"
        )
        running = receivers.start(
            rdef, work / "run", db, extra_env={"OXIDICOM_PACS_ADDRESS": f"{SENDER_AET}=127.0.0.1:{peer.port}"}
        )
        log(
            f"oxidicom-py serve ready: DICOM 127.0.0.1:{running.port}, /metrics 127.0.0.1:{running.metrics_port},"
            f" OTLP {running.sink.endpoint if running.sink else '?'}, C-FIND peer 127.0.0.1:{peer.port},"
            f" {running.info.get('processes')} processes"
        )
        processes = running.info.get("processes", "?")
        scraper = tp.Scraper(f"http://127.0.0.1:{running.metrics_port}/metrics", SCRAPE_S, keep_text=True).start()
        time.sleep(1.0)  # a quiet second first
        for i, burst in enumerate(bursts):
            if i:
                time.sleep(args.pause)
            send_burst(burst, running.port, log_dir)
            mb = burst.bytes / 1e6
            took = burst.end - burst.start
            log(
                f"burst {burst.name}: {len(burst.files):,} instances, {mb:,.0f} MB in {took:.2f} s"
                f" ({len(burst.files) / took:,.0f}/s), storescu exit codes {burst.exit_codes}"
            )
            if any(c != 0 for c in burst.exit_codes):
                ok = False
        total = sum(len(b.files) for b in bursts)
        deadline = time.monotonic() + 30  # until /metrics shows every instance and an empty queue
        while time.monotonic() < deadline:
            samples = tp.parse_metrics(tp.fetch(scraper.url).decode())
            if (tp.sample_sum(samples, "oxidicom_instances_stored_total") or 0) >= total and not tp.sample_sum(
                samples, "oxidicom_registration_queue_depth"
            ):
                break
            time.sleep(0.25)
        time.sleep(1.5)  # the tail
        scrapes = scraper.stop()
        scraper = None
        log(f"{len(scrapes)} scrapes, {sum(1 for s in scrapes if s.error)} failed")
        stop = running.stop()  # SIGTERM: the drain exports the last spans; closes the OTLP receiver
        log(f"receiver stopped: exit {stop.get('exit_code')}, log levels {stop.get('log_levels')}")
        for line in notable_log_lines(running.log_path):
            log(f"  receiver {line}")
        sink = running.sink
        running = None
        assert sink is not None
        spans, bad = tp.decode_spans(sink.snapshot())
        names: dict[str, int] = {}
        for s in spans:
            names[s.name] = names.get(s.name, 0) + 1
        log(
            f"OTLP: {len(sink.posts)} requests, {bad} undecodable, spans {names};"
            f" C-FIND queries answered {peer.queries}"
        )
        t0 = scrapes[0].wall
        series = series_from(scrapes, t0)
        if series.stored_total != total:
            log(f"WARNING: /metrics shows {series.stored_total:.0f} instances stored, sent {total}")
            ok = False
        if names.get(ASSOCIATION, 0) != SENDERS * len(bursts):
            log(f"WARNING: {names.get(ASSOCIATION, 0)} association spans, expected {SENDERS * len(bursts)}")
            ok = False
        import importlib.metadata as md

        git = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        cpu_lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in cpu_lines if line.startswith("model name")), "?")
        footnote = (
            f"{time.strftime('%Y-%m-%d', time.gmtime(t0))}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()},"
            f" Python {platform.python_version()}, oxidicom_py {md.version('oxidicom_py')} ({git}),"
            f" {processes} listener processes, files on tmpfs, embedded PostgreSQL on the root disk."
            f" Bursts of {SENDERS} concurrent DCMTK storescu (TCP_NODELAY=1): A = tiny10k instances 1–{half:,}"
            f" (~9.5 KB each), B = mr130k (2,000 × ~132 KB), C = tiny10k {half + 1:,}–{len(tiny.files):,};"
            f" {args.pause:g} s pauses. C-FIND peer: pynetdicom on 127.0.0.1. Spans exported every 1 s"
            " (OTEL_BSP_SCHEDULE_DELAY=1000). Drawn by bench/observe.py."
        )
        info = draw(args.out, series, bursts, spans, t0, footnote)
        log(f"wrote {args.out} ({info})")
        if args.keep_json:
            args.keep_json.write_text(
                json.dumps(
                    {
                        "t0": t0,
                        "bursts": [
                            {"name": b.name, "n": len(b.files), "start": b.start - t0, "end": b.end - t0}
                            for b in bursts
                        ],
                        "series": series.__dict__,
                        "spans": [s.__dict__ for s in spans],
                    },
                    default=str,
                )
            )
    except KeyboardInterrupt:
        log("interrupted")
        ok = False
    finally:
        if scraper is not None:
            scraper.stop()
        if running is not None:
            running.stop()
        if peer is not None:
            peer.close()
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.stop()
                log("embedded PostgreSQL stopped")
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
