"""The example processing modules, in-process: the contract, the volume measurement, the burn-in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSNearLossless, MRImageStorage, RLELossless, generate_uid

from oxidicom_py.modules import MODULES, UnknownModule, run
from oxidicom_py.modules.__main__ import main as modules_main
from oxidicom_py.modules.burn_in import Options, derive, options_from, stored_range
from oxidicom_py.modules.contract import (
    ContractError,
    Job,
    ModuleError,
    dicom_files,
    load_job,
    run_module,
    series_of,
    setting,
)
from oxidicom_py.modules.text_raster import outline, text_mask
from oxidicom_py.modules.volume_report import (
    Volume,
    largest_component,
    load_volume,
    measure,
    otsu_threshold,
    slice_spacing,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"


def image(
    pixels: np.ndarray,
    *,
    series: str = "1.2.3.4",
    number: int = 1,
    z: float | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
) -> Dataset:
    """A small MR-like dataset around ``pixels`` (rows, cols[, 3]) or (frames, rows, cols)."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 5
    ds.SeriesDescription = "T1"
    ds.InstanceNumber = number
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    if z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, z]
    ds.PixelSpacing = [0.5, 0.5]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    bits = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 128, columns: int = 128, maximum: int = 2000) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * 7 + y * 3) % maximum + 100).astype(np.uint16)


# -- the contract ----------------------------------------------------------------------------


def test_load_job_prefers_oxidicom_then_mercure_then_monai(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("a", "b", "c")}
    for folder in dirs.values():
        folder.mkdir()
    env = {"MERCURE_IN_DIR": str(dirs["b"]), "MONAI_INPUTPATH": str(dirs["c"]), "MONAI_OUTPUTPATH": str(tmp_path / "o")}
    job = load_job(env)
    assert (job.input_dir, job.output_dir, job.task) == (dirs["b"], tmp_path / "o", {})
    assert job.output_dir.is_dir()  # created
    assert load_job({**env, "OXIDICOM_INPUT_DIR": str(dirs["a"])}).input_dir == dirs["a"]


def test_load_job_names_the_missing_variable(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="OXIDICOM_OUTPUT_DIR is not set"):
        load_job({"OXIDICOM_INPUT_DIR": str(tmp_path)})
    with pytest.raises(ContractError, match="OXIDICOM_INPUT_DIR is not set"):
        load_job({"OXIDICOM_OUTPUT_DIR": str(tmp_path)})
    with pytest.raises(ContractError, match="does not exist"):
        load_job({"OXIDICOM_INPUT_DIR": str(tmp_path / "nope"), "OXIDICOM_OUTPUT_DIR": str(tmp_path)})


def test_task_file_settings_roles_and_mercure_layout(tmp_path: Path) -> None:
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"roles": {"series": "1.2.3"}, "settings": {"threshold": 300}}))
    env = {"OXIDICOM_INPUT_DIR": str(tmp_path), "OXIDICOM_OUTPUT_DIR": str(tmp_path / "out")}
    job = load_job({**env, "OXIDICOM_TASK": str(task)})
    assert job.settings == {"threshold": 300}
    assert (job.role("series"), job.role("other")) == ("1.2.3", None)
    assert load_job({**env, "OXIDICOM_TASK": str(tmp_path / "absent.json")}).task == {}
    # mercure: task.json in the input folder, settings under process
    task.write_text(json.dumps({"process": {"settings": {"text": "X"}}}))
    assert load_job(env).settings == {"text": "X"}
    task.write_text("{not json")
    with pytest.raises(ContractError, match="cannot read the task file"):
        load_job(env)


def test_setting_converts_or_says_what_is_wrong() -> None:
    assert setting({"t": "300"}, "t", float, None) == 300.0
    assert setting({"t": None}, "t", float, 7) == 7
    with pytest.raises(ModuleError, match="setting 't' must be a float"):
        setting({"t": "high"}, "t", float, None)
    with pytest.raises(ModuleError, match="must be a string"):
        setting({"text": 5}, "text", str, "")


