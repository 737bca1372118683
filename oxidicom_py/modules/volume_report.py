"""volume-report: the volume of the largest bright structure of a 3-D series (HippoVolume's idea, no network).

Settings (task.json ``settings``): ``threshold`` (in modality units: after RescaleSlope/Intercept, so HU
for CT), ``role`` (the task role that names the series, default ``series``).

1. The series: the one the task's role names; else the only one the roles name; else the first image
   series by (SeriesNumber, SeriesInstanceUID). A stack of single-frame slices, sorted along the slice
   normal, or one multi-frame instance.
2. Threshold: ``settings.threshold`` if given, else Otsu's on a 256-bin histogram of the whole volume
   between its minimum and maximum (deterministic; of equally good splits, the middle one). Voxels at or
   above it are foreground.
3. The largest 3-D connected component of the foreground (6-connectivity: faces, ``scipy.ndimage.label``).
4. Volume (mL) = voxels x PixelSpacing[0] x PixelSpacing[1] x slice spacing / 1000. The slice spacing is
   the median distance between consecutive slice positions; else SpacingBetweenSlices; else SliceThickness.

Writes a Comprehensive 3D SR (TID 1500 Measurement Report: volume and threshold, referencing every source
image), a Secondary Capture of the slice with the most of the component (component tinted red, the
volume burned in, BurnedInAnnotation YES), each a new series of the source study (SeriesNumber: the
source's + 900 and + 901), and result.json (volume_ml, voxels, threshold, threshold_method, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from oxidicom_py.modules.contract import (
    Job,
    ModuleError,
    run_module,
    series_normal,
    series_of,
    setting,
    slice_position,
    write_result,
)
from oxidicom_py.modules.text_raster import outline, text_mask

NAME = "volume-report"
MANUFACTURER = "oxidicom_py"
VERSION = "1"
MILLILITER = Code("mL", "UCUM", "milliliter")
NO_UNITS = Code("1", "UCUM", "no units")
HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
PIXEL_DATA = 0x7FE00010
FIGURE_SIZE = 256
"""Small slices are enlarged (by a whole factor) to about this many pixels, so that the text is legible."""


@dataclass(frozen=True, slots=True)
class Volume:
    voxels: np.ndarray
    """(slices, rows, columns), in modality units."""
    spacing: tuple[float, float, float]
    """mm between slices, rows, columns."""
    headers: list[Dataset]
    """The source instances without their pixels (one per slice, or the single multi-frame instance)."""
    windows: list[tuple[float, float] | None]
    """Per slice: the source's first (WindowCenter, WindowWidth), if it has one."""

    @property
    def voxel_mm3(self) -> float:
        return math.prod(self.spacing)


@dataclass(frozen=True, slots=True)
class Measurement:
    threshold: float
    threshold_method: str
    component: np.ndarray
    """The largest component, a boolean array shaped like the volume."""
    voxels: int
    volume_ml: float


# -- the volume ------------------------------------------------------------------------------


def _header(ds: Dataset) -> Dataset:
    header = Dataset({tag: elem for tag, elem in ds.items() if tag != PIXEL_DATA})
    header.file_meta = ds.file_meta
    return header


def _window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = (center[0] if hasattr(center, "__len__") else center, width[0] if hasattr(width, "__len__") else width)
    return (float(first[0]), float(first[1])) if float(first[1]) > 0 else None


def _pixel_spacing(item: Dataset, what: str) -> tuple[float, float]:
    spacing = item.get("PixelSpacing")
    if not spacing or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        raise ModuleError(f"{what} has no usable PixelSpacing: cannot measure a volume in mL")
    return float(spacing[0]), float(spacing[1])


def slice_spacing(positions: list[float], fallback: Dataset) -> float:
    """The median distance between consecutive positions; else SpacingBetweenSlices, else SliceThickness."""
    steps = np.diff(np.sort(np.asarray(positions, float))) if len(positions) > 1 else np.array([])
    if steps.size and float(np.median(steps)) > 1e-3:
        return float(np.median(steps))
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = fallback.get(keyword)
        if value is not None and str(value) != "" and float(value) > 0:
            return float(value)
    raise ModuleError("no slice spacing: no distinct ImagePositionPatient, SpacingBetweenSlices or SliceThickness")


