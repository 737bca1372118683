"""Tests for sample_data/synthetic.py and sample_data/get_samples.py (loaded by path)."""

import filecmp
import importlib.util
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"


def _load(name: str) -> ModuleType:
    module_name = f"oxidicom_sample_data_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SAMPLE_DATA / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


synthetic = _load("synthetic")
samples_mod = _load("get_samples")


def _read(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


# --- synthetic generator -------------------------------------------------------------------


@pytest.fixture(scope="session")
def mr_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic.generate(tmp_path_factory.mktemp("mr"), n_series=2, slices=3, rows=16, cols=12)


def test_generate_layout_and_counts(mr_paths: list[Path]) -> None:
    names = [p.relative_to(p.parent.parent).as_posix() for p in mr_paths]
    assert names == [f"s{s:04d}/i{i:04d}.dcm" for s in (1, 2) for i in (1, 2, 3)]
    assert all(p.is_file() for p in mr_paths)


def test_generated_files_read_back_as_mr(mr_paths: list[Path]) -> None:
    for ds in _read(mr_paths):
        assert ds.preamble == b"\x00" * 128
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.original_encoding == (False, True)
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert (ds.Modality, ds.PatientID, ds.PatientAge) == ("MR", "SYNTH001", "042Y")
        assert (ds.Rows, ds.Columns, ds.BitsStored, ds.PhotometricInterpretation) == (
            16,
            12,
            12,
            "MONOCHROME2",
        )
        assert len(ds.PixelData) == 16 * 12 * 2
        assert len(ds.StudyDate) == 8 and ds.StudyDate.isdigit()
        assert "NumberOfFrames" not in ds


def test_generated_uids(mr_paths: list[Path]) -> None:
    datasets = _read(mr_paths)
    assert len({ds.SOPInstanceUID for ds in datasets}) == 6
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    by_series: dict[str, set[str]] = {}
    for path, ds in zip(mr_paths, datasets, strict=True):
        by_series.setdefault(path.parent.name, set()).add(ds.SeriesInstanceUID)
    assert all(len(uids) == 1 for uids in by_series.values())
    assert len(set.union(*by_series.values())) == 2
    assert [ds.SeriesNumber for ds in datasets] == [1, 1, 1, 2, 2, 2]
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 1, 2, 3]
    assert all(len(ds.SOPInstanceUID) <= 64 for ds in datasets)


def test_slice_positions_increase(mr_paths: list[Path]) -> None:
    z = [float(ds.ImagePositionPatient[2]) for ds in _read(mr_paths[:3])]
    assert z == sorted(z) and len(set(z)) == 3


def test_implicit_ct(tmp_path: Path) -> None:
    paths = synthetic.generate(tmp_path, slices=2, rows=8, cols=8, modality="CT", transfer_syntax="implicit")
    for ds in _read(paths):
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert ds.original_encoding == (True, True)
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT" and ds.RescaleIntercept == -1024


def test_same_seed_same_files_other_seed_other_uids(tmp_path: Path) -> None:
    kwargs = {"n_series": 2, "slices": 2, "rows": 8, "cols": 8}
    first = synthetic.generate(tmp_path / "a", seed=7, **kwargs)
    again = synthetic.generate(tmp_path / "b", seed=7, **kwargs)
    other = synthetic.generate(tmp_path / "c", seed=8, **kwargs)
    for a, b in zip(first, again, strict=True):
        assert filecmp.cmp(a, b, shallow=False)

    def uids(paths: list[Path]) -> set[str]:
        return {ds.SOPInstanceUID for ds in _read(paths)} | {ds.StudyInstanceUID for ds in _read(paths)}

    assert uids(first) == uids(again)
    assert not uids(first) & uids(other)


def test_multiframe(tmp_path: Path) -> None:
    paths = synthetic.generate(tmp_path, slices=2, rows=10, cols=6, frames=4)
    assert len(paths) == 2
    for ds in _read(paths):
        assert ds.NumberOfFrames == 4
        assert len(ds.PixelData) == 4 * 10 * 6 * 2


def test_phantom_is_brighter_inside(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    (path,) = synthetic.generate(tmp_path, slices=1, rows=32, cols=32)
    pixels = pydicom.dcmread(path).pixel_array
    assert pixels.dtype == np.uint16 and pixels.max() < 4096
    assert pixels[16, 16] > 1000 > pixels[0, 0] + 500


def test_generate_without_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "np", None)
    (path,) = synthetic.generate(tmp_path, slices=1, rows=9, cols=7)
    data = pydicom.dcmread(path).PixelData
    assert len(data) == 9 * 7 * 2
    centre = (4 * 7 + 3) * 2
    inner, corner = synthetic.LEVELS["MR"][2], synthetic.LEVELS["MR"][0]
    assert int.from_bytes(data[centre : centre + 2], "little") == inner
    assert int.from_bytes(data[:2], "little") == corner


@pytest.mark.parametrize(
    "kwargs", [{"modality": "US"}, {"transfer_syntax": "jpeg"}, {"slices": 0}, {"frames": 0}, {"seed": -1}]
)
def test_generate_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path, **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path), "--series", "2", "--slices", "2", "--rows", "8", "--cols", "8"]
    assert synthetic.main([*args, "--modality", "CT", "--implicit", "--seed", "3"]) == 0
    assert "wrote 4 files" in capsys.readouterr().out
    ds = pydicom.dcmread(tmp_path / "s0002" / "i0002.dcm")
    assert ds.Modality == "CT" and ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_list_dicom_files_checks_magic(tmp_path: Path) -> None:
    (dicom,) = synthetic.generate(tmp_path / "x", slices=1, rows=4, cols=4)
    folder = dicom.parent
    (folder / "README.md").write_text("not DICOM\n")
    (folder / "short.dcm").write_bytes(b"DICM")
    (folder / "fake.dcm").write_bytes(b"\x00" * 128 + b"DICX" + b"\x00" * 16)
    (folder / "sub").mkdir()
    assert samples_mod.list_dicom_files(folder) == [dicom]


