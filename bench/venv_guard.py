"""Run a bench script with the project's venv when the python that started it lacks its
dependencies (``python bench/run.py`` from a bare shell). Standard library only."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def reexec_in_venv(script: str, modules: tuple[str, ...]) -> None:
    """Re-execute ``script`` with ``.venv/bin/python`` if one of ``modules`` cannot be imported."""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError as e:
        venv_python = PROJECT_ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
            os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])
        sys.exit(f"bench/{Path(script).name}: missing dependency ({e}); pip install -e '.[bench]'")
