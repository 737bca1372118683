"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import load_script


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two real sample series, or synthetic stand-ins (192 + 384 instances) when absent."""
    samples = load_script("get_samples")
    dest = tmp_path_factory.mktemp("samples")
    expected = samples.expected_paths_file()
    try:
        folders = samples.get_samples(dest)
        files = [f for folder in folders.values() for f in samples.list_dicom_files(folder)]
        real = expected is not None and len(files) == 576
    except Exception as e:  # no local copy and no network: fall back, loudly
        warnings.warn(f"sample data unavailable ({e})", stacklevel=1)
        real = False
    if not real:
        warnings.warn(
            "../shared/sample_data not found: the end-to-end tests use synthetic series (192 + 384) "
            "and cannot check the reference's 576 paths",
            stacklevel=1,
        )
        synthetic = load_script("synthetic")
        files = synthetic.generate(dest / "synthetic-a", slices=192, rows=64, cols=64, patient_id="SYNA", seed=1)
        files += synthetic.generate(dest / "synthetic-b", slices=384, rows=64, cols=64, patient_id="SYNB", seed=2)
        expected = None
    by_series: dict[str, list[Path]] = {}
    for f in files:
        by_series.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID), []).append(f)
    return {"files": files, "by_series": by_series, "expected": expected, "real": real}
