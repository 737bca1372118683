"""Load: 16 concurrent associations; no errors, memory bounded, every instance registered once.

The default run pushes 16 x 100 instances once. ``OXIDICOM_SOAK=1`` runs the soak instead:
rounds of 16 x 500 against one running receiver for ``OXIDICOM_SOAK_SECONDS`` (default 300),
fresh SOP Instance UIDs every round, each round checked and its files deleted, the receiver's
RSS bounded from the end of round 1 to the end; run it with ``pytest -s`` to see its figures.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest
from harness import LOOPBACK, load_script, peer_env, wait_until
from peers import ServeProcess

pytestmark = pytest.mark.integration

SOAK = bool(os.environ.get("OXIDICOM_SOAK"))
ASSOCIATIONS = 16
PER_ASSOCIATION = 500 if SOAK else 100
SOAK_SECONDS = float(os.environ.get("OXIDICOM_SOAK_SECONDS", "300"))
SOAK_RSS_GROWTH_MB = 64
"""Bound on the receiver's RSS growth (all its processes) from the end of round 1 to the end."""
SAMPLE_INTERVAL = 0.05
"""Seconds between RSS samples while senders run."""


def _tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 1e6


def _rss_by_process(pid: int) -> dict[int, float]:
    """RSS in MB of the receiver and each of its worker processes, by pid."""
    proc = psutil.Process(pid)
    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out[p.pid] = p.memory_info().rss / 1e6
        except psutil.NoSuchProcess:  # a worker that exits between listing and reading
            continue
    return out


@pytest.mark.skipif(SOAK, reason="OXIDICOM_SOAK=1 runs test_soak instead")
def test_sixteen_concurrent_associations(tmp_path: Path, db_uri: str) -> None:
    synthetic = load_script("synthetic")
    groups = [
        synthetic.generate(tmp_path / f"src{i}", n_series=1, slices=PER_ASSOCIATION, rows=32, cols=32, seed=500 + i)
        for i in range(ASSOCIATIONS)
    ]
    total = ASSOCIATIONS * PER_ASSOCIATION
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
    }
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        idle_rss = _tree_rss_mb(rx.proc.pid)
        peak_rss = idle_rss
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                [
                    "/usr/bin/storescu",
                    "-aet",
                    f"LOAD{i:02d}",
                    "-aec",
                    "OXIDICOMTEST",
                    LOOPBACK,
                    str(rx.port),
                    *map(str, files),
                ],
                env=peer_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, files in enumerate(groups)
        ]
        deadline = time.monotonic() + 600
        while any(s.poll() is None for s in senders):
            assert time.monotonic() < deadline, "senders did not finish in 10 minutes"
            peak_rss = max(peak_rss, _tree_rss_mb(rx.proc.pid))
            time.sleep(0.05)  # the RSS sampling interval
        elapsed = time.monotonic() - started
        assert [s.returncode for s in senders] == [0] * ASSOCIATIONS, [s.stderr.read() for s in senders if s.stderr]

        def registered() -> int:
            with psycopg.connect(db_uri) as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT fname) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p "
                    "ON p.id = f.pacs_id WHERE p.identifier LIKE 'LOAD%%'"
                ).fetchone()
            assert row is not None and row[0] == row[1]  # never twice
            return int(row[0])

        wait_until(lambda: registered() == total, 60, what="every instance registered")
        assert len(list((tmp_path / "files" / "SERVICES").rglob("*.dcm"))) == total
        assert rx.messages("error") == []
        assert peak_rss - idle_rss < 200, f"memory grew by {peak_rss - idle_rss:.0f} MB"
        warnings.warn(
            f"load: {ASSOCIATIONS} associations x {PER_ASSOCIATION} instances in {elapsed:.1f} s "
            f"({total / elapsed:.0f} inst/s); receiver RSS {idle_rss:.0f} -> peak {peak_rss:.0f} MB",
            stacklevel=1,
        )
    assert rx.proc.returncode == 0


# -- the soak ---------------------------------------------------------------------------------------


def _sop_uid(raw: bytes) -> bytes:
    """The SOP Instance UID of a Part 10 file, from its (0002,0003) element (explicit VR LE)."""
    at = raw.index(b"\x02\x00\x03\x00UI", 132)
    (length,) = struct.unpack_from("<H", raw, at + 6)
    return raw[at + 8 : at + 8 + length].rstrip(b"\x00")


