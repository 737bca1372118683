"""Unpack (or download) the two public sample MR series used by tests and benchmarks.

Importable (``get_samples``) and runnable::

    python sample_data/get_samples.py [DEST]    # DEST defaults to sample_data/downloads

Local tarballs are taken from ``../shared/sample_data`` relative to the project root,
or from the folder named by ``$OXIDICOM_SAMPLE_DATA``; a series whose tarball is not
there is downloaded from GitHub at its pinned commit.
"""

import os
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = PROJECT_ROOT / "sample_data" / "downloads"
EXPECTED_PATHS_NAME = "expected-paths-OXITESTORTHANC.txt"


@dataclass(frozen=True)
class Sample:
    name: str  # also the tarball stem and the folder name under dest
    repo: str  # GitHub owner/name
    commit: str
    instances: int
    subdir: str = ""  # folder of the .dcm files inside the repository

    @property
    def url(self) -> str:
        return f"https://codeload.github.com/{self.repo}/tar.gz/{self.commit}"


SAMPLES = (
    Sample("SAG-anon", "FNNDSC/SAG-anon", "3d6e850b625e940aab02f0120cf5fb15977216bc", 192),
    Sample(
        "example-dicom-structural",
        "datalad/example-dicom-structural",
        "f077bcc8d502ce8155507bd758cb3b7ccc887f40",
        384,
        "dicoms",
    ),
)


def source_dir() -> Path:
    """Folder that may hold the sample tarballs (it need not exist)."""
    override = os.environ.get("OXIDICOM_SAMPLE_DATA")
    return Path(override) if override else PROJECT_ROOT.parent / "shared" / "sample_data"


def expected_paths_file() -> Path | None:
    """The list of storage paths a conforming receiver produces for the samples, if present."""
    path = source_dir() / EXPECTED_PATHS_NAME
    return path if path.is_file() else None


def list_dicom_files(folder: Path) -> list[Path]:
    """Sorted regular files directly in ``folder`` carrying the ``DICM`` magic at byte 128."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():  # also skips dangling symlinks
            continue
        with path.open("rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                found.append(path)
    return found


def _extract(fileobj: IO[bytes], mode: str, target: Path) -> None:
    """Extract regular files and folders of a tarball into ``target``, minus its top folder."""
    with tarfile.open(fileobj=fileobj, mode=mode) as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts[1:]
            if not parts or not (member.isfile() or member.isdir()):
                continue  # the top folder itself, pax headers, symlinks (git-annex pointers)
            if ".." in parts:
                raise ValueError(f"unsafe path in tarball: {member.name}")
            path = target.joinpath(*parts)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, path.open("wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)


def _fetch(sample: Sample, target: Path) -> None:
    tarball = source_dir() / f"{sample.name}.tar.xz"
    if tarball.is_file():
        with tarball.open("rb") as f:
            _extract(f, "r:xz", target)
        return
    print(f"downloading {sample.url}", file=sys.stderr)
    with urllib.request.urlopen(sample.url, timeout=60) as response:
        _extract(response, "r|gz", target)


def _count_dicom(folder: Path) -> int:
    return len(list_dicom_files(folder)) if folder.is_dir() else 0


def get_samples(dest: Path) -> dict[str, Path]:
    """Make sure both sample series are unpacked under ``dest``.

    Returns series name -> folder holding that series' .dcm files. A series already
    complete under ``dest`` is left alone; an incomplete one is unpacked again.
    """
    folders: dict[str, Path] = {}
    for sample in SAMPLES:
        root = Path(dest) / sample.name
        folder = root / sample.subdir
        if _count_dicom(folder) != sample.instances:
            partial = root.with_name(root.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            _fetch(sample, partial)
            count = _count_dicom(partial / sample.subdir)
            if count != sample.instances:
                raise RuntimeError(
                    f"{sample.name}: found {count} DICOM files, expected {sample.instances}"
                    " (a repository whose files live in git-annex holds only pointers;"
                    " fetch it with `datalad get` instead)"
                )
            shutil.rmtree(root, ignore_errors=True)
            partial.rename(root)
        folders[sample.name] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(args[0]) if args else DEFAULT_DEST
    for name, folder in get_samples(dest).items():
        print(f"{name}: {len(list_dicom_files(folder))} instances in {folder}")
    expected = expected_paths_file()
    print(f"expected storage paths: {expected or 'not available'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
