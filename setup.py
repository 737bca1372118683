"""Build hook: the receive path's pure modules compiled with mypyc, when it can be done.

A wheel build (``pip install .``, ``pip wheel .``) compiles the modules of :data:`COMPILED` when
mypyc (in the build requirements) and a C compiler are present; the pure-Python package is the
fallback whenever they are not, or the compilation fails. Never compiled:

* editable installs (``pip install -e .``): a compiled module next to its source would silently
  win over every later edit of that source;
* with ``OXIDICOM_PURE_PYTHON=1``.

Measured (docs/benchmark.md, 2026-12-02): +5 % to +14 % throughput and 6-13 % less CPU per
instance with one association; within the noise with four.
``python -c "import oxidicom_py.dicom.pdu as m; print(m.__file__)"``, run outside the checkout,
shows which one is installed (``.so``: compiled).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "oxidicom_py/dicom/pdu.py",
    "oxidicom_py/dicom/dimse.py",
    "oxidicom_py/dicom/framing.py",
    "oxidicom_py/dicom/acceptor.py",
    "oxidicom_py/storage/header.py",
    "oxidicom_py/storage/naming.py",
    "oxidicom_py/storage/writer.py",
    "oxidicom_py/storage/instance_record.py",
]
MYPY_OPTIONS = ["--ignore-missing-imports", "--follow-imports=silent", "--python-version=3.11"]


def _say(message: str) -> None:
    print(f"oxidicom_py build: {message}", file=sys.stderr)


def ext_modules() -> list[object]:
    building_wheel = any(command in sys.argv for command in ("bdist_wheel", "build_ext", "build"))
    if os.environ.get("OXIDICOM_PURE_PYTHON") == "1":
        _say("OXIDICOM_PURE_PYTHON=1: pure Python")
        return []
    if "editable_wheel" in sys.argv or "develop" in sys.argv or not building_wheel:
        return []  # editable installs stay pure; metadata steps need no compilation
    if shutil.which(os.environ.get("CC", "cc")) is None:
        _say("no C compiler: pure Python")
        return []
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        _say("no Python headers (Python.h; Debian: python3-dev): pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not available: pure Python")
        return []
    try:
        modules = mypycify([*COMPILED, *MYPY_OPTIONS], opt_level="3")
    except BaseException as e:  # mypy reports type errors with SystemExit
        _say(f"mypyc could not compile ({type(e).__name__}: {e}): pure Python")
        return []
    _say(f"compiling {len(COMPILED)} modules with mypyc")
    return list(modules)


class BuildExtOrPure(build_ext):
    """A compiler that fails (a missing library, an odd platform) leaves the pure package: every
    extension already built is removed again (the modules share one mypyc runtime library, so a
    partly compiled package would not import)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            _say(f"compiling failed ({type(e).__name__}: {e}): pure Python")
            for ext in self.extensions:
                with contextlib.suppress(OSError):
                    os.remove(self.get_ext_fullpath(ext.name))
            self.extensions = []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtOrPure})
