# ruff: noqa: RUF001
"""A/B (or A/B/C) of oxidicom_py builds in alternating short sittings, one table.

    git archive OLD oxidicom_py | tar -x -C /tmp/oxi-a      # and the new commit into /tmp/oxi-b
    python bench/ab.py a=/tmp/oxi-a b=/tmp/oxi-b --rounds 3
    python bench/ab.py --table-only a=/tmp/ab/a b=/tmp/ab/b   # re-read sittings already run

Each round runs one ``bench/run.py`` sitting per side (``--only oxidicom-tmpfs,storescp-fork-B-tmpfs``,
one repetition, the corpora and association counts given), sides in turn, so that the machine's
drift hits every side alike; ``storescp --fork +B`` runs in every sitting as the control and the
scale. The table gives medians over the rounds: inst/s, receiver CPU and CPU including
PostgreSQL's (ms per instance), rows per batch, and each side against the ``storescp --fork +B``
runs of its own sittings.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    from venv_guard import reexec_in_venv

    reexec_in_venv(__file__, ("psutil", "psycopg", "pydicom", "oxidicom_py"))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from typing import Any  # noqa: E402

OXIDICOM = "oxidicom-tmpfs"
DCMTK_BEST = "storescp-fork-B-tmpfs"


def _runs(folder: Path) -> list[dict[str, Any]]:
    """Every ok run of every sitting under ``folder`` (``*/latest.json``)."""
    runs: list[dict[str, Any]] = []
    for doc_path in sorted(folder.glob("*/latest.json")):
        runs += [r for r in json.loads(doc_path.read_text())["runs"] if r.get("ok")]
    return runs


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(sides: dict[str, Path]) -> str:
    cells: dict[tuple[str, int], dict[str, dict[str, float | None]]] = {}
    for side, folder in sides.items():
        runs = _runs(folder)
        for corpus, assoc in sorted({(r["corpus"], r["associations"]) for r in runs}):
            mine = [
                r for r in runs if r["receiver"] == OXIDICOM and (r["corpus"], r["associations"]) == (corpus, assoc)
            ]
            dcmtk = [
                r for r in runs if r["receiver"] == DCMTK_BEST and (r["corpus"], r["associations"]) == (corpus, assoc)
            ]
            cells.setdefault((corpus, assoc), {})[side] = {
                "n": len(mine),
                "inst_per_s": _median([r["inst_per_s"] for r in mine]),
                "cpu": _median([r["cpu_s_per_1k"] for r in mine]),
                "total": _median([r["total_cpu_s_per_1k"] for r in mine if r.get("total_cpu_s_per_1k") is not None]),
                "batch": _median([r["rows_per_batch"] for r in mine if r.get("rows_per_batch")]),
                "dcmtk_inst_per_s": _median([r["inst_per_s"] for r in dcmtk]),
                "dcmtk_cpu": _median([r["cpu_s_per_1k"] for r in dcmtk]),
            }
    names = list(sides)
    head = "| corpus | assoc | " + " | ".join(
        f"{s} inst/s | {s} CPU · incl. PG ms | {s} rows/batch | {s} vs --fork +B: inst/s · CPU" for s in names
    )
    lines = [head + " | storescp --fork +B inst/s · CPU ms |", "|---|---|" + "---|" * (4 * len(names) + 1)]

    def f(v: float | None, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    for (corpus, assoc), by_side in sorted(cells.items()):
        row = f"| {corpus} | ×{assoc} |"
        dcmtk_i = _median([c["dcmtk_inst_per_s"] for c in by_side.values() if c["dcmtk_inst_per_s"]])
        dcmtk_c = _median([c["dcmtk_cpu"] for c in by_side.values() if c["dcmtk_cpu"]])
        for side in names:
            c = by_side.get(side, {})
            ratio_i = (
                c["inst_per_s"] / c["dcmtk_inst_per_s"] if c.get("inst_per_s") and c.get("dcmtk_inst_per_s") else None
            )
            ratio_c = c["total"] / c["dcmtk_cpu"] if c.get("total") and c.get("dcmtk_cpu") else None
            row += (
                f" {f(c.get('inst_per_s'), ',.0f')} | {f(c.get('cpu'), '.3f')} · {f(c.get('total'), '.3f')} |"
                f" {f(c.get('batch'), '.0f')} | {f(ratio_i, '.2f')}× · {f(ratio_c, '.2f')}× |"
            )
        lines.append(row + f" {f(dcmtk_i, ',.0f')} · {f(dcmtk_c, '.3f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sides", nargs="+", metavar="NAME=DIR", help="a side: its name and its oxidicom_py source folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--corpora", default="mr130k,tiny10k")
    p.add_argument("--assoc", default="1,4")
    p.add_argument("--results", type=Path, default=HERE / "results" / "ab")
    p.add_argument("--table-only", action="store_true", help="the sides' DIRs hold sittings already run")
    args = p.parse_args(argv)
    sides = {name: Path(folder) for name, _, folder in (s.partition("=") for s in args.sides)}
    if args.table_only:
        print(table(sides))
        return 0
    import run as bench_run

    code = 0
    for round_number in range(1, args.rounds + 1):
        for side, src in sides.items():
            out = args.results / side / f"round-{round_number}"
            code |= bench_run.main(
                [
                    *("--only", f"{OXIDICOM},{DCMTK_BEST}", "--corpora", args.corpora, "--assoc", args.assoc),
                    *("--reps", "1", "--oxidicom-src", str(src), "--results", str(out)),
                ]
            )
    text = table({side: args.results / side for side in sides})
    (args.results / "table.md").write_text(text + "\n")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
