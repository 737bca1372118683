# ruff: noqa: RUF001
"""Aggregate the runs of a sitting and write them as markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

MB = 1e6
RSS_TARGET_MB = 64.0  # oxidicom_py's target: RSS increase while receiving big500m


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), like numpy's default."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (corpus, associations, receiver), in the order the runs first appear."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["corpus"], r["associations"], r["receiver"]), []).append(r)
    rows: list[dict[str, Any]] = []
    for (corpus, assoc, key), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        first = rs[0]
        latencies = [x for r in ok for x in r.get("commit_latency_ms") or [] if x is not None]
        processes = sorted({r.get("processes") for r in rs if r.get("processes") is not None})
        rows.append(
            {
                "corpus": corpus,
                "associations": assoc,
                "receiver": key,
                "kind": first["kind"],
                "label": first["label"]
                + (f" P={processes[0]}" if len(processes) == 1 and "P=" not in first["label"] else ""),
                "storage": first["storage"],
                "memory_only": first.get("memory_only", False),
                "processes": processes[0] if len(processes) == 1 else processes or None,
                "runs": len(rs),
                "runs_ok": len(ok),
                "failures": [f"rep {r['rep']}: {r['error']}" for r in rs if not r["ok"]],
                "instances": first["instances"],
                "inst_per_s": _stats([r["inst_per_s"] for r in ok]),
                "mb_per_s": _stats([r["mb_per_s"] for r in ok]),
                "wall_s": _stats([r["wall_s"] for r in ok]),
                "cpu_s_per_1k": _stats([r["cpu_s_per_1k"] for r in ok]),
                "peak_rss_mb": _stats([r["peak_rss_mb"] for r in ok]),
                "idle_rss_mb": _stats([r["idle_rss_mb"] for r in ok]),
                "rss_increase_mb": _stats([r["rss_increase_mb"] for r in ok]),
                "db_cpu_s_per_1k": _stats([r["db_cpu_s_per_1k"] for r in ok if r.get("db_cpu_s_per_1k") is not None]),
                "db_net_cpu_s_per_1k": _stats(
                    [r["db_net_cpu_s_per_1k"] for r in ok if r.get("db_net_cpu_s_per_1k") is not None]
                ),
                "total_cpu_s_per_1k": _stats([r.get("total_cpu_s_per_1k", r["cpu_s_per_1k"]) for r in ok]),
                "sender_cpu_s_per_1k": _stats([r["sender_cpu_s_per_1k"] for r in ok]),
                "other_cpu_pct": _stats([r["other_cpu_s"] / r["window_s"] * 100 for r in ok if r.get("window_s")]),
                "commit_latency_ms": {
                    "p50": percentile(latencies, 50),
                    "p99": percentile(latencies, 99),
                    "max": max(latencies) if latencies else None,
                    "n": len(latencies),
                }
                if first["kind"] == "oxidicom"
                else None,
                "telemetry": _telemetry_stats([r["telemetry"] for r in ok if r.get("telemetry")]),
            }
        )
    # ratios of every oxidicom_py figure to single-process storescp, same storage/corpus/associations
    base = {
        (r["corpus"], r["associations"], r["storage"]): r for r in rows if r["kind"] == "storescp" and r["runs_ok"] > 0
    }
    for r in rows:
        if r["kind"] != "oxidicom":
            continue
        b = base.get((r["corpus"], r["associations"], r["storage"].split(" ")[0]))
        ratios: dict[str, float | None] = {}
        for field in ("inst_per_s", "mb_per_s", "cpu_s_per_1k", "peak_rss_mb", "rss_increase_mb"):
            mine, theirs = r.get("total_cpu_s_per_1k" if field == "cpu_s_per_1k" else field), (b or {}).get(field)
            ok = mine and theirs and theirs["median"]
            ratios[field] = mine["median"] / theirs["median"] if ok else None  # type: ignore[index]
        r["vs_storescp"] = ratios if b else None
        # and to the best DCMTK configuration of the same cell (defaults, +B, --fork, --fork +B, ...)
        best = max(
            (
                d
                for d in rows
                if d["kind"].startswith("storescp")
                and d["runs_ok"] > 0
                and (d["corpus"], d["associations"], d["storage"])
                == (r["corpus"], r["associations"], r["storage"].split(" ")[0])
                and d["inst_per_s"]
            ),
            key=lambda d: d["inst_per_s"]["median"],
            default=None,
        )
        r["vs_best_dcmtk"] = (
            {
                "receiver": best["label"],
                "inst_per_s": r["inst_per_s"]["median"] / best["inst_per_s"]["median"] if r.get("inst_per_s") else None,
                "cpu_s_per_1k": r["total_cpu_s_per_1k"]["median"] / best["cpu_s_per_1k"]["median"]
                if r.get("total_cpu_s_per_1k") and best.get("cpu_s_per_1k") and best["cpu_s_per_1k"]["median"]
                else None,
            }
            if best
            else None
        )
    return rows


def _telemetry_stats(infos: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The -telemetry variants: what the bench scraped and what its OTLP sink received, per run."""
    if not infos:
        return None
    names = sorted({k for i in infos for k in i.get("spans", {})})
    return {
        "scrapes": _stats([i.get("scrapes") for i in infos]),
        "scrape_ms_median": _stats([i.get("scrape_ms_median") for i in infos]),
        "scrape_bytes": _stats([i.get("scrape_bytes") for i in infos]),
        "otlp_requests": _stats([i.get("otlp_requests") for i in infos]),
        "otlp_requests_in_window": _stats([i.get("otlp_requests_in_window") for i in infos]),
        "spans": {name: _stats([i.get("spans", {}).get(name, 0) for i in infos]) for name in names},
    }


