"""The example modules as the node runs them (subprocesses under the contract), outputs checked by dciodvfy.

The synthetic inputs are valid MR Image (and Secondary Capture) instances: dciodvfy must report no error
on them first, so that an error on an output is the module's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DCIODVFY = Path("/usr/bin/dciodvfy")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DCIODVFY.exists(), reason="/usr/bin/dciodvfy (Debian package dicom3tools) is not installed"),
]
CONTRACT_PREFIXES = ("OXIDICOM_", "MERCURE_", "MONAI_")
SPACING = (1.2, 0.9, 0.9)  # slices, rows, columns (mm)


# -- synthetic inputs ------------------------------------------------------------------------


def _common(ds: Dataset, study: str, series: str, number: int, modality: str, description: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", "PHANTOM1", "19800101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20240315", "101500"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", "ACC1"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = modality, series, number, description
    ds.Manufacturer, ds.BodyPartExamined = "oxidicom_py tests", "HEAD"
    ds.ContentDate, ds.ContentTime, ds.PatientOrientation, ds.BurnedInAnnotation = "20240315", "101500", "", "NO"


def _pixels(ds: Dataset, arr: np.ndarray, photometric: str, bits_stored: int, ts: UID) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    if ts.is_compressed:
        ds.compress(ts)
    elif not ts.is_little_endian:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = ts


def mr_slice(study: str, series: str, frame: str, index: int, arr: np.ndarray, ts: UID = ExplicitVRLittleEndian):
    """An MR Image instance with every Type 1 and 2 attribute of its IOD."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    _common(ds, study, series, 3, "MR", "T1 phantom")
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
    ds.InstanceNumber, ds.AcquisitionNumber = index + 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    z = round(index * SPACING[0], 4)
    ds.PixelSpacing, ds.ImageOrientationPatient = list(SPACING[1:]), [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient, ds.SliceLocation, ds.SliceThickness = [0.0, 0.0, z], z, SPACING[0]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500, 15, 1, 3
    ds.ImagingFrequency, ds.ImagedNucleus, ds.PatientPosition = 127.7, "1H", "HFS"
    _pixels(ds, arr.astype(np.uint16), "MONOCHROME2", 12, ts)
    return ds


def sc_rgb(study: str, series: str, arr: np.ndarray) -> Dataset:
    """A Secondary Capture Image instance in RGB."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    _common(ds, study, series, 8, "OT", "Screenshot")
    ds.InstanceNumber, ds.ConversionType = 1, "WSD"
    _pixels(ds, arr, "RGB", 8, ExplicitVRLittleEndian)
    return ds


def write_all(datasets: list[Dataset], folder: Path, nested: bool = True) -> list[Path]:
    paths = []
    for ds in datasets:
        path = folder / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm" if nested else folder / ds.SOPInstanceUID
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ramp(rows: int = 128, columns: int = 128, offset: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    return (x * 7 + y * 3 + offset) % 2000 + 100


def sphere_volume(shape: tuple[int, int, int] = (48, 64, 64), radius: int = 20) -> tuple[np.ndarray, int]:
    """A bright sphere in a dark, slightly noisy background; and the number of voxels inside it."""
    z, y, x = np.indices(shape)
    inside = (z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 + (x - shape[2] // 2) ** 2 <= radius**2
    noise = np.random.default_rng(3).integers(-6, 7, shape)
    return np.where(inside, 1000, 150) + noise, int(inside.sum())


# -- running ---------------------------------------------------------------------------------


def run_module(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CONTRACT_PREFIXES)}
    return subprocess.run(
        [sys.executable, "-m", "oxidicom_py.modules", name],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def contract(job: Path, task: dict | None = None) -> dict[str, str]:
    (job / "output").mkdir(parents=True, exist_ok=True)
    if task is not None:
        (job / "task.json").write_text(json.dumps(task))
    return {
        "OXIDICOM_INPUT_DIR": str(job / "input"),
        "OXIDICOM_OUTPUT_DIR": str(job / "output"),
        "OXIDICOM_TASK": str(job / "task.json"),
    }


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]


def assert_valid(paths: list[Path]) -> None:
    assert paths
    errors = {path.name: dciodvfy_errors(path) for path in paths}
    assert not any(errors.values()), errors


def outputs(job: Path) -> dict[Path, Dataset]:
    files = sorted(p for p in (job / "output").iterdir() if p.name != "result.json")
    return {path: dcmread(path) for path in files}


def assert_new_uids_same_study(outs: dict[Path, Dataset], sources: list[Dataset]) -> None:
    source_series = {ds.SeriesInstanceUID for ds in sources}
    source_sops = {ds.SOPInstanceUID for ds in sources}
    for path, ds in outs.items():
        assert ds.SeriesInstanceUID not in source_series and ds.SOPInstanceUID not in source_sops
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID


# -- burn-in ---------------------------------------------------------------------------------


def test_burn_in_mr_and_rgb_series_pass_dciodvfy(tmp_path: Path) -> None:
    study, mr_series, frame, sc_series = (generate_uid() for _ in range(4))
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGLSLossless]
    sources = [mr_slice(study, mr_series, frame, i, ramp(offset=i), ts) for i, ts in enumerate(syntaxes)]
    sources.append(sc_rgb(study, sc_series, np.repeat((ramp() % 256).astype(np.uint8)[..., None], 3, axis=2)))
    assert_valid(write_all(sources, tmp_path / "input"))  # the input is valid, so errors below are ours

    env = contract(tmp_path, {"settings": {"text": "RESEARCH ONLY"}})
    done = run_module("burn-in", env)
    assert done.returncode == 0, done.stderr

    outs = outputs(tmp_path)
    assert len(outs) == len(sources)
    assert_new_uids_same_study(outs, sources)
    by_source = {ds.SOPInstanceUID: ds for ds in sources}
    new_series: dict[str, set[str]] = {}
    for ds in outs.values():
        source = by_source[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        new_series.setdefault(source.SeriesInstanceUID, set()).add(ds.SeriesInstanceUID)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == source.SeriesDescription + " (burned-in)"
        assert "RESEARCH ONLY" in ds.DerivationDescription
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (
            source.BitsAllocated,
            source.BitsStored,
            source.PixelRepresentation,
        )
        before, after = source.pixel_array, ds.pixel_array
        top = (1 << source.BitsStored) - 1
        assert (after[:24, :100] != before[:24, :100]).sum() > 50  # the text area changed...
        assert (after[:24, :100] == top).sum() > 50  # ...to the top of the range
        assert np.array_equal(after[40:], before[40:])  # and nothing far from it
    assert {k: len(v) for k, v in new_series.items()} == {mr_series: 1, sc_series: 1}
    result = json.loads((tmp_path / "output" / "result.json").read_text())
    assert result["instances"] == len(sources) and set(result["series"]) == {mr_series, sc_series}
    assert_valid(list(outs))


def test_burn_in_reads_flat_mercure_style_input(tmp_path: Path) -> None:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sources = [mr_slice(study, series, frame, i, ramp(64, 64, i)) for i in range(2)]
    write_all(sources, tmp_path / "in", nested=False)  # no extension, no series folder
    (tmp_path / "in" / "task.json").write_text(json.dumps({"process": {"settings": {"suffix": " BURNED"}}}))
    done = run_module("burn-in", {"MERCURE_IN_DIR": str(tmp_path / "in"), "MERCURE_OUT_DIR": str(tmp_path / "out")})
    assert done.returncode == 0, done.stderr
    outs = [dcmread(p) for p in (tmp_path / "out").glob("*.dcm")]
    assert len(outs) == 2 and {ds.SeriesDescription for ds in outs} == {"T1 phantom BURNED"}
    assert len({ds.SeriesInstanceUID for ds in outs}) == 1


# -- volume-report ---------------------------------------------------------------------------


def _content_items(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_volume_report_measures_a_sphere_and_passes_dciodvfy(tmp_path: Path) -> None:
    study, series, frame, decoy = (generate_uid() for _ in range(4))
    volume, inside = sphere_volume()
    sources = [mr_slice(study, series, frame, i, volume[i]) for i in range(volume.shape[0])]
    decoys = [mr_slice(study, decoy, frame, i, np.full((64, 64), 100 + 900 * (i == 1))) for i in range(3)]
    for ds in decoys:
        ds.SeriesNumber = 1  # first by SeriesNumber: only the task's role makes the sphere the one measured
    assert_valid(write_all(sources, tmp_path / "input")[:2] + write_all(decoys, tmp_path / "input")[:1])
    env = contract(tmp_path, {"roles": {"series": series}, "settings": {}})
    done = run_module("volume-report", env)
    assert done.returncode == 0, done.stderr

    expected_ml = inside * np.prod(SPACING) / 1000
    result = json.loads((tmp_path / "output" / "result.json").read_text())
    assert abs(result["volume_ml"] - expected_ml) / expected_ml < 0.02, (result, expected_ml)
    assert abs(result["voxels"] - inside) / inside < 0.02
    assert 150 < result["threshold"] < 1000 and result["series"] == series

    outs = outputs(tmp_path)
    assert_new_uids_same_study(outs, sources)
    kinds = {ds.SOPClassUID.name: ds for ds in outs.values()}
    assert set(kinds) == {"Comprehensive 3D SR Storage", "Secondary Capture Image Storage"}
    sr, sc = kinds["Comprehensive 3D SR Storage"], kinds["Secondary Capture Image Storage"]
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    volumes = [
        item
        for item in _content_items(sr)
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "118565006"
    ]
    assert len(volumes) == 1
    measured = volumes[0].MeasuredValueSequence[0]
    assert float(measured.NumericValue) == pytest.approx(result["volume_ml"], abs=1e-3)
    assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for sop in series_item.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in sources}
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in evidence
    figure = sc.pixel_array
    assert (figure[..., 0] > figure[..., 1] + 40).sum() > 1000  # the component, tinted red
    assert (figure[:20, :150] == 255).all(axis=2).sum() > 50  # the text, in white
    assert_valid(list(outs))


def test_volume_report_threshold_setting_and_its_failure(tmp_path: Path) -> None:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    volume, inside = sphere_volume((16, 32, 32), 6)
    write_all([mr_slice(study, series, frame, i, volume[i]) for i in range(16)], tmp_path / "input")
    done = run_module("volume-report", contract(tmp_path, {"settings": {"threshold": 500}}))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "output" / "result.json").read_text())
    assert (result["voxels"], result["threshold"], result["threshold_method"]) == (inside, 500.0, "settings")
    done = run_module("volume-report", contract(tmp_path, {"settings": {"threshold": 5000}}))
    assert done.returncode == 1
    assert done.stderr.strip() == "volume-report: no voxel at or above the threshold 5000"


# -- contract failures -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["volume-report", "burn-in"])
def test_contract_failures_are_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    (tmp_path / "input").mkdir()
    done = run_module(name, contract(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"{name}: no DICOM files in the input folder {tmp_path / 'input'}"]
    done = run_module(name, {})
    assert done.returncode == 2
    assert done.stderr.strip() == f"{name}: OXIDICOM_INPUT_DIR is not set (nor MERCURE_IN_DIR, MONAI_INPUTPATH)"
    assert not list((tmp_path / "output").iterdir())


def test_unknown_module_is_a_usage_error(tmp_path: Path) -> None:
    done = run_module("segment-everything", contract(tmp_path))
    assert done.returncode == 2
    assert "unknown module 'segment-everything'; the modules are: burn-in, volume-report" in done.stderr
