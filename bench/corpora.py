"""Benchmark corpora: generated (or unpacked) once into tmpfs and reused while their spec matches.

Each corpus folder holds a ``manifest.json`` written last (its presence means "complete"):
the spec it was made from and, per file in sending order, its path, size and SOPInstanceUID.
Generation runs in child processes (``python bench/corpora.py generate SPEC_JSON OUT``), so
several corpora are made in parallel and the benchmark process stays small.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = PROJECT_ROOT / "sample_data"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class CorpusSpec:
    name: str  # the row label: mr130k, tiny10k, real576, big500m
    kind: str  # "synthetic" or "real"
    description: str
    n_series: int = 0
    slices: int = 0
    rows: int = 0
    cols: int = 0
    modality: str = "MR"
    frames: int = 1
    seed: int = 0
    memory_only: bool = False  # big500m: only RSS is the point, 1 association, fewer receivers

    @property
    def folder_name(self) -> str:
        if self.kind == "real":
            return self.name
        return f"{self.name}-{self.n_series}x{self.slices}-{self.rows}x{self.cols}x{self.frames}-{self.modality}"


def synthetic(name: str, description: str, n_series: int, slices: int, rows: int, cols: int, **kw: Any) -> CorpusSpec:
    return CorpusSpec(name, "synthetic", description, n_series, slices, rows, cols, **kw)


FULL: dict[str, CorpusSpec] = {
    "mr130k": synthetic("mr130k", "10 series x 200 MR 256x256 (~130 KB)", 10, 200, 256, 256),
    "tiny10k": synthetic("tiny10k", "25 series x 200 CT 64x64 (~10 KB)", 25, 200, 64, 64, modality="CT"),
    "real576": CorpusSpec("real576", "real", "SAG-anon (192) + example-dicom-structural (384), real MR"),
    "big500m": synthetic(
        "big500m", "1 MR instance, 1000 frames of 512x512 (~525 MB)", 1, 1, 512, 512, frames=1000, memory_only=True
    ),
}

QUICK: dict[str, CorpusSpec] = {
    "mr130k": synthetic("mr130k", "2 series x 100 MR 256x256 (~130 KB; quick)", 2, 100, 256, 256),
    "tiny10k": synthetic("tiny10k", "5 series x 100 CT 64x64 (~10 KB; quick)", 5, 100, 64, 64, modality="CT"),
    "real576": FULL["real576"],
    "big500m": synthetic(
        "big500m", "1 MR instance, 100 frames of 512x512 (~52 MB; quick)", 1, 1, 512, 512, frames=100, memory_only=True
    ),
}

ORDER = ("mr130k", "tiny10k", "real576", "big500m")


@dataclass
class Corpus:
    spec: CorpusSpec
    folder: Path
    files: list[Path]
    sizes: list[int]
    sop_uids: list[str]

    @property
    def n(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "description": self.spec.description,
            "instances": self.n,
            "bytes": self.total_bytes,
            "mean_instance_bytes": round(self.total_bytes / max(self.n, 1)),
            "folder": str(self.folder),
        }


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def real_samples_available() -> tuple[bool, str]:
    """Whether the two sample tarballs are present locally (the benchmark never downloads them)."""
    gs = _load_module("bench_get_samples", SAMPLE_DATA / "get_samples.py")
    src = gs.source_dir()
    missing = [s.name for s in gs.SAMPLES if not (src / f"{s.name}.tar.xz").is_file()]
    if missing:
        return False, f"{src} lacks {', '.join(m + '.tar.xz' for m in missing)}"
    return True, str(src)


def _read_manifest(folder: Path, spec: CorpusSpec) -> Corpus | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    if data.get("version") != MANIFEST_VERSION or data.get("spec") != asdict(spec):
        return None
    files = [folder / e["path"] for e in data["files"]]
    if not all(f.is_file() for f in files[:: max(1, len(files) // 50)]):
        return None
    return Corpus(spec, folder, files, [e["size"] for e in data["files"]], [e["sop"] for e in data["files"]])


def _write_manifest(folder: Path, spec: CorpusSpec, files: list[Path]) -> None:
    from pydicom import dcmread

    entries = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        entries.append({"path": str(f.relative_to(folder)), "size": f.stat().st_size, "sop": str(ds.SOPInstanceUID)})
    if len({e["sop"] for e in entries}) != len(entries):
        raise RuntimeError(f"{folder}: SOPInstanceUIDs are not unique")
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": MANIFEST_VERSION, "spec": asdict(spec), "files": entries}))
    tmp.rename(folder / MANIFEST)


def _generate(spec: CorpusSpec, folder: Path) -> None:
    """Runs in a child process: make the corpus in ``folder`` and write its manifest."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if spec.kind == "real":
        gs = _load_module("bench_get_samples", SAMPLE_DATA / "get_samples.py")
        files: list[Path] = []
        for _name, series_folder in sorted(gs.get_samples(folder).items()):
            files.extend(gs.list_dicom_files(series_folder))
    else:
        syn = _load_module("bench_synthetic", SAMPLE_DATA / "synthetic.py")
        files = syn.generate(
            folder / "data",
            n_series=spec.n_series,
            slices=spec.slices,
            rows=spec.rows,
            cols=spec.cols,
            modality=spec.modality,
            transfer_syntax="explicit",
            patient_id=f"BENCH{spec.name.upper()}"[:16],
            seed=spec.seed,
            frames=spec.frames,
        )
    _write_manifest(folder, spec, files)


