"""A processing module for the tests, run by the ``command`` runner: ``python job_module.py MODE [ARG]``.

Modes:
* ``copy``: one output per input series, a copy of its first instance with new UIDs; result.json
  tells what it saw (inputs, task, the contract's variables);
* ``fail-until N``: exit 3 on attempts before N (from task.json), then ``copy``;
* ``hang``: start a child that sleeps, write both pids to ``pids`` in the job folder, sleep;
* ``hang-first``: ``hang`` on attempt 1, ``copy`` after;
* ``same-uids``: copy an input unchanged (the node must reject it);
* ``not-dicom``: write a text file (the node must reject it);
* ``sleep S``: write ``pids``, sleep S seconds, then ``copy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def _inputs() -> dict[str, list[Path]]:
    root = Path(os.environ["OXIDICOM_INPUT_DIR"])
    return {d.name: sorted(d.glob("*.dcm")) for d in sorted(root.iterdir()) if d.is_dir()}


def _copy(task: dict, out: Path) -> None:
    inputs = _inputs()
    for series, files in inputs.items():
        ds = pydicom.dcmread(files[0])
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = f"processed {task.get('rule')}"
        ds.save_as(out / f"{series}-out.dcm", enforce_file_format=True)
    env = {k: os.environ.get(k) for k in ("MERCURE_IN_DIR", "MERCURE_OUT_DIR", "MONAI_INPUTPATH", "MONAI_OUTPUTPATH")}
    (out / "result.json").write_text(
        json.dumps(
            {
                "inputs": {s: len(f) for s, f in inputs.items()},
                "attempt": task.get("attempt"),
                "roles": task.get("roles"),
                "settings": task.get("settings"),
                "series": {
                    uid: {k: v for k, v in s.items() if k != "tags"} for uid, s in task.get("series", {}).items()
                },
                "env": env,
                "argv": sys.argv[1:],
            }
        )
    )


def _hang(folder: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (folder / "pids").write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)


def main() -> int:
    mode = sys.argv[1]
    task = json.loads(Path(os.environ["OXIDICOM_TASK"]).read_text())
    out = Path(os.environ["OXIDICOM_OUTPUT_DIR"])
    folder = Path(os.environ["OXIDICOM_JOB_DIR"])
    attempt = int(task["attempt"])
    if mode == "fail-until":
        if attempt < int(sys.argv[2]):
            print(f"failing on attempt {attempt}", file=sys.stderr)
            return 3
        mode = "copy"
    if mode == "hang-first":
        if attempt == 1:
            _hang(folder)
        mode = "copy"
    if mode == "hang":
        _hang(folder)
    if mode == "sleep":
        (folder / "pids").write_text(str(os.getpid()))
        time.sleep(float(sys.argv[2]))
        mode = "copy"
    if mode == "copy":
        _copy(task, out)
    elif mode == "same-uids":
        first = next(iter(_inputs().values()))[0]
        (out / "copy.dcm").write_bytes(first.read_bytes())
    elif mode == "not-dicom":
        (out / "notes.txt").write_text("hello")
    print(f"{mode} done on attempt {attempt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