def _stack(datasets: list[Dataset]) -> Volume:
    first = datasets[0]
    shape = (first.Rows, first.Columns)
    slices = []
    for ds in datasets:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ModuleError(f"{ds.SOPInstanceUID} is not a greyscale image")
        if (ds.Rows, ds.Columns) != shape:
            raise ModuleError(f"the slices differ in size ({shape} and {(ds.Rows, ds.Columns)})")
        slices.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), float))
    normal = series_normal(datasets)
    positions = [slice_position(ds, normal) for ds in datasets] if normal is not None else []
    known = [p for p in positions if p is not None]
    row, column = _pixel_spacing(first, f"instance {first.SOPInstanceUID}")
    spacing = (slice_spacing(known if len(known) == len(datasets) else [], first), row, column)
    return Volume(np.stack(slices), spacing, [_header(ds) for ds in datasets], [_window(ds) for ds in datasets])


def _group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for ``frame``: per-frame, else shared, else None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and index < len(items) and items[index].get(keyword):
            return items[index].get(keyword)[0]
    return None


def _multiframe(ds: Dataset) -> Volume:
    """One multi-frame instance (enhanced: functional groups; legacy: top-level attributes)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ModuleError(f"{ds.SOPInstanceUID} is not a greyscale image")
    frames = int(ds.NumberOfFrames)
    arr = np.asarray(ds.pixel_array, float)
    transform = _group(ds, 0, "PixelValueTransformationSequence")
    slope, intercept = (transform or ds).get("RescaleSlope", 1), (transform or ds).get("RescaleIntercept", 0)
    arr = arr * float(slope) + float(intercept)
    measures = _group(ds, 0, "PixelMeasuresSequence") or ds
    orientation = _group(ds, 0, "PlaneOrientationSequence") or ds
    normal = series_normal([orientation])
    positions = []
    for frame in range(frames):
        plane = _group(ds, frame, "PlanePositionSequence")
        position = slice_position(plane, normal) if plane is not None and normal is not None else None
        positions.append(position)
    if all(p is not None for p in positions):
        order = np.argsort(positions, kind="stable")
        arr, positions = arr[order], [positions[i] for i in order]
    row, column = _pixel_spacing(measures, f"multi-frame instance {ds.SOPInstanceUID}")
    known = [p for p in positions if p is not None]
    spacing = (slice_spacing(known if len(known) == frames else [], measures), row, column)
    return Volume(arr, spacing, [_header(ds)], [_window(ds)] * frames)


def load_volume(paths: list[Path]) -> Volume:
    """The series as a volume: a stack of single-frame slices (sorted), or one multi-frame instance."""
    datasets = [dcmread(path) for path in paths]
    if any("PixelData" not in ds for ds in datasets):
        raise ModuleError("the series has instances without pixel data")
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames") or 1) > 1]
    if multi and len(datasets) > 1:
        raise ModuleError("the series mixes multi-frame instances with others: give one multi-frame or single frames")
    return _multiframe(multi[0]) if multi else _stack(datasets)


def choose_series(job: Job, series: dict[str, list[Path]]) -> str:
    role = setting(job.settings, "role", str, "series")
    uid = job.role(role)
    roles = job.task.get("roles")
    if uid is None and isinstance(roles, dict) and len(roles) == 1:
        uid = job.role(next(iter(roles)))
    if uid is not None:
        if uid not in series:
            raise ModuleError(f"the task names series {uid} (role {role!r}) but the input has no such series")
        return uid
    images = []
    for candidate, paths in series.items():
        header = dcmread(paths[0], stop_before_pixels=True)
        if "Rows" in header:
            number = header.get("SeriesNumber")
            images.append((int(number) if number not in (None, "") else 0, candidate))
    if not images:
        raise ModuleError("the input has no image series")
    return min(images)[1]


# -- the measurement -------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold on a ``bins``-bin histogram between the minimum and maximum (a bin edge).

    Two well-separated peaks make every split in the gap between them equally good: the middle one of
    those is taken (the first one, as a plain argmax gives, sits on the foot of the lower peak)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise ModuleError(f"the volume is uniform ({low:g}): there is nothing to threshold")
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)[:-1].astype(float)
    weight1 = float(hist.sum()) - weight0
    sum0 = np.cumsum(hist * centers)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = sum0 / weight0
        mean1 = (float((hist * centers).sum()) - sum0) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    between[~np.isfinite(between)] = -1
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[int(best[len(best) // 2]) + 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (ties: the first in raster order)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def measure(volume: Volume, threshold: float | None) -> Measurement:
    method = "settings" if threshold is not None else "otsu"
    threshold = otsu_threshold(volume.voxels) if threshold is None else float(threshold)
    component = largest_component(volume.voxels >= threshold)
    voxels = int(component.sum())
    if voxels == 0:
        raise ModuleError(f"no voxel at or above the threshold {threshold:g}")
    return Measurement(threshold, method, component, voxels, voxels * volume.voxel_mm3 / 1000)


# -- the outputs -----------------------------------------------------------------------------


def _procedure(modality: str) -> Code:
    return {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion}.get(
        modality, codes.LN.DiagnosticImagingReport
    )


def build_sr(volume: Volume, result: Measurement, series_number: int) -> hd.sr.Comprehensive3DSR:
    reference = volume.headers[0]
    algorithm = hd.sr.AlgorithmIdentification(name=f"{MANUFACTURER} {NAME}", version=VERSION)
    threshold_unit = HOUNSFIELD if reference.get("Modality") == "CT" else NO_UNITS
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="largest connected component"),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(result.volume_ml, 4), unit=MILLILITER),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=result.threshold, unit=threshold_unit),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in volume.headers],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=f"{MANUFACTURER} {NAME}"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_procedure(str(reference.get("Modality", ""))),
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=volume.headers,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = "Volume report"
    return sr


def _grey(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = ((low + high) / 2, max(high - low, 1.0))
    center, width = window
    scaled = (values - (center - width / 2)) / width * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def render(volume: Volume, result: Measurement) -> tuple[np.ndarray, int, int]:
    """The figure (RGB uint8), the slice it shows, and the factor it was enlarged by."""
    index = int(np.argmax(result.component.sum(axis=(1, 2))))
    factor = max(1, FIGURE_SIZE // max(volume.voxels.shape[1:]))
    grey = _grey(volume.voxels[index], volume.windows[index]).repeat(factor, 0).repeat(factor, 1)
    inside = result.component[index].repeat(factor, 0).repeat(factor, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    red = np.array([255, 0, 0], float)
    rgb[inside] = np.rint(rgb[inside] * 0.6 + red * 0.4).astype(np.uint8)
    text = f"Volume: {result.volume_ml:.2f} mL"
    glyphs = text_mask(text, *grey.shape)
    rgb[outline(glyphs)] = 0
    rgb[glyphs] = 255
    return rgb, index, factor


def _orientation(header: Dataset) -> tuple[str, str] | None:
    """The patient directions of the image's rows and columns (the dominant axis of each)."""
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    labels = []
    for vector in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(vector)))
        labels.append(("LR", "PA", "HF")[axis][0 if float(vector[axis]) > 0 else 1])
    return labels[0], labels[1]


