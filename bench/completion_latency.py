"""How long after the last instance's C-STORE response is the OxidicomAttemptedPushCount row visible?

    python bench/completion_latency.py [--reps 20] [--instances 50] [--processes N]

Starts ``oxidicom-py serve`` (embedded PostgreSQL in a temporary state folder, files on
tmpfs), pushes a synthetic series per repetition (a new series each time) with a minimal raw
SCU (pynetdicom's SCU loses fast responses now and then, see tests/harness.py RawScu),
notes the moment the last C-STORE-RSP arrives, releases, and polls the database every
millisecond for the push-count row. Prints p50/p90/max of that delay and of the delay from
the release. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from harness import RawScu, dataset_bytes, sop_of  # noqa: E402
from peers import ServeProcess  # noqa: E402

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _synthetic():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("synthetic", ROOT / "sample_data" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--processes", type=int, default=0, help="OXIDICOM_LISTENER_PROCESSES (default: CPUs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oxidicom-latency-", dir="/var/tmp"))
    files_root = Path(tempfile.mkdtemp(prefix="oxidicom-latency-", dir="/dev/shm"))
    try:
        series = _synthetic().generate(
            work / "src", n_series=args.reps, slices=args.instances, rows=64, cols=64, seed=4242
        )
        by_series: dict[str, list[tuple[tuple[str, str], bytes]]] = {}
        for f in series:
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
            by_series.setdefault(uid, []).append((sop_of(f), dataset_bytes(f)))
        env = {
            "OXIDICOM_STATE_DIR": str(work / "state"),
            "OXIDICOM_FILES_ROOT": str(files_root),
            "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        }
        if args.processes:
            env["OXIDICOM_LISTENER_PROCESSES"] = str(args.processes)
        from_ack: list[float] = []
        from_release: list[float] = []
        with ServeProcess(env, work) as rx:
            uri = f"postgresql://postgres:@/postgres?host={(work / 'state' / 'pgdata').resolve()}"
            with psycopg.connect(uri, autocommit=True) as conn:
                for uid, instances in by_series.items():
                    scu = RawScu(rx.port, [(1, MR, [EXPLICIT])], calling="LATENCY", called="OXIDICOMTEST")
                    for (sop_class, sop_instance), data in instances:
                        assert scu.store(1, sop_class, sop_instance, data)[0] == 0
                    last_ack = time.perf_counter()
                    scu.release()
                    released = time.perf_counter()
                    deadline = released + 30
                    while time.perf_counter() < deadline:
                        row = conn.execute(
                            'SELECT 1 FROM pacsfiles_pacsfile WHERE "SeriesInstanceUID" = %s '
                            "AND \"ProtocolName\" = 'OxidicomAttemptedPushCount'",
                            (uid,),
                        ).fetchone()
                        if row:
                            seen = time.perf_counter()
                            from_ack.append(seen - last_ack)
                            from_release.append(seen - released)
                            break
                        time.sleep(0.001)
                    else:
                        raise SystemExit(f"push-count row of {uid} not visible after 30 s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(files_root, ignore_errors=True)

    def summary(xs: list[float]) -> str:
        xs = sorted(xs)
        p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
        return f"p50 {statistics.median(xs) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {xs[-1] * 1000:.1f} ms"

    print(f"{len(from_ack)} series of {args.instances} instances (files on tmpfs, embedded PostgreSQL on disk)")
    print(f"last C-STORE-RSP -> OxidicomAttemptedPushCount row visible: {summary(from_ack)}")
    print(f"A-RELEASE-RP     -> OxidicomAttemptedPushCount row visible: {summary(from_release)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
