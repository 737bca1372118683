"""burn-in: a copy of every input image with a text burned into its pixels (creni.org's idea, done right).

Settings (task.json ``settings``): ``text`` (default ``NOT FOR DIAGNOSTIC USE``; ``\\n`` breaks lines),
``suffix`` appended to SeriesDescription (default `` (burned-in)``), ``series_number_offset`` added to
SeriesNumber (default 1000).

Each output instance is the source dataset with:

* the text drawn from the top-left corner of every frame at the top of the stored range (2**BitsStored - 1,
  or its signed equivalent; the bottom of it for MONOCHROME1), on a one-pixel ring of the frame's darkest
  value, so that it reads under any window; RGB gets white on black. Pixel representation and bits are
  kept; compressed sources are decompressed (YCbCr to RGB) and every output is Explicit VR Little Endian;
* a new SeriesInstanceUID per source series, a new SOPInstanceUID per instance, the StudyInstanceUID kept;
* BurnedInAnnotation YES, ImageType DERIVED\\SECONDARY (then the source's values 3 and on), SourceImageSequence
  (the source's SOP Class and Instance UIDs, purpose "Source image for image processing operation"),
  DerivationDescription; IconImageSequence (an unburned thumbnail) and Smallest/LargestImagePixelValue dropped.

Instances without pixels (SR, presentation states) are skipped; an input without any image fails.
The output files are ``<new SOPInstanceUID>.dcm``; result.json maps source series to new ones.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, generate_uid

from oxidicom_py.modules.contract import Job, ModuleError, run_module, series_of, setting, write_result
from oxidicom_py.modules.text_raster import outline, text_mask

NAME = "burn-in"
DEFAULT_TEXT = "NOT FOR DIAGNOSTIC USE"
DEFAULT_SUFFIX = " (burned-in)"
DEFAULT_SERIES_NUMBER_OFFSET = 1000
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1", JPEGLSNearLossless: "ISO_14495_1"}
"""Transfer syntaxes that are always lossy, and the LossyImageCompressionMethod of each."""
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
_DROPPED = ("IconImageSequence", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelDataProviderURL")


@dataclass(frozen=True, slots=True)
class Options:
    text: str = DEFAULT_TEXT
    suffix: str = DEFAULT_SUFFIX
    series_number_offset: int = DEFAULT_SERIES_NUMBER_OFFSET


def options_from(settings: dict) -> Options:
    text = setting(settings, "text", str, DEFAULT_TEXT).replace("\\n", "\n")
    if not text.strip():
        raise ModuleError("setting 'text' is empty: there is nothing to burn in")
    return Options(
        text=text,
        suffix=setting(settings, "suffix", str, DEFAULT_SUFFIX),
        series_number_offset=setting(settings, "series_number_offset", int, DEFAULT_SERIES_NUMBER_OFFSET),
    )


# -- pixels ----------------------------------------------------------------------------------


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The lowest and highest value BitsStored and PixelRepresentation allow."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _decoded(ds: Dataset) -> tuple[np.ndarray, str]:
    """The pixels (a writable copy) and their photometric interpretation; compressed data is decompressed."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()  # also YCbCr -> RGB, and PhotometricInterpretation with it
    photometric = str(ds.PhotometricInterpretation)
    arr = np.array(ds.pixel_array)
    arr = arr.astype(arr.dtype.newbyteorder("<"))  # a big endian source decodes to a big endian array
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, photometric, "RGB")
        photometric = "RGB"
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ModuleError(f"photometric interpretation {photometric} is not supported")
    return arr, photometric


def burn(arr: np.ndarray, photometric: str, text: str, value_range: tuple[int, int]) -> np.ndarray:
    """``arr`` (a frame or frames, grey or RGB) with ``text`` burned into the top-left of every frame."""
    color = photometric == "RGB"
    rows, columns = arr.shape[-3:-1] if color else arr.shape[-2:]
    glyphs = text_mask(text, rows, columns)
    ring = outline(glyphs)
    low, high = value_range
    if color:
        ink, shadow = high, low
    elif photometric == "MONOCHROME1":
        ink, shadow = low, arr.max()
    else:
        ink, shadow = high, arr.min()
    out = arr.copy()
    if color:
        out[..., ring, :] = shadow
        out[..., glyphs, :] = ink
    else:
        out[..., ring] = shadow
        out[..., glyphs] = ink
    return out