def test_dicom_files_finds_dcm_and_extensionless_part10_only(tmp_path: Path) -> None:
    ds = image(ramp(8, 8))
    nested = write(ds, tmp_path / "1.2.3" / "a.dcm")
    flat = write(ds, tmp_path / "b.DCM")
    bare = write(ds, tmp_path / "sub" / "IM0001")
    uid_named = write(ds, tmp_path / "sub" / "1.2.826.0.1.3680043.8.498.77")  # its "suffix" is .77
    write(ds, tmp_path / "copy.bak")
    (tmp_path / "task.json").write_text("{}")
    (tmp_path / "README").write_text("not dicom")
    assert set(dicom_files(tmp_path)) == {nested, flat, bare, uid_named}


def test_series_of_groups_and_sorts_along_the_slice_normal(tmp_path: Path) -> None:
    # instance numbers run against the positions: the positions win
    for number, z in [(1, 30.0), (2, -10.0), (3, 10.0)]:
        write(image(ramp(8, 8), number=number, z=z), tmp_path / f"i{number}.dcm")
    write(image(ramp(8, 8), series="9.9", number=1), tmp_path / "other" / "x.dcm")
    groups = series_of(tmp_path)
    assert set(groups) == {"1.2.3.4", "9.9"}
    assert [p.name for p in groups["1.2.3.4"]] == ["i2.dcm", "i3.dcm", "i1.dcm"]


def test_series_of_oblique_slices_and_instance_number_fallback(tmp_path: Path) -> None:
    oblique = tmp_path / "oblique"
    for number, offset in [(1, 2.0), (2, 0.0), (3, 1.0)]:
        ds = image(ramp(8, 8), number=number, z=0)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: the normal is +y
        ds.ImagePositionPatient = [5.0 * number, offset, 0.0]
        write(ds, oblique / f"i{number}.dcm")
    assert [p.name for p in series_of(oblique)["1.2.3.4"]] == ["i2.dcm", "i3.dcm", "i1.dcm"]
    unplaced = tmp_path / "unplaced"
    for number in (3, 1, 2):
        write(image(ramp(8, 8), number=number, z=float(number) if number != 2 else None), unplaced / f"i{number}.dcm")
    assert [p.name for p in series_of(unplaced)["1.2.3.4"]] == ["i1.dcm", "i2.dcm", "i3.dcm"]


def test_series_of_empty_input_is_a_contract_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ContractError, match="no DICOM files"):
        series_of(tmp_path)


def test_run_module_exit_codes_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"OXIDICOM_INPUT_DIR": str(tmp_path), "OXIDICOM_OUTPUT_DIR": str(tmp_path / "o")}
    seen: list[Job] = []
    assert run_module("m", seen.append, env) == 0
    assert seen[0].input_dir == tmp_path

    def fail(kind: type[Exception]):
        def work(_: Job) -> None:
            raise kind("it broke\nbadly")

        return work

    assert run_module("m", fail(ModuleError), env) == 1
    assert run_module("m", fail(ContractError), env) == 2
    assert run_module("m", fail(RuntimeError), env) == 1
    assert run_module("m", seen.append, {}) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[2] == "m: unexpected RuntimeError: it broke badly"
    assert len(lines) == 4 and lines[3].startswith("m: OXIDICOM_INPUT_DIR is not set")


def test_module_table_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(MODULES) == {"volume-report", "burn-in"}
    with pytest.raises(UnknownModule, match="unknown module 'nope'"):
        run("nope")
    assert modules_main(["nope"]) == 2
    assert modules_main([]) == 2
    assert "unknown module 'nope'; the modules are: burn-in, volume-report" in capsys.readouterr().err


# -- text ------------------------------------------------------------------------------------


def test_text_mask_is_top_left_and_wraps_on_narrow_images() -> None:
    mask = text_mask("NOT FOR DIAGNOSTIC USE", 512, 512)
    rows, columns = np.nonzero(mask)
    assert rows.max() < 64 and columns.min() < 20 and columns.max() < 400
    narrow = text_mask("NOT FOR DIAGNOSTIC USE", 64, 64)
    rows, columns = np.nonzero(narrow)
    assert columns.max() < 62  # wrapped, not clipped at the right edge
    assert rows.max() - rows.min() > 16  # on more than one line
    ring = outline(narrow)
    assert ring.any() and not (ring & narrow).any()