def _fresh(uid: bytes, round_number: int) -> bytes:
    """``uid`` (``2.25.<digits>``) with its first four digits replaced by ``9`` and the round
    number: as long as before (so the file is rewritten by a plain bytes replacement), distinct
    from every UID of every other round."""
    assert uid.startswith(b"2.25.") and len(uid) > 10 and 0 <= round_number < 1000
    return b"2.25.9" + b"%03d" % round_number + uid[9:]


@dataclass
class _Source:
    path: Path
    raw: bytes
    uid: bytes


@dataclass
class _Round:
    number: int
    push_seconds: float
    rss_end: dict[int, float]
    rss_peak: dict[int, float]
    stored_bytes: int


def _push(rx: ServeProcess, groups: list[list[Path]], aets: list[str]) -> tuple[float, dict[int, float]]:
    """Run one storescu per group at once; return the seconds they took and the peak RSS per process."""
    assert rx.proc is not None
    peak = _rss_by_process(rx.proc.pid)
    started = time.monotonic()
    senders = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aet", aet, "-aec", "OXIDICOMTEST", LOOPBACK, str(rx.port), *map(str, files)],
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for aet, files in zip(aets, groups, strict=True)
    ]
    deadline = started + 600
    while any(s.poll() is None for s in senders):
        if time.monotonic() > deadline:
            for s in senders:
                s.kill()
            pytest.fail("senders did not finish in 10 minutes")
        for pid, rss in _rss_by_process(rx.proc.pid).items():
            peak[pid] = max(peak.get(pid, 0.0), rss)
        time.sleep(SAMPLE_INTERVAL)  # the RSS sampling interval
    elapsed = time.monotonic() - started
    assert [s.returncode for s in senders] == [0] * len(senders), [s.stderr.read() for s in senders if s.stderr]
    for s in senders:
        if s.stderr is not None:
            s.stderr.close()
    return elapsed, peak


def _round_rows(db_uri: str, prefix: str) -> tuple[list[str], int]:
    """fnames of the instance rows of one round's AE titles, and the number of its push-count markers."""
    with psycopg.connect(db_uri) as conn:
        fnames = [
            fname
            for (fname,) in conn.execute(
                "SELECT f.fname FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id "
                "WHERE p.identifier LIKE %s",
                (prefix + "%",),
            ).fetchall()
        ]
        markers = conn.execute(
            "SELECT count(*) FROM pacsfiles_pacsfile WHERE \"ProtocolName\" = 'OxidicomAttemptedPushCount' "
            'AND "SeriesDescription" = %s AND fname LIKE %s',
            (str(PER_ASSOCIATION), f"%/{prefix}%"),
        ).fetchone()
    assert markers is not None
    return fnames, int(markers[0])


