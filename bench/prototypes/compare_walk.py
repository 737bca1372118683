#!/usr/bin/env python3
"""The shipped header walker against a typed Cython prototype (``cwalk.pyx``), per header.

    python bench/prototypes/compare_walk.py          # Cython comes with the bench extras

Builds the prototype in a temporary folder, checks that it finds the same values as the shipped
walker on the first 200 headers of each corpus, and prints the least of 7 timings of each.
Only a measurement of what a compiled core would save on this one loop (docs/benchmark.md,
2026-12-03); nothing here is part of the package.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

if __name__ == "__main__":
    from venv_guard import reexec_in_venv

    reexec_in_venv(__file__, ("pydicom", "oxidicom_py", "Cython"))

import corpora  # noqa: E402
import run as bench_run  # noqa: E402

from oxidicom_py.storage import header  # noqa: E402

_SETUP = "from setuptools import setup\nfrom Cython.Build import cythonize\nsetup(ext_modules=cythonize('cwalk.pyx'))\n"


def build(folder: Path) -> None:
    (folder / "cwalk.pyx").write_text((HERE / "cwalk.pyx").read_text())
    (folder / "setup.py").write_text(_SETUP)
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=folder, check=True, capture_output=True
    )
    sys.path.insert(0, str(folder))


def datasets(name: str, count: int = 200) -> list[bytes]:
    corpus = corpora.ensure([corpora.FULL[name]], bench_run.CORPORA_ROOT, log=lambda *_: None)[name]
    out = []
    for path in corpus.files[:count]:
        raw = path.read_bytes()
        (meta_length,) = struct.unpack_from("<L", raw, 140)
        out.append(raw[144 + meta_length : 144 + meta_length + 16384])
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder))
        import cwalk  # type: ignore[import-not-found]

        for name in ("tiny10k", "mr130k"):
            ds = datasets(name)
            for d in ds:
                assert cwalk.walk(d, False, False) == header.walk(d, implicit=False, little=True, complete=False)

            def shipped(ds: list[bytes] = ds) -> None:
                for d in ds:
                    header.walk(d, implicit=False, little=True, complete=False)

            def typed(ds: list[bytes] = ds) -> None:
                for d in ds:
                    cwalk.walk(d, False, False)

            per = [min(timeit.repeat(f, number=5, repeat=7)) / 5 / len(ds) * 1e6 for f in (shipped, typed)]
            print(f"{name}: shipped walker {per[0]:.1f} us, typed prototype {per[1]:.1f} us per header")
    return 0


if __name__ == "__main__":
    sys.exit(main())