def ensure(specs: list[CorpusSpec], root: Path, *, regenerate: bool = False, log: Any = print) -> dict[str, Corpus]:
    """Every corpus of ``specs`` under ``root``, generating the missing ones (two at a time)."""
    root.mkdir(parents=True, exist_ok=True)
    ready: dict[str, Corpus] = {}
    todo: list[CorpusSpec] = []
    for spec in specs:
        corpus = None if regenerate else _read_manifest(root / spec.folder_name, spec)
        if corpus is not None:
            log(
                f"corpus {spec.name}: reusing {corpus.n} instances,"
                f" {corpus.total_bytes / 1e6:.1f} MB in {corpus.folder}"
            )
            ready[spec.name] = corpus
        else:
            todo.append(spec)
    running: list[tuple[CorpusSpec, subprocess.Popen[bytes], float]] = []
    deadline = time.monotonic() + 1800
    while todo or running:
        while todo and len(running) < 2:
            spec = todo.pop(0)
            log(f"corpus {spec.name}: generating ({spec.description}) into {root / spec.folder_name}")
            cmd = [sys.executable, __file__, "generate", json.dumps(asdict(spec)), str(root / spec.folder_name)]
            running.append((spec, subprocess.Popen(cmd), time.monotonic()))
        for item in list(running):
            spec, proc, started = item
            code = proc.poll()
            if code is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"corpus {spec.name}: generation timed out")
                continue
            running.remove(item)
            if code != 0:
                for _s, p, _t in running:
                    p.kill()
                    p.wait()
                raise RuntimeError(f"corpus {spec.name}: generation failed (exit {code})")
            corpus = _read_manifest(root / spec.folder_name, spec)
            if corpus is None:
                raise RuntimeError(f"corpus {spec.name}: no valid manifest after generation")
            log(
                f"corpus {spec.name}: {corpus.n} instances, {corpus.total_bytes / 1e6:.1f} MB"
                f" in {time.monotonic() - started:.1f} s"
            )
            ready[spec.name] = corpus
        time.sleep(0.1)
    return {s.name: ready[s.name] for s in specs}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "generate":
        _generate(CorpusSpec(**json.loads(argv[1])), Path(argv[2]))
        return 0
    print("usage: corpora.py generate SPEC_JSON OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