@pytest.mark.skipif(not SOAK, reason="the soak runs with OXIDICOM_SOAK=1 (OXIDICOM_SOAK_SECONDS, default 300)")
@pytest.mark.timeout(SOAK_SECONDS + 600)  # generating the sources, the last round, shutting down
def test_soak(tmp_path: Path, db_uri: str) -> None:
    """Rounds of 16 x 500 for OXIDICOM_SOAK_SECONDS against one receiver: after every round no
    failure status, one row per instance sent, none twice, every association's push count
    registered, the files and rows the same; the receiver's processes never restart and their
    RSS grows less than SOAK_RSS_GROWTH_MB from the end of round 1 to the end.

    Each round stores 8,000 files of ~3.4 KB (28 MB, ~33 MB in 4 KB blocks): they are deleted
    once checked, or a 5-minute soak (~30 rounds) would leave ~1 GB and ever slower checks behind.
    """
    synthetic = load_script("synthetic")
    groups = [
        synthetic.generate(tmp_path / f"src{i}", n_series=1, slices=PER_ASSOCIATION, rows=32, cols=32, seed=500 + i)
        for i in range(ASSOCIATIONS)
    ]
    sources = []
    for path in (p for group in groups for p in group):
        raw = path.read_bytes()
        uid = _sop_uid(raw)
        assert raw.count(uid) == 2, path  # the File Meta Information and the dataset
        sources.append(_Source(path, raw, uid))
    per_round = ASSOCIATIONS * PER_ASSOCIATION
    files_root = tmp_path / "files"
    pacs = files_root / "SERVICES" / "PACS"
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(files_root),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
    }
    rounds: list[_Round] = []
    soak_started = time.monotonic()
    max_rounds = 999  # _fresh's limit; at ~8 s a round, far beyond any sensible OXIDICOM_SOAK_SECONDS
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        processes = set(_rss_by_process(rx.proc.pid))
        rss_idle = _rss_by_process(rx.proc.pid)
        for number in range(1, max_rounds + 1):
            if rounds and time.monotonic() - soak_started >= SOAK_SECONDS:
                break
            for source in sources:  # fresh SOP Instance UIDs for this round
                source.path.write_bytes(source.raw.replace(source.uid, _fresh(source.uid, number)))
            os.sync()  # our own writeback (the sources, the last round's deletions) does not slow the round
            prefix = f"R{number:03d}A"
            aets = [f"{prefix}{i:02d}" for i in range(ASSOCIATIONS)]
            push_seconds, rss_peak = _push(rx, groups, aets)

            def settled(prefix: str = prefix) -> bool:
                fnames, markers = _round_rows(db_uri, prefix)
                return len(fnames) == per_round and markers == ASSOCIATIONS

            wait_until(settled, 120, what=f"round {number}: every instance and push count registered")
            fnames, _ = _round_rows(db_uri, prefix)
            assert len(set(fnames)) == len(fnames) == per_round  # never twice
            stored = [p for aet in aets for p in (pacs / aet).rglob("*.dcm")]
            assert {str(p.relative_to(files_root)) for p in stored} == set(fnames)
            ended = [
                line
                for line in rx.lines
                if line.get("calling_ae", "").startswith(prefix) and line.get("msg", "").startswith("association ended")
            ]
            assert sorted(line["calling_ae"] for line in ended) == aets
            for line in ended:  # the receiver's own count of what it answered
                assert (line["outcome"], line["received"], line["stored"]) == (
                    "released",
                    PER_ASSOCIATION,
                    PER_ASSOCIATION,
                )
                assert line["rejected"] == line["failed"] == 0
            rss_end = _rss_by_process(rx.proc.pid)
            assert set(rss_end) == processes, "a receiver process exited or was restarted"
            rounds.append(_Round(number, push_seconds, rss_end, rss_peak, sum(p.stat().st_size for p in stored)))
            for aet in aets:  # checked: delete the round's files and its markers
                shutil.rmtree(pacs / aet)
                shutil.rmtree(pacs / "org.fnndsc.oxidicom" / "SERVICES" / "PACS" / aet, ignore_errors=True)
        wall = time.monotonic() - soak_started

        assert rx.messages("error") == []
        with psycopg.connect(db_uri) as conn:
            total = conn.execute(
                "SELECT count(*), count(DISTINCT fname) FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p "
                "ON p.id = f.pacs_id WHERE p.identifier LIKE 'R%%A%%'"
            ).fetchone()
        assert total == (len(rounds) * per_round,) * 2
        first, last = rounds[0], rounds[-1]
        growth = sum(last.rss_end.values()) - sum(first.rss_end.values())
        supervisor = rx.proc.pid
        per_process = ", ".join(
            f"{'supervisor' if pid == supervisor else f'worker {pid}'} "
            f"{first.rss_end[pid]:.0f}/{last.rss_end[pid]:.0f}/{max(r.rss_peak.get(pid, 0.0) for r in rounds):.0f}"
            for pid in sorted(processes, key=lambda pid: (pid != supervisor, pid))
        )
        instances = len(rounds) * per_round
        push = sum(r.push_seconds for r in rounds)
        print(
            f"\nsoak figures: {len(rounds)} rounds x {ASSOCIATIONS} associations x {PER_ASSOCIATION} instances = "
            f"{instances:,} instances in {wall:.0f} s ({push:.0f} s pushing: {instances / push:,.0f} inst/s while "
            f"pushing, {instances / wall:,.0f} inst/s overall; rounds {min(r.push_seconds for r in rounds):.1f}-"
            f"{max(r.push_seconds for r in rounds):.1f} s); {first.stored_bytes / 1e6:.0f} MB stored per round; "
            f"RSS MB first/last/max per process: {per_process}; idle {sum(rss_idle.values()):.0f} MB, "
            f"growth round 1 -> end {growth:+.1f} MB (bound {SOAK_RSS_GROWTH_MB}); "
            f"load average at the end {os.getloadavg()[0]:.1f}"
            f"\nsoak push seconds by round: {' '.join(f'{r.push_seconds:.1f}' for r in rounds)}"
        )
        assert growth < SOAK_RSS_GROWTH_MB, f"RSS grew by {growth:.1f} MB from round 1 to round {last.number}"
    assert rx.proc.returncode == 0
