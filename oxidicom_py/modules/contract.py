"""The module contract, as a module sees it: where the input is, where the output goes, what the task says.

Environment (the first variable set of each row wins)::

    input   OXIDICOM_INPUT_DIR   MERCURE_IN_DIR    MONAI_INPUTPATH
    output  OXIDICOM_OUTPUT_DIR  MERCURE_OUT_DIR   MONAI_OUTPUTPATH
    task    OXIDICOM_TASK        (else ``task.json`` in the input folder, mercure-style; else no task)

The input folder holds ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (oxidicom) or the files directly
(mercure): every ``*.dcm`` below it, and every file without an extension that has the Part 10 preamble,
is read and grouped by its SeriesInstanceUID, whatever folder it is in.

A module's failures are :class:`ModuleError` (one line on stderr, exit code 1); a broken contract (a
variable missing, an empty input) is :class:`ContractError` (exit code 2). :func:`run_module` does that.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

INPUT_VARS = ("OXIDICOM_INPUT_DIR", "MERCURE_IN_DIR", "MONAI_INPUTPATH")
OUTPUT_VARS = ("OXIDICOM_OUTPUT_DIR", "MERCURE_OUT_DIR", "MONAI_OUTPUTPATH")
TASK_VAR = "OXIDICOM_TASK"

_SORT_TAGS = ["SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient"]


class ModuleError(Exception):
    """The module cannot do its work (exit code 1); the message is one line for the job's log."""

    exit_code = 1


class ContractError(ModuleError):
    """The module was not given what the contract promises (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Job:
    input_dir: Path
    output_dir: Path
    task: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        """The rule's free-form settings (``settings``, or mercure's ``process.settings``); {} when none."""
        settings = self.task.get("settings")
        if settings is None:
            settings = (self.task.get("process") or {}).get("settings")
        return dict(settings) if isinstance(settings, Mapping) else {}

    def role(self, name: str) -> str | None:
        """The SeriesInstanceUID the task gives for role ``name``, if any."""
        roles = self.task.get("roles")
        uid = roles.get(name) if isinstance(roles, Mapping) else None
        return uid if isinstance(uid, str) and uid else None


def _first_var(names: tuple[str, ...], env: Mapping[str, str]) -> Path:
    for name in names:
        if env.get(name):
            return Path(env[name])
    others = ", ".join(names[1:])
    raise ContractError(f"{names[0]} is not set (nor {others})")


def _read_task(path: Path) -> dict[str, Any]:
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ContractError(f"cannot read the task file {path}: {e}") from e
    if not isinstance(task, dict):
        raise ContractError(f"the task file {path} is not a JSON object")
    return task


def load_job(env: Mapping[str, str] | None = None) -> Job:
    """The job the environment describes; the output folder is created if it is missing."""
    env = os.environ if env is None else env
    input_dir = _first_var(INPUT_VARS, env)
    output_dir = _first_var(OUTPUT_VARS, env)
    if not input_dir.is_dir():
        raise ContractError(f"the input folder {input_dir} does not exist")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ContractError(f"cannot create the output folder {output_dir}: {e.strerror or e}") from e
    task_file = Path(env[TASK_VAR]) if env.get(TASK_VAR) else input_dir / "task.json"
    return Job(input_dir, output_dir, _read_task(task_file))


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _no_extension(path: Path) -> bool:
    """No suffix, or a numeric one: a file named by its UID (``1.2.840.113619.2.55.3``) has no extension."""
    return not path.suffix or path.suffix[1:].isdigit()


def dicom_files(input_dir: Path) -> list[Path]:
    """``*.dcm`` files below ``input_dir``, and files without an extension that are Part 10 files, sorted."""
    found = []
    for path in sorted(input_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() == ".dcm" or (_no_extension(path) and _has_preamble(path)):
            found.append(path)
    return found


def _normal(orientation: Any) -> np.ndarray | None:
    try:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    except (TypeError, ValueError):
        return None
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    return normal / length if length > 1e-6 else None


def slice_position(header: Dataset, normal: np.ndarray) -> float | None:
    """ImagePositionPatient projected on the slice normal (None when the instance has no position)."""
    position = header.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        return None
    return float(np.dot(np.asarray(position, float), normal))


def series_normal(headers: list[Dataset]) -> np.ndarray | None:
    """The slice normal of the first instance that has an ImageOrientationPatient."""
    for header in headers:
        if "ImageOrientationPatient" in header:
            normal = _normal(header.ImageOrientationPatient)
            if normal is not None:
                return normal
    return None


def _instance_number(header: Dataset) -> int:
    try:
        return int(header.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def sort_geometrically(entries: list[tuple[Path, Dataset]]) -> list[tuple[Path, Dataset]]:
    """By position along the slice normal when every instance has one, else by InstanceNumber (then path)."""
    headers = [header for _, header in entries]
    normal = series_normal(headers)
    positions = [slice_position(h, normal) for h in headers] if normal is not None else []
    if positions and all(p is not None for p in positions):
        keyed = zip(positions, entries, strict=True)
        return [entry for _, entry in sorted(keyed, key=lambda k: (k[0], _instance_number(k[1][1]), k[1][0]))]
    return sorted(entries, key=lambda e: (_instance_number(e[1]), e[0]))


def _header(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True, specific_tags=_SORT_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ModuleError(f"cannot read {path}: {e}") from e


def series_of(input_dir: Path) -> dict[str, list[Path]]:
    """The input's files grouped by SeriesInstanceUID, each series sorted geometrically (see above)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in dicom_files(input_dir):
        header = _header(path)
        uid = str(header.get("SeriesInstanceUID") or "")
        if not uid:
            raise ModuleError(f"{path} has no SeriesInstanceUID")
        groups.setdefault(uid, []).append((path, header))
    if not groups:
        raise ContractError(f"no DICOM files in the input folder {input_dir}")
    return {uid: [path for path, _ in sort_geometrically(entries)] for uid, entries in groups.items()}


def setting(settings: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    """``settings[name]`` converted to ``kind``, ``default`` when absent or null; a clear error when wrong."""
    value = settings.get(name)
    if value is None:
        return default
    if kind is str and not isinstance(value, str):
        raise ModuleError(f"setting {name!r} must be a string, not {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ModuleError(f"setting {name!r} must be a {kind.__name__}, not {value!r}") from e


def write_result(job: Job, result: Mapping[str, Any]) -> None:
    (job.output_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_module(name: str, work: Callable[[Job], None], env: Mapping[str, str] | None = None) -> int:
    """Load the job, run ``work`` on it; a failure is one line on stderr and a non-zero exit code."""
    try:
        work(load_job(env))
    except ModuleError as e:
        _say(f"{name}: {e}")
        return e.exit_code
    except Exception as e:  # a bug or an input nobody foresaw: still one line, still a failure
        _say(f"{name}: unexpected {type(e).__name__}: {e}")
        return 1
    return 0


def _say(message: str) -> None:
    print(" ".join(message.split()), file=sys.stderr)