TELEMETRY_SUFFIXES = ("-telemetry", "-metrics", "-traces")  # receivers.TELEMETRY_VARIANTS


def _telemetry_suffix(key: str) -> str | None:
    return next((s for s in TELEMETRY_SUFFIXES if key.endswith(s)), None)


def telemetry_pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(off, on) summary rows: ``X`` and ``X-telemetry`` (or ``-metrics``, ``-traces``) of the same
    corpus and association count."""
    by = {(r["corpus"], r["associations"], r["receiver"]): r for r in rows}
    pairs = []
    for r in rows:
        suffix = _telemetry_suffix(r["receiver"])
        if suffix:
            off = by.get((r["corpus"], r["associations"], r["receiver"].removesuffix(suffix)))
            if off is not None:
                pairs.append((off, r))
    return pairs


def _delta(on: dict[str, float] | None, off: dict[str, float] | None) -> str:
    if not on or not off or not off["median"]:
        return "–"
    return f"{(on['median'] / off['median'] - 1) * 100:+.1f}%"


def telemetry_markdown(rows: list[dict[str, Any]]) -> list[str]:
    pairs = telemetry_pairs(rows)
    if not pairs:
        return []
    out = [
        "",
        "**Telemetry cost**: the same receiver without and with telemetry (`/metrics` scraped every"
        " second by the bench, OTLP traces to the bench's sink); medians (min–max), Δ = on / off − 1:",
        "",
        "| corpus | assoc | receiver (on) | inst/s off | inst/s on | Δ inst/s | CPU s/1k off | CPU s/1k on | Δ CPU |"
        " scrapes / run | spans / run (association · batch) | OTLP requests / run (in window) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for off, on in pairs:
        t = on.get("telemetry") or {}
        spans = t.get("spans", {})
        assoc_spans = spans.get("dicom.association")
        batch_spans = spans.get("registration batch")
        reqs, in_window = t.get("otlp_requests"), t.get("otlp_requests_in_window")
        out.append(
            f"| {on['corpus']} | ×{on['associations']} | {on['label']} | {_cell(off['inst_per_s'])} |"
            f" {_cell(on['inst_per_s'])} | {_delta(on['inst_per_s'], off['inst_per_s'])} |"
            f" {_cell(off['cpu_s_per_1k'], 3)} | {_cell(on['cpu_s_per_1k'], 3)} |"
            f" {_delta(on['cpu_s_per_1k'], off['cpu_s_per_1k'])} | {_cell(t.get('scrapes'), 0, False)} |"
            f" {_cell(assoc_spans, 0, False)} · {_cell(batch_spans, 0, False)} |"
            f" {_cell(reqs, 0, False)} ({_cell(in_window, 0, False)}) |"
        )
    return out


# -- markdown ---------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _cell(s: dict[str, float] | None, digits: int = 0, spread: bool = True) -> str:
    if not s:
        return "–"
    text = _fmt(s["median"], digits)
    if spread and s["n"] > 1:
        text += f" ({_fmt(s['min'], digits)}–{_fmt(s['max'], digits)})"
    return text


def _ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _status(r: dict[str, Any]) -> str:
    if r["runs_ok"] == r["runs"]:
        return f"{r['runs_ok']}/{r['runs']}"
    return f"**{r['runs_ok']}/{r['runs']} FAILED**"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    rows = doc["summary"]
    out: list[str] = []
    out.append(f"# oxidicom_py receive benchmark — {doc['started_utc']}")
    out.append("")
    out.append(
        f"`{doc['command']}` · {doc['reps']} repetition(s), interleaved (rep → corpus → associations → receiver);"
        f" medians with (min–max) · sitting took {doc['duration_s'] / 60:.1f} min"
    )
    out.append("")
    out.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']:.0f} GiB, kernel {m['kernel']},"
        f" Python {m['python']}, {m['dcmtk']}, Orthanc {m['orthanc']}, pynetdicom {m['pynetdicom']},"
        f" PostgreSQL {m['postgresql']}, oxidicom_py {m['oxidicom_py']}; load average at start {m['loadavg']}."
    )
    out.append("")
    out.append(
        "Corpora: "
        + "; ".join(
            f"**{c['name']}** {c['instances']:,} × {c['mean_instance_bytes'] / 1e3:,.1f} KB ({c['bytes'] / MB:,.0f} MB)"
            for c in doc["corpora"]
        )
        + "."
    )
    for note in doc.get("skipped", []):
        out.append(f"\n*Skipped:* {note}")
    out.append("")
    out.append(
        "| corpus | assoc | receiver | storage | inst/s | MB/s | CPU s / 1k inst | incl. PG | peak RSS MB |"
        " release→last row p50 / p99 ms | vs storescp: inst/s · CPU · RSS | vs best DCMTK: inst/s · CPU |"
        " other CPU % | runs ok |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["memory_only"]:
            continue
        lat = r["commit_latency_ms"]
        lat_text = f"{_fmt(lat['p50'], 1)} / {_fmt(lat['p99'], 1)}" if lat and lat["n"] else "–"
        vs = r.get("vs_storescp")
        vs_text = (
            f"{_ratio(vs['inst_per_s'])} · {_ratio(vs['cpu_s_per_1k'])} · {_ratio(vs['peak_rss_mb'])}" if vs else "–"
        )
        best = r.get("vs_best_dcmtk")
        best_text = (
            f"{_ratio(best['inst_per_s'])} · {_ratio(best['cpu_s_per_1k'])} ({best['receiver']})" if best else "–"
        )
        name = f"**{r['label']}**" if r["kind"] == "oxidicom" else r["label"]
        out.append(
            f"| {r['corpus']} | ×{r['associations']} | {name} | {r['storage']} | {_cell(r['inst_per_s'])} |"
            f" {_cell(r['mb_per_s'], 0, False)} | {_cell(r['cpu_s_per_1k'], 3)} |"
            f" {_cell(r['total_cpu_s_per_1k'], 3) if r['kind'] == 'oxidicom' else '–'} |"
            f" {_cell(r['peak_rss_mb'], 0, False)} |"
            f" {lat_text} | {vs_text} | {best_text} | {_cell(r['other_cpu_pct'], 0, False)} | {_status(r)} |"
        )
    out.extend(telemetry_markdown(rows))
    big = [r for r in rows if r["memory_only"]]
    if big:
        out.append("")
        out.append(f"**Memory while receiving one {big[0]['corpus']} instance** ({doc['big_note']}), 1 association:")
        out.append("")
        out.append("| receiver | storage | idle RSS MB | peak RSS MB | increase MB | transfer s | MB/s | runs ok |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in big:
            inc = _cell(r["rss_increase_mb"], 0)
            if r["kind"] == "oxidicom" and r["rss_increase_mb"]:
                passed = r["rss_increase_mb"]["max"] < RSS_TARGET_MB
                inc += f" ({'<' if passed else '≥'} {RSS_TARGET_MB:.0f} MB target)"
            name = f"**{r['label']}**" if r["kind"] == "oxidicom" else r["label"]
            out.append(
                f"| {name} | {r['storage']} | {_cell(r['idle_rss_mb'], 0, False)} | {_cell(r['peak_rss_mb'], 0)} |"
                f" {inc} | {_cell(r['wall_s'], 2)} | {_cell(r['mb_per_s'], 0, False)} | {_status(r)} |"
            )
    failures = [(r, f) for r in rows for f in r["failures"]]
    if failures:
        out.append("")
        out.append("**Failed runs** (not counted in the figures above):")
        out.append("")
        for r, f in failures:
            out.append(f"- {r['corpus']} ×{r['associations']} {r['label']} {r['storage']}: {f}")
    out.append("")
    out.append("Notes:")
    out.extend(f"- {n}" for n in doc["method_notes"])
    out.append("")
    return "\n".join(out)


# -- chart ------------------------------------------------------------------------------------

COLORS = {
    "oxidicom": "#d62728",
    "storescp": "#1f77b4",
    "storescp-fork": "#17becf",
    "storescp-alt": "#aec7e8",
    "orthanc": "#2ca02c",
    "pynetdicom": "#9467bd",
}
TELEMETRY_COLOR = "#ff9896"  # oxidicom_py's -telemetry variants: a lighter red next to the plain one


def _color(key: str, kind: str) -> str:
    if _telemetry_suffix(key):
        return TELEMETRY_COLOR
    return COLORS.get(kind, "#7f7f7f")


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["summary"] if r["storage"] == "tmpfs" and not r["memory_only"] and r["inst_per_s"]]
    big = [r for r in doc["summary"] if r["memory_only"] and r["rss_increase_mb"]]
    cells: list[tuple[str, int]] = []
    receivers: list[str] = []
    for r in rows:
        if (r["corpus"], r["associations"]) not in cells:
            cells.append((r["corpus"], r["associations"]))
        if r["receiver"] not in receivers:
            receivers.append(r["receiver"])
    by = {(r["corpus"], r["associations"], r["receiver"]): r for r in rows}
    label_of = {r["receiver"]: r["label"] for r in rows}
    kind_of = {r["receiver"]: r["kind"] for r in rows}

    panels = 2 + (1 if big else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(max(10, 1.6 * len(cells) + 4), 4.2 * panels), squeeze=False)
    width = 0.8 / max(len(receivers), 1)
    for ax, metric, title in (
        (axes[0][0], "inst_per_s", "instances/s (tmpfs; higher is better; bars: median, whiskers: min–max)"),
        (axes[1][0], "cpu_s_per_1k", "receiver CPU seconds per 1,000 instances (tmpfs; lower is better)"),
    ):
        for i, key in enumerate(receivers):
            xs, ys, lo, hi = [], [], [], []
            for c, cell in enumerate(cells):
                r = by.get((*cell, key))
                if not r or not r[metric]:
                    continue
                s = r[metric]
                xs.append(c - 0.4 + width * (i + 0.5))
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            shade = _color(key, kind_of[key])
            bars = ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=2, color=shade, label=label_of[key])
            if kind_of[key] == "oxidicom":
                for bar, x, up in zip(bars, xs, hi, strict=True):
                    c = round(x + 0.4 - width * (i + 0.5))
                    base = by.get((*cells[c], next((k for k in receivers if kind_of[k] == "storescp"), "")))
                    if base and base[metric]:
                        ratio = bar.get_height() / base[metric]["median"]
                        ax.annotate(
                            f"{ratio:.2f}×",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height() + up),
                            textcoords="offset points",
                            xytext=(0, 3),
                            ha="center",
                            fontsize=8,
                            fontweight="bold",
                            color=shade,
                        )
        for c, cell in enumerate(cells):  # storescp's level across the whole group
            base = next((by.get((*cell, k)) for k in receivers if kind_of[k] == "storescp"), None)
            if base and base[metric]:
                ax.hlines(base[metric]["median"], c - 0.45, c + 0.45, colors=COLORS["storescp"], linestyles="--", lw=1)
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([f"{c} ×{a} assoc" for c, a in cells])
        ax.set_title(title + ("; label: ×storescp" if metric == "inst_per_s" else ""), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.08)
    axes[0][0].legend(fontsize=8, ncol=min(len(receivers), 5), loc="upper left")
    if big:
        ax = axes[2][0]
        names = [f"{r['label']} ({r['storage']})" for r in big]
        vals = [r["rss_increase_mb"]["median"] for r in big]
        ax.barh(names, vals, color=[_color(r["receiver"], r["kind"]) for r in big])
        for y, v in enumerate(vals):
            ax.annotate(f"{v:,.0f} MB", (v, y), textcoords="offset points", xytext=(4, -3), fontsize=8)
        ax.axvline(RSS_TARGET_MB, color=COLORS["oxidicom"], ls="--", lw=1)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_title(
            f"RSS increase while receiving one {big[0]['corpus']} instance (MB; dashed: oxidicom_py's 64 MB target)",
            fontsize=10,
        )
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    m = doc["machine"]
    fig.suptitle(
        f"oxidicom_py receive benchmark, {doc['started_utc'][:16]} — {m['nproc']} CPUs, kernel {m['kernel']},"
        f" {doc['reps']} rep(s)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(doc: dict[str, Any], results_dir: Path, stamp: str) -> dict[str, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(doc)
    paths = {}
    for name, content in (("md", md), ("json", json.dumps(doc, indent=1, default=str))):
        for stem in ("latest", stamp):
            p = results_dir / f"{stem}.{name}"
            p.write_text(content + ("\n" if not content.endswith("\n") else ""))
        paths[name] = results_dir / f"latest.{name}"
    try:
        chart(doc, results_dir / f"{stamp}.png")
        (results_dir / "latest.png").write_bytes((results_dir / f"{stamp}.png").read_bytes())
        paths["png"] = results_dir / "latest.png"
    except Exception as e:  # a chart problem must not lose the numbers
        doc.setdefault("warnings", []).append(f"chart failed: {e!r}")
        print(f"warning: chart failed: {e!r}")
    return paths