def build_sc(volume: Volume, result: Measurement, series_number: int) -> hd.sc.SCImage:
    figure, index, factor = render(volume, result)
    header = volume.headers[min(index, len(volume.headers) - 1)]
    orientation = _orientation(header)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=figure,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=(volume.spacing[1] / factor, volume.spacing[2] / factor),
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown
    for keyword in ("Laterality", "BodyPartExamined"):
        if keyword in header:
            setattr(sc, keyword, header.get(keyword))
    if "Laterality" not in sc and "BodyPartExamined" not in sc:
        sc.Laterality = ""  # Type 2C: required unless the body part is known to be unpaired; empty: unknown
    sc.SeriesDescription = "Volume report figure"
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    source = Dataset()
    source.ReferencedSOPClassUID = header.SOPClassUID
    source.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if len(volume.headers) == 1 and int(header.get("NumberOfFrames") or 1) > 1:
        source.ReferencedFrameNumber = index + 1
    sc.SourceImageSequence = Sequence([source])
    sc.DerivationDescription = f"Largest component at or above {result.threshold:g}; volume burned in"
    return sc


def _next_series_number(volume: Volume) -> int:
    number = volume.headers[0].get("SeriesNumber")
    return (int(number) if number not in (None, "") else 0) + 900


def process(job: Job) -> None:
    series = series_of(job.input_dir)
    uid = choose_series(job, series)
    volume = load_volume(series[uid])
    threshold = setting(job.settings, "threshold", float, None)
    result = measure(volume, threshold)
    number = _next_series_number(volume)
    sr = build_sr(volume, result, number)
    sc = build_sc(volume, result, number + 1)
    for ds in (sr, sc):
        ds.save_as(job.output_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    write_result(
        job,
        {
            "volume_ml": round(result.volume_ml, 4),
            "voxels": result.voxels,
            "threshold": result.threshold,
            "threshold_method": result.threshold_method,
            "series": uid,
            "spacing_mm": [round(v, 6) for v in volume.spacing],
            "sr": str(sr.SOPInstanceUID),
            "figure": str(sc.SOPInstanceUID),
        },
    )
    print(f"{NAME}: {result.volume_ml:.2f} mL ({result.voxels} voxels at or above {result.threshold:g})")


def main() -> int:
    return run_module(NAME, process)