# -- volume-report ---------------------------------------------------------------------------


def sphere(shape: tuple[int, int, int] = (48, 64, 64), radius: float = 20) -> np.ndarray:
    z, y, x = np.indices(shape)
    center = [(n - 1) / 2 for n in shape]
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2


def test_sphere_volume_within_2_percent_of_its_voxel_volume() -> None:
    inside = sphere()
    noise = np.random.default_rng(7).normal(0, 8, inside.shape)
    voxels = np.where(inside, 900.0, 120.0) + noise
    # a second, smaller bright blob: not the largest component
    voxels[2:6, 2:6, 2:6] = 900
    volume = Volume(voxels, (1.2, 0.9, 0.9), [Dataset()], [None] * inside.shape[0])
    result = measure(volume, None)
    expected_ml = inside.sum() * 1.2 * 0.9 * 0.9 / 1000
    assert abs(result.volume_ml - expected_ml) / expected_ml < 0.02
    assert result.threshold_method == "otsu" and 300 < result.threshold < 700
    assert not result.component[2:6, 2:6, 2:6].any()
    assert measure(volume, 50.0).voxels == inside.size  # everything is one component
    with pytest.raises(ModuleError, match="no voxel at or above the threshold 5000"):
        measure(volume, 5000.0)


def test_otsu_takes_the_middle_of_a_gap_and_refuses_uniform_volumes() -> None:
    values = np.concatenate([np.full(1000, 100.0), np.full(300, 1000.0)])
    assert 400 < otsu_threshold(values) < 700
    with pytest.raises(ModuleError, match="uniform"):
        otsu_threshold(np.full(10, 3.0))


def test_largest_component_is_face_connected() -> None:
    mask = np.zeros((3, 5, 5), bool)
    mask[1, 0:2, 0:2] = True  # 4 voxels
    mask[1, 3, 3] = mask[1, 4, 4] = mask[0, 4, 3] = True  # 3 voxels touching only diagonally
    assert largest_component(mask).sum() == 4
    assert not largest_component(np.zeros((2, 2, 2), bool)).any()


def test_slice_spacing_from_positions_then_spacing_then_thickness() -> None:
    header = Dataset()
    header.SliceThickness = 3.0
    assert slice_spacing([4.0, 0.0, 2.0], header) == 2.0
    assert slice_spacing([1.0, 1.0], header) == 3.0
    header.SpacingBetweenSlices = 2.5
    assert slice_spacing([], header) == 2.5
    with pytest.raises(ModuleError, match="no slice spacing"):
        slice_spacing([], Dataset())


def test_load_volume_sorts_slices_and_applies_rescale(tmp_path: Path) -> None:
    paths = []
    for number, z in [(1, 4.0), (2, 0.0), (3, 2.0)]:
        ds = image(np.full((4, 4), number, np.uint16), number=number, z=z)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1
        paths.append(write(ds, tmp_path / f"{number}.dcm"))
    volume = load_volume(series_of(tmp_path)["1.2.3.4"])
    assert volume.voxels[:, 0, 0].tolist() == [3.0, 5.0, 1.0]  # z 0, 2, 4: instances 2, 3, 1
    assert volume.spacing == (2.0, 0.5, 0.5)
    assert len(volume.headers) == 3 and "PixelData" not in volume.headers[0]


