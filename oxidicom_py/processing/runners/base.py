"""What every runner is given and gives back, and the helpers they share.

A runner must never outlive its time limit: a module still running at ``timeout`` is killed
(its whole process group) and the result says ``timed out``. Output is captured up to
:data:`CAPTURE_LIMIT` bytes per stream (the tail is kept: the end of a log says why it failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAPTURE_LIMIT = 64 * 1024
"""Bytes of stdout and of stderr kept per attempt (the last ones)."""

KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a module is stopped."""

TIMED_OUT = "timed out"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One attempt of one job."""

    job_id: int
    folder: Path
    """The job's folder: ``input/``, ``output/``, ``task.json``."""
    spec: Mapping[str, Any]
    """The rule's ``run`` mapping (``command``, ``container`` or ``http``; ``timeout``, ...)."""
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (the module contract's variables come from :func:`contract_env`)."""

    @property
    def input_dir(self) -> Path:
        return self.folder / "input"

    @property
    def output_dir(self) -> Path:
        return self.folder / "output"

    @property
    def task_file(self) -> Path:
        return self.folder / "task.json"


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_code: int | None
    """The module's exit status (None: it never ran, or was killed)."""
    duration: float
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    """Why the attempt failed (``timed out``, ``exit code 3``, ...); None when it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def log_excerpt(self, limit: int = 4000) -> str:
        """The end of stderr and stdout, for the job record."""
        parts = []
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr[-limit:])
        if self.stdout:
            parts.append("[stdout]\n" + self.stdout[-limit:])
        return "\n".join(parts)


def contract_env(folder: Path, input_dir: Path, output_dir: Path, task_file: Path, job_id: int) -> dict[str, str]:
    """The module contract's variables (PROCESSING.md), also under mercure's and MONAI Deploy's names."""
    return {
        "OXIDICOM_JOB_ID": str(job_id),
        "OXIDICOM_JOB_DIR": str(folder),
        "OXIDICOM_INPUT_DIR": str(input_dir),
        "OXIDICOM_OUTPUT_DIR": str(output_dir),
        "OXIDICOM_TASK": str(task_file),
        "MERCURE_IN_DIR": str(input_dir),
        "MERCURE_OUT_DIR": str(output_dir),
        "MONAI_INPUTPATH": str(input_dir),
        "MONAI_OUTPUTPATH": str(output_dir),
    }


def placeholders(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``argv`` with ``{input}``, ``{output}``, ``{task}`` (and any other key of ``values``) filled in."""
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


class _Tail:
    """The last ``limit`` bytes of a stream."""

    def __init__(self, limit: int = CAPTURE_LIMIT) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            cut = len(self.data) - self.limit
            self.dropped += cut
            del self.data[:cut]

    def text(self) -> str:
        body = self.data.decode("utf-8", "replace")
        return f"[{self.dropped} earlier bytes dropped]\n{body}" if self.dropped else body


async def _drain(stream: asyncio.StreamReader | None, tail: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        tail.add(chunk)


_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child, before exec: die with the worker (a SIGKILLed worker leaves no orphan module)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: int = CAPTURE_LIMIT,
) -> RunResult:
    """Run ``argv`` in a process group of its own; kill the group at ``timeout``.

    The group is also killed when the caller is cancelled (a worker shutting down past its
    grace period), and the cancellation goes on.
    """
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    except OSError as e:
        return RunResult(None, time.monotonic() - started, error=f"cannot start {argv[0]!r}: {e.strerror or e}")
    out, err = _Tail(capture), _Tail(capture)
    readers = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    error: str | None = None
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        error = f"{TIMED_OUT} after {timeout:g} s"
        await _stop(proc)
    except asyncio.CancelledError:
        await _stop(proc)
        raise
    finally:
        # the group may hold the pipes open after the leader exits: do not wait for it forever
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(readers), 2.0)
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers
    code = proc.returncode
    if error is None and code != 0:
        error = f"exit code {code}" if code is not None and code > 0 else f"killed by signal {-(code or 0)}"
    exit_code = code if code is not None and code >= 0 else None  # None: killed by a signal
    return RunResult(exit_code, time.monotonic() - started, out.text(), err.text(), error)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
    _kill_group(proc.pid, signal.SIGKILL)  # the rest of the group, even if the leader is gone
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
