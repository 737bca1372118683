"""Coverage-guided fuzzing of the upper layer (tests/fuzz/fuzz_upper_layer.py, atheris) in bounded runs.

The default run is bounded in count and time (< 60 s on 2 cores). ``OXIDICOM_FUZZ_SECONDS=600``
turns it into a campaign of that many seconds instead. The fuzzer's own input is never saved
outside ``tmp_path``; a crash is shown with its input in hex.

A crash found: minimise it, commit it under tests/fuzz/fuzz_corpus/upper_layer/ (every run then
starts from it) and replay it in a test of its own, xfail(strict=True) until association.py is
fixed, like test_a_dimse_response_from_the_peer_gets_no_reply was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("atheris")

TESTS = Path(__file__).resolve().parent
HARNESS = TESTS / "fuzz_upper_layer.py"
"""Drives the asyncio adapter around the machine (transport, timers on an event loop, pause/resume)."""
MACHINE_HARNESS = TESTS / "fuzz_acceptor.py"
"""Drives the sans-IO machine alone, with a fake clock (same inputs, same corpus)."""
MACHINE_RUNS = 20_000
REGRESSIONS = TESTS / "fuzz_corpus" / "upper_layer"
"""Committed inputs (minimised crashes), replayed on their own and added to every run's corpus."""

RUNS = 40_000
SEED = 20_240_611
TIME_BOUND = 45
LONG_SECONDS = int(os.environ.get("OXIDICOM_FUZZ_SECONDS", "0"))
MIN_NEW_EDGES = 20
"""Edges the bounded run must reach beyond the seeds alone (measured: seeds 270, 40k runs 314-319)."""

_STATS = re.compile(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)", re.MULTILINE)


