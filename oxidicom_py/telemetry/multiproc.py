"""The folder where every process keeps its metric values (prometheus-client multiprocess mode).

Must be set up before ``prometheus_client`` is imported (it picks its value class at import),
so this module imports nothing of it at module level.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX: Final = "oxidicom-metrics-"


def enable(parent: Path | None = None) -> Path:
    """Point this process and the workers it starts at a fresh folder; returns it."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("multiprocess metrics must be enabled before prometheus_client is imported")
    if parent is None and Path("/dev/shm").is_dir():
        parent = Path("/dev/shm")  # memory-mapped values: keep their pages off the disk
    _remove_orphans(parent or Path(tempfile.gettempdir()))
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    os.environ[ENV] = str(folder)
    return folder


def _remove_orphans(parent: Path) -> None:
    """Folders left by receivers that were killed before they could remove theirs."""
    for path in parent.glob(f"{_PREFIX}*-*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_died(pid: int) -> None:
    """Drop a dead worker's live gauges; its counters stay, so totals never go down."""
    if folder() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