# --- get_samples, local tarballs ----------------------------------------------------------


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source = samples_mod.source_dir()
    missing = [s.name for s in samples_mod.SAMPLES if not (source / f"{s.name}.tar.xz").is_file()]
    if missing:
        pytest.skip(f"sample tarballs {missing} not found in {source}; see sample_data/README.md")
    return samples_mod.get_samples(tmp_path_factory.mktemp("samples"))


def test_get_samples_extracts_both_series(samples: dict[str, Path]) -> None:
    assert set(samples) == {"SAG-anon", "example-dicom-structural"}
    sag = samples_mod.list_dicom_files(samples["SAG-anon"])
    structural = samples_mod.list_dicom_files(samples["example-dicom-structural"])
    assert (len(sag), len(structural)) == (192, 384)
    assert samples["example-dicom-structural"].name == "dicoms"
    assert (samples["SAG-anon"] / "LICENSE").is_file()  # present but not listed
    assert all(p.suffix == ".dcm" for p in sag + structural)


@pytest.mark.parametrize(
    ("name", "patient_id", "series_number"),
    [("SAG-anon", "1449c1d", 5), ("example-dicom-structural", "02", 401)],
)
def test_sample_headers(samples: dict[str, Path], name: str, patient_id: str, series_number: int) -> None:
    files = samples_mod.list_dicom_files(samples[name])
    for path in (files[0], files[-1]):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.PatientID, ds.SeriesNumber, ds.Modality) == (patient_id, series_number, "MR")


def test_get_samples_is_idempotent(samples: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = samples["SAG-anon"].parent

    def no_fetch(*_: object) -> None:
        raise AssertionError("complete samples were unpacked again")

    monkeypatch.setattr(samples_mod, "_fetch", no_fetch)
    assert samples_mod.get_samples(dest) == samples


def test_get_samples_repairs_incomplete_series(samples: dict[str, Path]) -> None:
    victim = samples_mod.list_dicom_files(samples["SAG-anon"])[10]
    victim.unlink()
    assert samples_mod.get_samples(samples["SAG-anon"].parent) == samples
    assert victim.is_file()
    assert len(samples_mod.list_dicom_files(samples["SAG-anon"])) == 192


def test_expected_paths_file(samples: dict[str, Path]) -> None:
    path = samples_mod.expected_paths_file()
    assert path is not None
    lines = path.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 576
    assert all(line.startswith("SERVICES/PACS/OXITESTORTHANC/") for line in lines)


# --- get_samples, download branch (network faked) --------------------------------------------


def _github_tarball(sample: Any, template: bytes, annexed: bool = False) -> bytes:
    """A tar.gz laid out like codeload.github.com's: top folder REPO-COMMIT, pax header."""
    top = f"{sample.repo.split('/')[1]}-{sample.commit}"
    folder = f"{top}/{sample.subdir}" if sample.subdir else top
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.pax_headers = {"comment": sample.commit}

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(f"{top}/README.md", b"readme\n")
        for i in range(sample.instances):
            if annexed:
                link = tarfile.TarInfo(f"{folder}/{i:04d}.dcm")
                link.type, link.linkname = tarfile.SYMTYPE, "../.git/annex/objects/x"
                tar.addfile(link)
            else:
                add(f"{folder}/{i:04d}.dcm", template)
    return buffer.getvalue()


def _fake_github(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, annexed: bool = False) -> list[str]:
    (template,) = synthetic.generate(tmp_path / "template", slices=1, rows=2, cols=2)
    bodies = {s.url: _github_tarball(s, template.read_bytes(), annexed and bool(s.subdir)) for s in samples_mod.SAMPLES}
    requested: list[str] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(bodies[url])

    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    monkeypatch.setenv("OXIDICOM_SAMPLE_DATA", str(empty))
    monkeypatch.setattr(samples_mod.urllib.request, "urlopen", urlopen)
    return requested


def test_download_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = _fake_github(monkeypatch, tmp_path)
    assert samples_mod.expected_paths_file() is None
    found = samples_mod.get_samples(tmp_path / "dest")
    assert requested == [
        "https://codeload.github.com/FNNDSC/SAG-anon/tar.gz/3d6e850b625e940aab02f0120cf5fb15977216bc",
        "https://codeload.github.com/datalad/example-dicom-structural/tar.gz/f077bcc8d502ce8155507bd758cb3b7ccc887f40",
    ]
    assert found["SAG-anon"] == tmp_path / "dest" / "SAG-anon"
    assert (found["SAG-anon"] / "README.md").is_file()
    assert len(samples_mod.list_dicom_files(found["SAG-anon"])) == 192
    assert len(samples_mod.list_dicom_files(found["example-dicom-structural"])) == 384
    samples_mod.get_samples(tmp_path / "dest")
    assert len(requested) == 2  # nothing downloaded the second time


def test_download_of_annex_pointers_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_github(monkeypatch, tmp_path, annexed=True)
    with pytest.raises(RuntimeError, match="found 0 DICOM files, expected 384"):
        samples_mod.get_samples(tmp_path / "dest")
    assert not (tmp_path / "dest" / "example-dicom-structural").exists()