def test_load_volume_reads_an_enhanced_multiframe(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 4), value, np.uint16) for value in (10, 30, 20)])
    ds = image(frames)
    shared, measures, orientation = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.7], 1.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for z in (0.0, 3.0, 1.5):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0, 0, z]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    volume = load_volume([write(ds, tmp_path / "mf.dcm")])
    assert volume.voxels[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    assert volume.spacing == (1.5, 0.8, 0.7)


def test_load_volume_needs_pixel_spacing(tmp_path: Path) -> None:
    ds = image(np.zeros((4, 4), np.uint16), z=0)
    del ds.PixelSpacing
    with pytest.raises(ModuleError, match="no usable PixelSpacing"):
        load_volume([write(ds, tmp_path / "a.dcm")])


# -- burn-in ---------------------------------------------------------------------------------


def burned(ds: Dataset, options: Options | None = None) -> tuple[np.ndarray, np.ndarray, Dataset]:
    source = ds.pixel_array.copy()
    out = derive(ds, "1.2.3.999", options or Options())
    return source, out.pixel_array, out


def test_burn_in_monochrome2_keeps_bits_and_marks_the_top_left() -> None:
    ds = image(ramp(), bits_stored=12)
    source_uid = ds.SOPInstanceUID
    before, after, out = burned(ds)
    text = text_mask("NOT FOR DIAGNOSTIC USE", 128, 128)
    assert (after[text] == 4095).all()
    assert np.array_equal(before[40:], after[40:])  # far from the text: untouched
    assert (out.BitsAllocated, out.BitsStored, out.PixelRepresentation) == (16, 12, 0)
    assert out.SOPInstanceUID != source_uid and out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert (out.SeriesInstanceUID, out.StudyInstanceUID) == ("1.2.3.999", STUDY)
    assert out.BurnedInAnnotation == "YES"
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert out.SeriesDescription == "T1 (burned-in)" and out.SeriesNumber == 1005
    source = out.SourceImageSequence[0]
    assert (source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID) == (MRImageStorage, source_uid)
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "NOT FOR DIAGNOSTIC USE" in out.DerivationDescription


def test_burn_in_signed_monochrome1_rgb_and_multiframe() -> None:
    signed = ramp().astype(np.int16) - 1000
    _, after, out = burned(image(signed, bits_stored=16))
    assert stored_range(out) == (-32768, 32767) and after.max() == 32767 and out.PixelRepresentation == 1
    _, after, _ = burned(image(ramp(), photometric="MONOCHROME1", bits_stored=12))
    assert after.min() == 0  # MONOCHROME1 shows the bottom of its range as white
    rgb = np.repeat((ramp() % 200).astype(np.uint8)[..., None], 3, axis=2)
    before, after, out = burned(image(rgb, photometric="RGB"))
    assert out.PhotometricInterpretation == "RGB" and (after == 255).all(axis=2).any()
    assert np.array_equal(before[40:], after[40:])
    frames = np.stack([ramp(), ramp() + 1])
    before, after, out = burned(image(frames, bits_stored=12))
    assert out.NumberOfFrames == 2 and all((after[f] == 4095).any() for f in (0, 1))
    assert np.array_equal(before[:, 40:], after[:, 40:])


def test_burn_in_decompresses_to_explicit_little_endian() -> None:
    ds = image(ramp(), bits_stored=12)
    ds.compress(RLELossless)
    before, after, out = burned(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(before[40:], after[40:]) and (after != before).any()
    assert "LossyImageCompression" not in out
    lossy = image(ramp(), bits_stored=12)
    lossy.compress(JPEGLSNearLossless, jls_error=2)
    _, _, out = burned(lossy)
    assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == ("01", "ISO_14495_1")


def test_burn_in_attribute_details() -> None:
    ds = image(ramp(32, 32), bits_stored=12)
    del ds.ImageType
    ds.SeriesDescription = "x" * 64
    ds.IconImageSequence = Sequence([Dataset()])
    ds.LargestImagePixelValue = 2100
    _, _, out = burned(ds, Options(text="A", suffix=" (B)", series_number_offset=0))
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]
    assert out.SeriesDescription == "x" * 60 + " (B)" and out.SeriesNumber == 5
    assert "IconImageSequence" not in out and "LargestImagePixelValue" not in out
    assert options_from({}) == Options()
    assert options_from({"text": "a\\nb", "suffix": ""}).text == "a\nb"
    with pytest.raises(ModuleError, match="nothing to burn in"):
        options_from({"text": "  "})