def _fuzz(
    *args: str, cwd: Path, timeout: float, harness: Path = HARNESS
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(harness), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - started


def _stats(proc: subprocess.CompletedProcess[str]) -> tuple[int, int, int, str]:
    matches = list(_STATS.finditer(proc.stderr))
    assert matches, f"no DONE line (exit {proc.returncode}):\n{_tail(proc)}"
    last = matches[-1]
    line = proc.stderr[last.start() :].splitlines()[0]
    return int(last[1]), int(last[2]), int(last[3]), line


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of libFuzzer's output (stderr) and of atheris' traceback of a finding (stdout),
    without atheris' list of instrumented modules."""
    lines = (proc.stderr + proc.stdout).splitlines()
    return "\n".join(line for line in lines if "Instrumenting" not in line)[-6000:]


def _crash_report(artifacts: Path) -> str:
    crashes = sorted(artifacts.glob("crash-*")) + sorted(artifacts.glob("timeout-*")) + sorted(artifacts.glob("oom-*"))
    return "\n".join(f"{p.name}: {p.read_bytes().hex()}" for p in crashes)


def _corpus(folder: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "--write-seeds", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    if REGRESSIONS.is_dir():
        for path in REGRESSIONS.iterdir():
            if path.is_file():
                shutil.copy(path, folder / path.name)
    assert len(list(folder.iterdir())) >= 8
    return folder


@pytest.mark.timeout(max(300, LONG_SECONDS + 180))
def test_fuzzing_the_upper_layer_finds_no_crash_and_grows_coverage(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    common = (f"-artifact_prefix={artifacts}/", "-print_final_stats=1", f"-seed={SEED}", "-timeout=10")

    # the seeds alone
    proc, _ = _fuzz("-runs=0", *common, str(corpus), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"a seed crashes:\n{_tail(proc)}\n{_crash_report(artifacts)}"
    _n, seed_cov, _ft, seed_line = _stats(proc)
    assert seed_cov > 150, f"our modules were not instrumented? {seed_line}"

    if LONG_SECONDS:
        bounds = (f"-max_total_time={LONG_SECONDS}",)
        time_bound = LONG_SECONDS
    else:
        bounds = (f"-runs={RUNS}", f"-max_total_time={TIME_BOUND}")
        time_bound = TIME_BOUND
    proc, elapsed = _fuzz(*bounds, *common, str(corpus), cwd=tmp_path, timeout=time_bound + 120)
    assert proc.returncode == 0, f"the fuzzer found a crash:\n{_tail(proc)}\n{_crash_report(artifacts)}"
    runs, cov, features, line = _stats(proc)
    print(f"\nseeds only: {seed_line}\nfuzzed:     {line}  ({elapsed:.1f} s)")
    assert not _crash_report(artifacts)
    if not LONG_SECONDS:
        assert runs == RUNS or elapsed >= TIME_BOUND, (runs, elapsed)
    assert cov >= seed_cov + MIN_NEW_EDGES, f"coverage grew from {seed_cov} to {cov} only"
    assert features > cov


@pytest.mark.timeout(max(300, LONG_SECONDS + 180))
def test_fuzzing_the_machine_directly_finds_no_crash_and_grows_coverage(tmp_path: Path) -> None:
    """The acceptor machine with no event loop: bytes, a fake clock and store results in,
    events and bytes out; its own oracles (tests/fuzz/fuzz_acceptor.py)."""
    corpus = _corpus(tmp_path / "corpus")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    common = (f"-artifact_prefix={artifacts}/", "-print_final_stats=1", f"-seed={SEED}", "-timeout=10")
    proc, _ = _fuzz("-runs=0", *common, str(corpus), cwd=tmp_path, timeout=120, harness=MACHINE_HARNESS)
    assert proc.returncode == 0, f"a seed crashes:\n{_tail(proc)}\n{_crash_report(artifacts)}"
    _n, seed_cov, _ft, seed_line = _stats(proc)
    bounds = (f"-max_total_time={LONG_SECONDS}",) if LONG_SECONDS else (f"-runs={MACHINE_RUNS}", "-max_total_time=30")
    proc, elapsed = _fuzz(
        *bounds, *common, str(corpus), cwd=tmp_path, timeout=(LONG_SECONDS or 30) + 120, harness=MACHINE_HARNESS
    )
    assert proc.returncode == 0, f"the fuzzer found a crash:\n{_tail(proc)}\n{_crash_report(artifacts)}"
    _runs, cov, _features, line = _stats(proc)
    print(f"\nmachine, seeds only: {seed_line}\nmachine, fuzzed:     {line}  ({elapsed:.1f} s)")
    assert cov >= seed_cov + MIN_NEW_EDGES // 2, f"coverage grew from {seed_cov} to {cov} only"


def test_the_seeds_are_complete_associations(tmp_path: Path) -> None:
    """Each seed stream, replayed alone, runs clean (libFuzzer runs files given as arguments once)."""
    corpus = _corpus(tmp_path / "corpus")
    seeds = sorted(corpus.iterdir())
    proc, _ = _fuzz(*map(str, seeds), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, _tail(proc)
    assert proc.stderr.count("Executed ") == len(seeds), _tail(proc)


@pytest.mark.parametrize(
    "name", ["crash-answers-a-c-store-rsp", "crash-b8c7ae23ae1cb59ee36ce190d26c060ee4fb9e94-minimized"]
)
def test_a_dimse_response_from_the_peer_gets_no_reply(tmp_path: Path, name: str) -> None:
    """The fuzzer's first finding, fixed in 593e70f: after the association the peer sends a
    C-STORE-RSP (a response, not a request), which was answered with a C-STORE-RSP "unrecognized
    operation" (0x0211). The first input is that stream written by hand, the second the input
    libFuzzer found, minimised."""
    proc, _ = _fuzz(str(REGRESSIONS / name), cwd=tmp_path, timeout=60)
    assert "a DIMSE response from the peer was answered" not in proc.stdout, _tail(proc)
    assert proc.returncode == 0, _tail(proc)
    assert "Executed " in proc.stderr, _tail(proc)
