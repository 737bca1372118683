"""A job's folder, as the module contract (PROCESSING.md) describes it, and the check of what
the module left in it.

``<jobs root>/job-<id>/``: ``input/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (hard links to
the stored files where the filesystem allows, else copies; the folders are read-only),
``task.json`` and ``output/`` (emptied before each attempt).

Outputs are accepted only if every file under ``output/`` (but ``result.json``) is DICOM with
Series and SOP Instance UIDs of its own: none equal to an input's, none twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pydicom

RESULT_FILE = "result.json"
_INPUT_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"]


class OutputsRejected(ValueError):
    """The module's outputs break the contract; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Inputs:
    count: int
    linked: int
    """How many are hard links (the others are copies)."""
    sop_uids: frozenset[str]
    series_uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Output:
    path: str
    """Relative to ``output/``."""
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str

    def as_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "SOPInstanceUID": self.sop_instance_uid,
            "SeriesInstanceUID": self.series_uid,
            "StudyInstanceUID": self.study_uid,
            "SOPClassUID": self.sop_class_uid,
        }


def folder_of(jobs_root: Path, job_id: int) -> Path:
    return jobs_root / f"job-{job_id}"


def _make_writable(root: Path) -> None:
    for folder, dirs, _files in os.walk(root):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, d), 0o755)
    with contextlib.suppress(OSError):
        os.chmod(root, 0o755)


def remove(folder: Path) -> None:
    if folder.exists():
        _make_writable(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _place(source: Path, target: Path) -> bool:
    """Hard link ``source`` at ``target`` (True), or copy it where links cannot be made."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return True  # the same instance from a second sender
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copyfile(source, target)
    os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return False


def prepare(folder: Path, files_root: Path, stored: Iterable[str], task: Mapping[str, Any]) -> Inputs:
    """Make the job's folder for an attempt: inputs placed from ``stored`` (paths relative to the
    files root), ``task.json`` written, ``output/`` empty. Blocking (run it in a thread)."""
    remove(folder)
    input_dir, output_dir = folder / "input", folder / "output"
    input_dir.mkdir(parents=True)
    output_dir.mkdir()
    count = linked = 0
    sops: set[str] = set()
    series: set[str] = set()
    for relative in stored:
        source = files_root / relative
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=_INPUT_TAGS)
        sop, series_uid = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
        if sop in sops:
            continue
        target_dir = input_dir / series_uid
        target_dir.mkdir(exist_ok=True)
        linked += _place(source, target_dir / f"{sop}.dcm")
        count += 1
        sops.add(sop)
        series.add(series_uid)
    (folder / "task.json").write_bytes(
        orjson.dumps(
            {**task, "input_dir": str(input_dir), "output_dir": str(output_dir)},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
            default=str,
        )
    )
    for d in [*input_dir.iterdir(), input_dir]:
        os.chmod(d, 0o555)  # read-only folders: the module cannot add, remove or rename inputs
    return Inputs(count, linked, frozenset(sops), frozenset(series))


def check_outputs(output_dir: Path, inputs: Inputs) -> tuple[list[Output], Any]:
    """The accepted outputs and ``result.json`` (or None); :class:`OutputsRejected` if any file
    breaks the contract (then none is accepted)."""
    outputs: list[Output] = []
    seen: dict[str, str] = {}
    result: Any = None
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(output_dir).as_posix()
        if path.is_symlink():
            raise OutputsRejected(f"{relative}: a symbolic link (outputs must be regular files)")
        if relative == RESULT_FILE:
            try:
                result = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as e:
                raise OutputsRejected(f"{RESULT_FILE} is not JSON ({e})") from None
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise OutputsRejected(f"{relative}: not a DICOM file ({e})") from None
        values = {tag: str(ds.get(tag, "") or "") for tag in _INPUT_TAGS}
        for tag in _INPUT_TAGS:
            if not values[tag]:
                raise OutputsRejected(f"{relative}: no {tag}")
        sop, series = values["SOPInstanceUID"], values["SeriesInstanceUID"]
        if sop in inputs.sop_uids:
            raise OutputsRejected(f"{relative}: SOPInstanceUID {sop} is an input's (outputs need new UIDs)")
        if series in inputs.series_uids:
            raise OutputsRejected(f"{relative}: SeriesInstanceUID {series} is an input's (outputs need a new series)")
        if sop in seen:
            raise OutputsRejected(f"{relative}: SOPInstanceUID {sop} also in {seen[sop]}")
        seen[sop] = relative
        outputs.append(Output(relative, sop, series, values["StudyInstanceUID"], values["SOPClassUID"]))
    return outputs, result