# -- attributes ------------------------------------------------------------------------------


def _series_description(ds: Dataset, suffix: str) -> str:
    base = str(ds.get("SeriesDescription") or "")
    return (base[: max(0, 64 - len(suffix))] + suffix)[:64]  # LO: 64 characters at most


def _source_item(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_PURPOSE
    item.PurposeOfReferenceCodeSequence = Sequence([purpose])
    return item


def _swap_words(ds: Dataset) -> None:
    """Byte-swap the OW/OF/OL/OD/OV values of a big endian dataset (other than Pixel Data, rewritten anyway)."""

    def swap(_: Dataset, elem: DataElement) -> None:
        size = _WORD_SIZES.get(elem.VR)
        if size and elem.tag != _PIXEL_DATA and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()

    ds.walk(swap)


def _file_meta(ds: Dataset, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def derive(ds: Dataset, series_uid: str, options: Options, now: datetime.datetime | None = None) -> Dataset:
    """The burned-in copy of ``ds`` (which is changed in place and returned), in series ``series_uid``."""
    if "PixelData" not in ds:
        raise ModuleError(f"instance {ds.get('SOPInstanceUID')} has no pixel data")
    source = _source_item(ds)
    lossy_method = LOSSY_METHODS.get(ds.file_meta.TransferSyntaxUID)
    arr, photometric = _decoded(ds)
    burned = burn(arr, photometric, options.text, stored_range(ds))
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        _swap_words(ds)
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(ds, sop_uid)
    ds.set_pixel_data(burned, photometric, int(ds.BitsStored), generate_instance_uid=False)
    now = now or datetime.datetime.now()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = _series_description(ds, options.suffix)
    if "SeriesNumber" in ds and ds.SeriesNumber is not None and str(ds.SeriesNumber) != "":
        ds.SeriesNumber = int(ds.SeriesNumber) + options.series_number_offset
    ds.BurnedInAnnotation = "YES"
    image_type = list(ds.get("ImageType") or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.SourceImageSequence = Sequence([source])
    ds.DerivationDescription = f"Text burned into the pixels by oxidicom_py {NAME}: {options.text!r}"[:1024]
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    if lossy_method is not None:  # decompressed lossy data stays lossy (PS3.3 C.7.6.1.1.5)
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = lossy_method
    for keyword in _DROPPED:
        if keyword in ds:
            del ds[keyword]
    return ds


# -- the module ------------------------------------------------------------------------------


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except Exception as e:
        raise ModuleError(f"cannot read {path}: {e}") from e


def burn_series(paths: list[Path], output_dir: Path, options: Options) -> tuple[str | None, int]:
    """Write the burned-in copies of one series; (the new SeriesInstanceUID or None if no image, count)."""
    series_uid, written = generate_uid(), 0
    for path in paths:
        ds = _read(path)
        if "PixelData" not in ds:
            print(f"{NAME}: skipping {path.name}: no pixel data")
            continue
        try:
            out = derive(ds, series_uid, options)
        except ModuleError as e:
            raise ModuleError(f"{path}: {e}") from e
        except Exception as e:
            raise ModuleError(f"{path}: cannot burn in: {type(e).__name__}: {e}") from e
        # dcmwrite, not save_as: save_as refuses to re-encode a big endian source as little endian
        dcmwrite(output_dir / f"{out.SOPInstanceUID}.dcm", out, enforce_file_format=True)
        written += 1
    return (series_uid if written else None), written


def process(job: Job) -> None:
    options = options_from(job.settings)
    mapping: dict[str, str] = {}
    total = 0
    for source_uid, paths in series_of(job.input_dir).items():
        new_uid, written = burn_series(paths, job.output_dir, options)
        if new_uid is not None:
            mapping[source_uid] = new_uid
            total += written
    if not total:
        raise ModuleError("the input has no image (no instance with pixel data)")
    write_result(job, {"instances": total, "series": mapping, "text": options.text})
    print(f"{NAME}: burned {options.text!r} into {total} instance(s) of {len(mapping)} series")


def main() -> int:
    return run_module(NAME, process)
