"""Draw docs/flow.svg: the sequence from a PACS push to results back in the PACS.

    python scripts/flow_diagram.py          # (re)write docs/flow.svg
    python scripts/flow_diagram.py --check  # exit 1 if docs/flow.svg differs (a test runs this)

Plain SVG written by hand-made geometry: no plotting library, the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "flow.svg"

LANES = [
    ("PACS", "(Orthanc, a scanner)"),
    ("oxidicom-py serve", "receivers"),
    ("PostgreSQL", "rows, progress, jobs"),
    ("oxidicom-py process", "worker(s)"),
    ("module", "command / container / http"),
    ("destination", "PACS, sender, TPS"),
]
# (from lane, to lane, label, dashed)
STEPS = [
    (0, 1, "C-STORE x N (association)", False),
    (1, 2, "rows + progress, in batches", False),
    (1, 0, "C-FIND NumberOfSeriesRelatedInstances", True),
    (0, 1, "A-RELEASE", False),
    (1, 2, "series end + rules → job (one transaction)", False),
    (2, 3, "job due (settle window; queue, lock)", True),
    (3, 4, "job folder: input/ task.json output/ — time limit", False),
    (4, 3, "exit 0, output/*.dcm", True),
    (3, 2, "outputs checked + recorded, deliveries (one transaction)", False),
    (3, 5, "C-STORE each output (retried, backoff)", False),
    (5, 3, "status per instance → committed as it arrives", True),
    (5, 1, "routed back? stored, no rule fires (loop protection)", True),
]

W_LANE, TOP, STEP, MARGIN = 170, 90, 46, 30


def svg() -> str:
    width = MARGIN * 2 + W_LANE * len(LANES)
    height = TOP + STEP * (len(STEPS) + 1)
    x = [MARGIN + W_LANE * i + W_LANE // 2 for i in range(len(LANES))]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, (name, sub) in enumerate(LANES):
        out.append(f'<rect x="{x[i] - 75}" y="20" width="150" height="44" rx="6" fill="#e8f0fe" stroke="#3367d6"/>')
        out.append(f'<text x="{x[i]}" y="38" text-anchor="middle" font-weight="bold">{escape(name)}</text>')
        out.append(f'<text x="{x[i]}" y="55" text-anchor="middle" fill="#555">{escape(sub)}</text>')
        out.append(f'<line x1="{x[i]}" y1="64" x2="{x[i]}" y2="{height - 10}" stroke="#bbb" stroke-dasharray="4 4"/>')
    for n, (a, b, label, dashed) in enumerate(STEPS):
        y = TOP + STEP * n + 20
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(
            f'<line x1="{x[a]}" y1="{y}" x2="{x[b]}" y2="{y}" stroke="#333" stroke-width="1.5"{dash} '
            'marker-end="url(#a)"/>'
        )
        mid = (x[a] + x[b]) // 2
        out.append(f'<text x="{mid}" y="{y - 6}" text-anchor="middle">{n + 1}. {escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = svg()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/flow_diagram.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
