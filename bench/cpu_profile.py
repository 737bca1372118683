#!/usr/bin/env python3
"""Where the CPU per received instance goes: one command, the per-part breakdown.

    python bench/cpu_profile.py                       # mr130k and tiny10k, 4 associations, 3 reps (~6 min)
    python bench/cpu_profile.py --corpora tiny10k --reps 1 --py-spy

Three measurements, in one sitting:

1. **Live variants** (through ``bench/run.py``, same harness, tmpfs): oxidicom_py as shipped;
   ``-notrack`` without series progress (no tracker, the plain INSERT); ``-nodb`` without any
   registration (``bench/variants/sitecustomize.py``); and ``storescp --fork +B`` for scale.
   Receiver CPU, PostgreSQL's CPU (the harness's polling subtracted), rows per batch.
2. **The storage path alone**: the same corpus as a byte stream (what storescu sends) fed to
   the association protocol and storage stage in this process, files on tmpfs, no socket, no
   database, no other process: what parsing, the header walk, naming and the file writes cost.
3. With ``--py-spy``: one push of the shipped receiver sampled by py-spy (``pip install py-spy``),
   the functions with the most samples in the workers.

The breakdown: *series progress* = shipped - notrack; *registration* = notrack - nodb; *storage
path* = (2); *event loop, sockets and contention* = nodb - (2). Results: ``bench/results/profile-*.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    from venv_guard import reexec_in_venv

    reexec_in_venv(__file__, ("psutil", "psycopg", "pydicom", "oxidicom_py"))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import corpora  # noqa: E402
import run as bench_run  # noqa: E402

VARIANTS = ("oxidicom-tmpfs", "oxidicom-tmpfs-notrack", "oxidicom-tmpfs-nodb", "storescp-fork-B-tmpfs")
MAX_PDU = 131_072  # OXIDICOM_SCP_MAX_PDU_LENGTH's default: storescu sends PDUs this large to us
PDV_BYTES = MAX_PDU - 6  # a P-DATA-TF's one PDV (4-byte length, context id, header byte)
READ_BYTES = 262_144  # what one socket read hands the protocol, about


# -- 2. the storage path alone ------------------------------------------------------------


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _associate_rq(contexts: dict[tuple[str, str], int]) -> bytes:
    body = struct.pack(">HH", 1, 0) + b"RECV".ljust(16) + b"BENCH".ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for (sop_class, syntax), cid in contexts.items():
        body += _item(0x20, bytes((cid, 0, 0, 0)) + _item(0x30, sop_class.encode()) + _item(0x40, syntax.encode()))
    body += _item(0x50, _item(0x51, struct.pack(">L", 16384)))
    return struct.pack(">BBL", 1, 0, len(body)) + body


def _stream(files: list[Path]) -> tuple[bytes, int]:
    """What a storescu would send for ``files`` (one association), and the number of instances."""
    import pydicom

    from oxidicom_py.dicom import dimse, pdu

    parts: list[bytes] = []
    contexts: dict[tuple[str, str], int] = {}
    for number, path in enumerate(files, 1):
        raw = path.read_bytes()
        (meta_length,) = struct.unpack_from("<L", raw, 132 + 8)
        meta_end = 132 + 12 + meta_length
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        sop_class, sop_instance = str(meta.SOPClassUID), str(meta.SOPInstanceUID)
        syntax = str(meta.file_meta.TransferSyntaxUID)
        cid = contexts.setdefault((sop_class, syntax), 2 * len(contexts) + 1)
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: sop_class,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: number,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0x0000,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
            }
        )
        parts.append(pdu.encode_p_data(cid, command, command=True))
        dataset = raw[meta_end:]
        for start in range(0, len(dataset), PDV_BYTES):
            chunk = dataset[start : start + PDV_BYTES]
            parts.append(pdu.encode_p_data(cid, chunk, command=False, last=start + PDV_BYTES >= len(dataset)))
    parts.append(bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))  # A-RELEASE-RQ
    return _associate_rq(contexts) + b"".join(parts), len(files)


class _Rows:
    """An observer that builds every row (as the shipped one does) and keeps none."""

    def validated(self, row: Any) -> None:
        pass

    def stored(self, row: Any) -> None:
        pass

    def ended(self, outcome: str, counts: Any) -> None:
        pass

    def refused(self, series_uid: str, problem: str) -> None:
        pass


class _Transport:
    """Enough of a transport for the protocol: it answers into the void."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def storage_path(files: list[Path], profile_top: int = 0) -> dict[str, Any]:
    """CPU per instance of protocol + storage alone (files on tmpfs, no socket, no database)."""
    from oxidicom_py.dicom.config import AcceptorConfig
    from oxidicom_py.dicom.negotiation import AcceptancePolicy
    from oxidicom_py.net.protocol import AssociationProtocol
    from oxidicom_py.storage.ingest import StorageStage
    from oxidicom_py.storage.writer import FilesRoot

    data, n = _stream(files)
    root = Path(tempfile.mkdtemp(prefix="oxidicom-profile-", dir="/dev/shm"))
    config = AcceptorConfig(ae_title="RECV", max_pdu_length=MAX_PDU, strict=False, policy=AcceptancePolicy())
    profiler: cProfile.Profile | None = None

    async def feed() -> float:
        stage = StorageStage(FilesRoot(root, fsync=False), None, lambda _info: _Rows())
        protocol = AssociationProtocol(config, stage.association)
        protocol.connection_made(_Transport())  # type: ignore[arg-type]
        view = memoryview(data)
        cpu0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        for start in range(0, len(view), READ_BYTES):
            protocol.data_received(bytes(view[start : start + READ_BYTES]))
            # the row is built on the loop's next turn, after the response: count that turn too
            await asyncio.sleep(0)
        if profiler is not None:
            profiler.disable()
        spent = time.process_time() - cpu0
        protocol.connection_lost(None)
        stored = sum(1 for _ in (root / "SERVICES").rglob("*.dcm"))
        if stored != n:
            raise RuntimeError(f"storage path stored {stored} of {n} instances")
        return spent

    try:
        spent = asyncio.run(feed())
        for _ in range(2):  # the least of 3: this machine's neighbours only ever add time
            shutil.rmtree(root / "SERVICES", ignore_errors=True)
            spent = min(spent, asyncio.run(feed()))
        if profile_top:  # a separate run under the profiler (its overhead stays out of the figure)
            shutil.rmtree(root / "SERVICES", ignore_errors=True)
            profiler = cProfile.Profile()
            asyncio.run(feed())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {"instances": n, "cpu_ms_per_instance": spent / n * 1000}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile_top)
        out["cprofile"] = text.getvalue()
    return out


