"""Generate synthetic MR or CT series (valid DICOM Part 10 files) of any size.

Importable (``generate``) and runnable::

    python sample_data/synthetic.py OUT --series 2 --slices 50 --rows 256 --cols 256

Files are written as ``OUT/s{series:04d}/i{slice:04d}.dcm``. The same arguments
always give the same UIDs and the same pixel data, so repeated runs are comparable;
change ``--seed`` (or the patient ID) to get a different study.
"""

import argparse
import math
import struct
import sys
import time
import uuid
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

try:
    import numpy as np
except ImportError:  # numpy is only in the test extras
    np = None

TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}
SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage}
# stored values for (background, outer shell, inner volume); CT uses RescaleIntercept -1024
LEVELS = {"MR": (0, 900, 1500), "CT": (0, 2024, 1064)}
_UID_NAMESPACE = uuid.UUID("6f1d3b64-8a40-4c59-9a55-0e1f0c7d2b11")
STUDY_DATE, STUDY_TIME, BIRTH_DATE = "20240315", "093012.000000", "19811102"


def make_uid(*parts: object) -> str:
    """A deterministic ``2.25.`` UID from a name-based (v5) UUID of ``parts``."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def _plane_numpy(rows: int, cols: int, zn: float, levels: tuple[int, int, int], seed: int, plane: int) -> bytes:
    y, x = np.ogrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    r2 = (x / 0.8) ** 2 + (y / 0.65) ** 2 + (zn / 0.9) ** 2
    img = np.full((rows, cols), levels[0], dtype=np.float32)
    img[r2 <= 1.0] = levels[1]
    img[r2 <= 0.8] = levels[2]
    rng = np.random.default_rng([seed, plane])
    img += rng.standard_normal(img.shape, dtype=np.float32) * 15.0
    return np.clip(img, 0, 4095).astype("<u2").tobytes()


def _plane_pure(rows: int, cols: int, zn: float, levels: tuple[int, int, int]) -> bytes:
    """Same phantom without numpy: runs of constant values per row, no noise."""
    bg, shell, inner = (struct.pack("<H", v) for v in levels)
    out = bytearray()
    for r in range(rows):
        yn = 2 * r / max(rows - 1, 1) - 1
        row = [bg] * cols
        for limit, value in ((1.0, shell), (0.8, inner)):
            rest = limit - (yn / 0.65) ** 2 - (zn / 0.9) ** 2
            if rest <= 0:
                continue
            half = 0.8 * math.sqrt(rest) * (cols - 1) / 2
            centre = (cols - 1) / 2
            for c in range(math.ceil(centre - half), math.floor(centre + half) + 1):
                row[c] = value
        out += b"".join(row)
    return bytes(out)


def phantom_plane(rows: int, cols: int, plane: int, depth: int, modality: str, seed: int) -> bytes:
    """Little-endian uint16 pixels of one plane of an ellipsoid phantom ``depth`` planes deep."""
    zn = 2 * (plane + 0.5) / depth - 1
    if np is not None:
        return _plane_numpy(rows, cols, zn, LEVELS[modality], seed, plane)
    return _plane_pure(rows, cols, zn, LEVELS[modality])


def _base_dataset(modality: str, patient_id: str, study_uid: str, rows: int, cols: int, frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = STUDY_TIME
    ds.AccessionNumber = f"ACC{patient_id}"[:16]
    ds.Modality = modality
    ds.Manufacturer = "oxidicom_py synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Synthetic {modality} phantom study"
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "O"
    ds.PatientAge = f"{int(STUDY_DATE[:4]) - int(BIRTH_DATE[:4]) - (STUDY_DATE[4:] < BIRTH_DATE[4:]):03d}Y"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "1.0"
    if modality == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2300", "2.98", "1"
        ds.MagneticFieldStrength = "3"
    else:
        ds.KVP = "120"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = "1"
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    spacing = round(240.0 / max(rows, cols), 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = ("1000", "2000") if modality == "MR" else ("40", "400")
    return ds


def generate(
    out_dir: Path,
    n_series: int = 1,
    slices: int = 10,
    rows: int = 256,
    cols: int = 256,
    modality: str = "MR",
    transfer_syntax: str = "explicit",
    patient_id: str = "SYNTH001",
    seed: int = 0,
    frames: int = 1,
) -> list[Path]:
    """Write ``n_series`` series of ``slices`` instances (one study) and return their paths.

    ``frames > 1`` makes every instance multi-frame, ``frames`` planes deep.
    UIDs depend on seed, patient ID, modality, rows, cols and frames only.
    """
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, not {modality!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}")
    if min(n_series, slices, rows, cols, frames) < 1 or seed < 0:
        raise ValueError("n_series, slices, rows, cols and frames must be >= 1, seed >= 0")

    key = (seed, patient_id, modality, rows, cols, frames)
    ds = _base_dataset(modality, patient_id, make_uid(*key, "study"), rows, cols, frames)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[transfer_syntax]
    # one series of pixel data is reused by the others, so only cache when there are others
    cache: dict[int, bytes] | None = {} if n_series > 1 else None
    paths: list[Path] = []
    for series in range(1, n_series + 1):
        ds.SeriesInstanceUID = make_uid(*key, "series", series)
        ds.FrameOfReferenceUID = make_uid(*key, "frame-of-reference", series)
        ds.SeriesNumber = series
        ds.SeriesDescription = ds.ProtocolName = f"synthetic {modality} phantom {series}"
        series_dir = Path(out_dir) / f"s{series:04d}"
        series_dir.mkdir(parents=True, exist_ok=True)
        for index in range(1, slices + 1):
            z = float((index - 1) * frames)
            ds.SOPInstanceUID = make_uid(*key, "instance", series, index)
            ds.InstanceNumber = index
            ds.ImagePositionPatient = [-120.0, -120.0, z]
            ds.SliceLocation = z
            pixels = cache.get(index) if cache is not None else None
            if pixels is None:
                first = (index - 1) * frames
                pixels = b"".join(
                    phantom_plane(rows, cols, p, slices * frames, modality, seed) for p in range(first, first + frames)
                )
                if cache is not None:
                    cache[index] = pixels
            ds.PixelData = pixels
            ds["PixelData"].VR = "OW"
            path = series_dir / f"i{index:04d}.dcm"
            ds.save_as(path, enforce_file_format=True, overwrite=True)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write synthetic MR/CT DICOM series.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--series", type=int, default=1, help="number of series (default 1)")
    parser.add_argument("--slices", type=int, default=10, help="instances per series (default 10)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--modality", choices=sorted(SOP_CLASSES), default="MR")
    parser.add_argument("--implicit", action="store_true", help="Implicit VR Little Endian")
    parser.add_argument("--frames", type=int, default=1, help="frames per instance (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patient-id", default="SYNTH001")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    paths = generate(
        args.out,
        n_series=args.series,
        slices=args.slices,
        rows=args.rows,
        cols=args.cols,
        modality=args.modality,
        transfer_syntax="implicit" if args.implicit else "explicit",
        patient_id=args.patient_id,
        seed=args.seed,
        frames=args.frames,
    )
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in paths)
    rate = len(paths) / elapsed
    print(f"wrote {len(paths)} files, {size / 1e6:.1f} MB, in {elapsed:.2f} s ({rate:.0f} files/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