# -- 3. py-spy --------------------------------------------------------------------------------


def py_spy(corpus: corpora.Corpus, assoc: int, top: int) -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return "py-spy not installed (`pip install py-spy`)"
    import receivers

    sitting = bench_run.Sitting(bench_run.parse_args(["--only", "oxidicom-tmpfs"]), Path(), Path(), Path())
    bench_run.start_database(sitting)
    work = Path(tempfile.mkdtemp(prefix="oxidicom-pyspy-", dir="/dev/shm"))
    try:
        rdef = next(d for d in receivers.receiver_defs([None]) if d.key == "oxidicom-tmpfs")
        running = receivers.start(rdef, work / "rx", sitting.db)
        try:
            raw, pid = work / "py-spy.txt", str(running.proc.pid)
            spy = subprocess.Popen(
                [exe, "record", "--subprocesses", "-r", "250", "-f", "raw", "-o", str(raw), "-p", pid],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
            chunks = bench_run.chunked(corpus.files, assoc)
            _t0, senders = bench_run.start_senders(chunks, rdef.aet, running.port, work)
            bench_run.wait_senders(senders, 300)
            spy.send_signal(2)
            spy.wait(30)
        finally:
            running.stop()
        return _top_frames(raw.read_text() if raw.exists() else "", top)
    finally:
        bench_run.stop_database(sitting)
        shutil.rmtree(work, ignore_errors=True)


def _top_frames(raw: str, top: int) -> str:
    """py-spy's raw (collapsed) stacks: the functions most often on top, and most often anywhere."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (path/file.py:line)" -> "function file.py": one row per function, not per line
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").split(":")[0] for f in stack.split(";")[1:]]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + count
    if not total:
        return "py-spy recorded nothing"
    lines = [f"{total} samples (all processes of the receiver); self = on top of the stack:", ""]
    lines.append("| self % | anywhere % | function |")
    lines.append("|---|---|---|")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {count / total * 100:.1f} | {anywhere[frame] / total * 100:.1f} | `{frame}` |")
    return "\n".join(lines)


# -- the breakdown ----------------------------------------------------------------------------


def _median(cell: dict[str, Any] | None, field: str) -> float | None:
    stats = (cell or {}).get(field)
    return stats["median"] if stats else None


def breakdown(summary: list[dict[str, Any]], paths: dict[str, float], assoc: int) -> list[str]:
    out = [
        "| corpus | receiver | inst/s | receiver ms/inst | PG ms/inst | total ms/inst | rows/batch |",
        "|---|---|---|---|---|---|---|",
    ]
    parts = [
        "",
        "| corpus | storage path alone | event loop, sockets, contention | registration | series progress | total |",
        "|---|---|---|---|---|---|",
    ]
    for corpus in sorted({r["corpus"] for r in summary}):
        cells = {r["receiver"]: r for r in summary if r["corpus"] == corpus and r["associations"] == assoc}
        for key in VARIANTS:
            r = cells.get(key)
            if r is None or not r["runs_ok"]:
                continue
            own = _median(r, "cpu_s_per_1k")
            pg = _median(r, "db_net_cpu_s_per_1k")
            total = _median(r, "total_cpu_s_per_1k") if r["kind"] == "oxidicom" else own
            batch = r.get("rows_per_batch")
            out.append(
                f"| {corpus} | {r['label']} | {_median(r, 'inst_per_s') or 0:,.0f} | {own or 0:.3f} |"
                f" {'-' if pg is None or r['kind'] != 'oxidicom' else f'{pg:.3f}'} | {total or 0:.3f} |"
                f" {'-' if not batch else f'{batch:.0f}'} |"
            )
        full, notrack, nodb = (_median(cells.get(k), "total_cpu_s_per_1k") for k in VARIANTS[:3])
        alone = paths.get(corpus)
        if None not in (full, notrack, nodb) and alone is not None:
            assert full is not None and notrack is not None and nodb is not None
            parts.append(
                f"| {corpus} | {alone:.3f} | {nodb - alone:.3f} | {notrack - nodb:.3f} | {full - notrack:.3f} |"
                f" {full:.3f} |"
            )
    return out + parts


def _rows_per_batch(results: Path) -> dict[tuple[str, str, int], float]:
    doc = json.loads((results / "latest.json").read_text())
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in doc["runs"]:
        if r.get("ok") and r.get("rows_per_batch"):
            groups.setdefault((r["corpus"], r["receiver"], r["associations"]), []).append(r["rows_per_batch"])
    return {k: sorted(v)[len(v) // 2] for k, v in groups.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="mr130k,tiny10k")
    p.add_argument("--assoc", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--oxidicom-src", type=Path, default=None, help="as bench/run.py's (an exported commit)")
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print the storage path's top N functions")
    p.add_argument("--py-spy", action="store_true", help="also sample one push of the shipped receiver with py-spy")
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.corpora.split(",") if n.strip()]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    sitting_dir = args.results / f"profile-{stamp}-sitting"
    run_args = ["--only", ",".join(VARIANTS), "--corpora", ",".join(names), "--assoc", str(args.assoc)]
    run_args += ["--reps", str(args.reps), "--results", str(sitting_dir)]
    if args.oxidicom_src is not None:
        run_args += ["--oxidicom-src", str(args.oxidicom_src)]
    code = bench_run.main(run_args)
    summary = json.loads((sitting_dir / "latest.json").read_text())["summary"]
    batches = _rows_per_batch(sitting_dir)
    for r in summary:
        r["rows_per_batch"] = batches.get((r["corpus"], r["receiver"], r["associations"]))
    specs = {n: corpora.FULL[n] for n in names}
    corpus_map = corpora.ensure(list(specs.values()), bench_run.CORPORA_ROOT, log=bench_run.log)
    paths: dict[str, float] = {}
    notes: list[str] = []
    if args.oxidicom_src is not None:
        sys.path.insert(0, str(args.oxidicom_src))
    for name in names:
        chunk = bench_run.chunked(corpus_map[name].files, args.assoc)[0]  # one association's share
        result = storage_path(chunk, args.cprofile)
        paths[name] = result["cpu_ms_per_instance"]
        if result.get("cprofile"):
            notes += [f"### cProfile of the storage path, {name}", "", "```", result["cprofile"].strip(), "```", ""]
    lines = [
        f"# Where the CPU per instance goes — {stamp}",
        "",
        f"`python bench/cpu_profile.py {' '.join(argv if argv is not None else sys.argv[1:])}`: x{args.assoc}"
        f" associations, tmpfs, medians of {args.reps}; sitting: `{sitting_dir}`.",
        "",
        *breakdown(summary, paths, args.assoc),
        "",
        "Storage path alone: one association's share of the corpus fed as bytes to the protocol and storage stage"
        " in one process (no socket, no database). Registration = without series progress - without registration;"
        " series progress = shipped - without series progress; PG's CPU is included in both.",
        "",
        *notes,
    ]
    if args.py_spy:
        lines += ["## py-spy, one push of the shipped receiver", "", py_spy(corpus_map[names[0]], args.assoc, 25), ""]
    text = "\n".join(lines)
    out = args.results / f"profile-{stamp}.md"
    out.write_text(text)
    shutil.copy(out, args.results / "profile-latest.md")
    print(text)
    print(f"wrote {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
