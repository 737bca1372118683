"""A small mixed-modality corpus of DICOM Part 10 files, generated deterministically.

:func:`write_mixed_corpus` writes one or a few instances of each kind a hospital PACS sends
(DX, MG and intra-oral X-ray, each For Presentation and For Processing; breast projection X-ray;
CR, CT, MR, US, Secondary Capture; SR; presentation states; segmentations; RT structure set,
plan and dose; IVOCT; a 12-lead ECG), in a mix of transfer syntaxes (Explicit and Implicit VR
Little Endian, Explicit VR Big Endian, RLE Lossless, JPEG-LS Lossless, JPEG Baseline). Every
UID, date and pixel value derives from ``seed``, so the same seed writes byte-identical files.
Images are 16x16 (a few frames at most): the whole corpus is well under 1 MB.

Segmentations and the Comprehensive SR / presentation state are built with highdicom; the rest
with pydicom. Classes that the DICOM standard added after the toolkits here (Label Map and
Height Map Segmentation, Waveform Presentation States) are written from their IOD modules by hand.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

DATE = "20240315"
TIME = "101500"
PATIENT_ID = "OXIMIX"

# SOP classes (PS3.6 Annex A), named here so tests can refer to them
CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
IO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.3"
IO_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.3.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
WAVEFORM_PR = "1.2.840.10008.5.1.4.1.1.9.100.1"
WAVEFORM_ACQUISITION_PR = "1.2.840.10008.5.1.4.1.1.9.100.2"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
BREAST_PROJECTION_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
BREAST_PROJECTION_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
IVOCT_PRESENTATION = "1.2.840.10008.5.1.4.1.1.14.1"
IVOCT_PROCESSING = "1.2.840.10008.5.1.4.1.1.14.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
HEIGHT_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.8"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"

# The classes the receiver refused before they were added to its storage list (the findings).
FINDINGS = frozenset(
    {
        DX_PRESENTATION,
        DX_PROCESSING,
        MG_PRESENTATION,
        MG_PROCESSING,
        IO_PRESENTATION,
        IO_PROCESSING,
        BREAST_PROJECTION_PRESENTATION,
        BREAST_PROJECTION_PROCESSING,
        IVOCT_PRESENTATION,
        IVOCT_PROCESSING,
        LABEL_MAP_SEG,
        HEIGHT_MAP_SEG,
        WAVEFORM_PR,
        WAVEFORM_ACQUISITION_PR,
    }
)

# Classes the standard added after the toolkits Debian 12 ships (DCMTK 3.6.7, GDCM 3.0.21, dicom3tools
# 2022): gdcmscu cannot build a presentation context for them (it aborts before connecting), storescu
# refuses them unless a configuration file names them, and dciodvfy knows no IOD for them.
NEWER_THAN_TOOLKITS = frozenset({LABEL_MAP_SEG, HEIGHT_MAP_SEG, WAVEFORM_PR, WAVEFORM_ACQUISITION_PR})

_LOSSY = frozenset({JPEGBaseline8Bit})


@dataclass
class _Instance:
    """A dataset to write, its pixels (encoded at write time, per transfer syntax) and its file name."""

    name: str
    ds: Dataset
    transfer_syntax: str
    pixels: np.ndarray | None = None


@dataclass
class _Corpus:
    seed: str
    instances: list[_Instance] = field(default_factory=list)
    _series_numbers: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=[self.seed, *map(str, parts)])

    def series(self, study: str, modality: str, description: str) -> _Series:
        return _Series(self, study, modality, description, next(self._series_numbers))


@dataclass
class _Series:
    corpus: _Corpus
    study: str
    modality: str
    description: str
    number: int

    @property
    def uid(self) -> str:
        return self.corpus.uid("series", self.study, self.number)

    @property
    def study_uid(self) -> str:
        return self.corpus.uid("study", self.study)

    @property
    def frame_of_reference(self) -> str:
        return self.corpus.uid("frame-of-reference", self.study)

    def base(self, sop_class: str, number: int) -> Dataset:
        """Patient, General Study, General Series, General Equipment and SOP Common modules."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.InstanceCreationDate = DATE
        ds.InstanceCreationTime = TIME
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = self.corpus.uid("instance", self.study, self.number, number)
        ds.StudyDate = DATE
        ds.SeriesDate = DATE
        ds.ContentDate = DATE
        ds.StudyTime = TIME
        ds.SeriesTime = TIME
        ds.ContentTime = TIME
        ds.AccessionNumber = f"ACC{self.study.upper()}"
        ds.Modality = self.modality
        ds.Manufacturer = "oxidicom_py tests"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = "Referring^Doctor"
        ds.StationName = "TESTSTATION"
        ds.StudyDescription = f"Mixed {self.study}"
        ds.SeriesDescription = self.description
        ds.Laterality = ""
        ds.ManufacturerModelName = "modalities.py"
        ds.PatientName = "Mixed^Modalities"
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.DeviceSerialNumber = "0001"
        ds.SoftwareVersions = "1"
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.uid
        ds.StudyID = self.study.upper()[:16]
        ds.SeriesNumber = self.number
        ds.InstanceNumber = number
        return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _gradient(rows: int, cols: int, frames: int, offset: int, maximum: int) -> np.ndarray:
    """Deterministic, non-trivial pixel values in [0, maximum]."""
    y, x = np.mgrid[0:rows, 0:cols]
    planes = [((x * 37 + y * 11 + (offset + f) * 101) % (maximum + 1)) for f in range(frames)]
    arr = np.stack(planes)
    return arr[0] if frames == 1 else arr


def _pixel_module(ds: Dataset, arr: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2") -> None:
    ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL_422") else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = arr.shape[-3:-1] if ds.SamplesPerPixel == 3 else arr.shape[-2:]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0


def _image(
    series: _Series,
    sop_class: str,
    number: int,
    *,
    bits_stored: int = 12,
    frames: int = 1,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY"),
) -> tuple[Dataset, np.ndarray]:
    ds = series.base(sop_class, number)
    ds.ImageType = list(image_type)
    ds.AcquisitionNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    arr = _gradient(16, 16, frames, number + series.number * 10, (1 << bits_stored) - 1).astype(dtype)
    _pixel_module(ds, arr, bits_stored=bits_stored)
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds, arr


def _plane(ds: Dataset, series: _Series, z: float) -> None:
    """Frame of Reference and Image Plane modules."""
    ds.FrameOfReferenceUID = series.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-4.0, -4.0, z]
    ds.SliceThickness = 2.0
    ds.SliceLocation = z


# -- projection radiography ------------------------------------------------------------------


def _dx_family(ds: Dataset, presentation: bool, view: str = "AP") -> None:
    """DX Series, DX Anatomy Imaged, DX Image, DX Detector (and friends) for DX, MG and IO."""
    ds.PresentationIntentType = "FOR PRESENTATION" if presentation else "FOR PROCESSING"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImageLaterality = "U"
    del ds.Laterality  # Image Laterality says it
    ds.PatientOrientation = ["P", "F"]
    ds.AcquisitionContextSequence = Sequence()
    ds.AnatomicRegionSequence = Sequence([_code("T-D3000", "SRT", "Chest")])
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "DET1"
    ds.DetectorBinning = [1, 1]
    ds.ViewPosition = view
    ds.PositionerType = "NONE"
    ds.KVP = 70
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 100
    ds.DistanceSourceToDetector = 1000
    ds.BodyPartExamined = "CHEST"
    if presentation:
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096


def _projection(corpus: _Corpus) -> None:
    dx = corpus.series("xray", "DX", "DX chest")
    for number, (sop, presentation, ts) in enumerate(
        [(DX_PRESENTATION, True, ExplicitVRLittleEndian), (DX_PROCESSING, False, ImplicitVRLittleEndian)], 1
    ):
        ds, arr = _image(dx, sop, number)
        _dx_family(ds, presentation)
        corpus.instances.append(_Instance(f"dx-{number}", ds, ts, arr))

    mg = corpus.series("xray", "MG", "MG left CC")
    for number, (sop, presentation, ts) in enumerate(
        [(MG_PRESENTATION, True, RLELossless), (MG_PROCESSING, False, ExplicitVRLittleEndian)], 1
    ):
        ds, arr = _image(mg, sop, number)
        _dx_family(ds, presentation, view="CC")
        ds.AnatomicRegionSequence = Sequence([_code("T-04000", "SRT", "Breast")])
        ds.ImageLaterality = "L"
        ds.PatientOrientation = ["A", "R"]
        ds.BodyPartExamined = "BREAST"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.ViewCodeSequence = Sequence([_code("R-10242", "SRT", "cranio-caudal")])
        ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
        ds.PartialView = "NO"
        ds.BreastImplantPresent = "NO"
        ds.OrganExposed = "BREAST"
        ds.BodyPartThickness = 45
        ds.CompressionForce = 100
        ds.PositionerPrimaryAngle = 0
        ds.DetectorActiveShape = "RECTANGLE"
        ds.DetectorActiveDimensions = [24.0, 30.0]
        if presentation:
            ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        corpus.instances.append(_Instance(f"mg-{number}", ds, ts, arr))

    io_series = corpus.series("xray", "IO", "IO bitewing")
    for number, (sop, presentation, ts) in enumerate(
        [(IO_PRESENTATION, True, ExplicitVRLittleEndian), (IO_PROCESSING, False, ExplicitVRBigEndian)], 1
    ):
        ds, arr = _image(io_series, sop, number)
        _dx_family(ds, presentation, view="")
        ds.AnatomicRegionSequence = Sequence([_code("T-D1213", "SRT", "Jaw region")])
        ds.PositionerType = "NONE"
        ds.BodyPartExamined = "JAW"
        ds.ImageLaterality = "R"
        ds.PatientOrientation = ["L", "H"]
        ds.PrimaryAnatomicStructureSequence = Sequence([_code("T-54330", "SRT", "Maxillary right second molar")])
        corpus.instances.append(_Instance(f"io-{number}", ds, ts, arr))

    cr = corpus.series("xray", "CR", "CR hand")
    for number, ts in enumerate([ExplicitVRBigEndian, ImplicitVRLittleEndian], 1):
        ds, arr = _image(cr, CR, number, bits_stored=10)
        ds.BodyPartExamined = "HAND"
        ds.ViewPosition = "PA"
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PhotometricInterpretation = "MONOCHROME1"
        corpus.instances.append(_Instance(f"cr-{number}", ds, ts, arr))


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _enhanced(
    ds: Dataset,
    series: _Series,
    *,
    presentation: bool,
    shared: Dataset,
    per_frame: list[Dataset],
    volumetric: str = "VOLUME",
) -> None:
    """Multi-frame Functional Groups and Multi-frame Dimension modules, frames indexed by acquisition number."""
    ds.ContentQualification = "RESEARCH"
    ds.PresentationIntentType = "FOR PRESENTATION" if presentation else "FOR PROCESSING"
    ds.NumberOfFrames = len(per_frame)
    ds.AcquisitionDateTime = f"{DATE}{TIME}"
    ds.AcquisitionDuration = 1.0
    ds.FrameOfReferenceUID = series.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = volumetric
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    del ds.PatientOrientation
    org = series.corpus.uid("dimension-organization", series.study, series.number)
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=org)])
    index = _item(
        DimensionOrganizationUID=org,
        DimensionIndexPointer=0x00209156,  # Frame Acquisition Number
        FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
        DimensionDescriptionLabel="Frame",
    )
    ds.DimensionIndexSequence = Sequence([index])
    shared.PixelMeasuresSequence = Sequence([_item(PixelSpacing=[0.1, 0.1], SliceThickness=1.0)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    for f, item in enumerate(per_frame, 1):
        content = _item(
            FrameAcquisitionNumber=f,
            FrameReferenceDateTime=f"{DATE}{TIME}",
            FrameAcquisitionDateTime=f"{DATE}{TIME}",
            FrameAcquisitionDuration=10.0,
            DimensionIndexValues=[f],
        )
        item.FrameContentSequence = Sequence([content])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)


def _breast_projection(corpus: _Corpus) -> None:
    series = corpus.series("xray", "MG", "Breast projection")
    for number, (sop, presentation, ts) in enumerate(
        [
            (BREAST_PROJECTION_PRESENTATION, True, ExplicitVRLittleEndian),
            (BREAST_PROJECTION_PROCESSING, False, RLELossless),
        ],
        1,
    ):
        ds, arr = _image(series, sop, number, frames=2)
        del ds.Laterality  # Frame Laterality says it
        frame_type = ["ORIGINAL", "PRIMARY", "TOMO", "NONE"]
        ds.ImageType = frame_type
        ds.PositionerMotion = "DYNAMIC"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.DetectorType = "DIRECT"
        ds.KVP = 28
        ds.XRayTubeCurrentInmA = 100.0
        ds.ExposureTimeInms = 500.0
        ds.ExposureInmAs = 50.0
        ds.FocalSpots = [0.3]
        ds.AnodeTargetMaterial = "TUNGSTEN"
        ds.BodyPartThickness = 45
        ds.CompressionForce = 100
        ds.PaddleDescription = "STANDARD"
        ds.ExposureControlMode = "AUTOMATIC"
        ds.ExposureControlModeDescription = "AEC"
        ds.OrganDose = 1.0
        ds.EntranceDoseInmGy = 5.0
        ds.TypeOfDetectorMotion = "NONE"
        ds.ViewCodeSequence = Sequence([_code("R-10242", "SRT", "cranio-caudal")])
        ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
        ds.BreastImplantPresent = "NO"
        ds.PatientOrientationCodeSequence = Sequence([_code("F-10470", "SRT", "erect")])
        ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
            [_code("F-10440", "SRT", "standing")]
        )
        ds.PresentationLUTShape = "IDENTITY"
        shared = _item(
            DerivationImageSequence=Sequence(),
            FrameAnatomySequence=Sequence(
                [_item(AnatomicRegionSequence=Sequence([_code("T-04000", "SRT", "Breast")]), FrameLaterality="R")]
            ),
            PixelValueTransformationSequence=Sequence([_item(RescaleIntercept=0, RescaleSlope=1, RescaleType="US")]),
            FrameVOILUTSequence=Sequence([_item(WindowCenter=2048, WindowWidth=4096)]),
            FieldOfViewSequence=Sequence(
                [
                    _item(
                        FieldOfViewShape="RECTANGLE",
                        FieldOfViewDimensions=[24, 30],
                        FieldOfViewRotation="0",
                        FieldOfViewHorizontalFlip="NO",
                    )
                ]
            ),
            FramePixelDataPropertiesSequence=Sequence(
                [
                    _item(
                        FrameType=frame_type,
                        PixelIntensityRelationship="LIN",
                        PixelIntensityRelationshipSign=1,
                        ImagerPixelSpacing=[0.1, 0.1],
                        GeometricalProperties="UNIFORM",
                        ImageProcessingApplied="NONE",
                    )
                ]
            ),
            CollimatorShapeSequence=Sequence(
                [
                    _item(
                        CollimatorShape="RECTANGULAR",
                        CollimatorLeftVerticalEdge=0,
                        CollimatorRightVerticalEdge=16,
                        CollimatorUpperHorizontalEdge=0,
                        CollimatorLowerHorizontalEdge=16,
                    )
                ]
            ),
            XRayGeometrySequence=Sequence(
                [
                    _item(
                        DistanceSourceToIsocenter=600.0,
                        DistanceSourceToDetector=650.0,
                        DistanceSourceToPatient=580.0,
                        EstimatedRadiographicMagnificationFactor=1.1,
                    )
                ]
            ),
        )
        per_frame = []
        for f in range(2):
            per_frame.append(
                _item(
                    IrradiationEventIdentificationSequence=Sequence(
                        [_item(IrradiationEventUID=corpus.uid("irradiation", series.number, number, f))]
                    ),
                    XRayAcquisitionDoseSequence=Sequence(
                        [
                            _item(
                                KVP=28,
                                XRayTubeCurrentInmA=100.0,
                                ExposureTimeInms=250.0,
                                ExposureInmAs=25.0,
                                OrganDose=0.5,
                                EntranceDoseInmGy=2.5,
                            )
                        ]
                    ),
                    IsocenterReferenceSystemSequence=Sequence(
                        [
                            _item(
                                XRaySourceIsocenterPrimaryAngle=-7.5 + 15 * f,
                                XRaySourceIsocenterSecondaryAngle=0.0,
                                BreastSupportIsocenterPrimaryAngle=0.0,
                                BreastSupportIsocenterSecondaryAngle=0.0,
                                BreastSupportXPositionToIsocenter=0.0,
                                BreastSupportYPositionToIsocenter=0.0,
                                BreastSupportZPositionToIsocenter=-20.0,
                                DetectorIsocenterPrimaryAngle=0.0,
                                DetectorIsocenterSecondaryAngle=0.0,
                                DetectorXPositionToIsocenter=0.0,
                                DetectorYPositionToIsocenter=0.0,
                                DetectorZPositionToIsocenter=-50.0,
                                DetectorActiveAreaTLHCPosition=[-12.0, -15.0, -50.0],
                                DetectorActiveAreaOrientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                            )
                        ]
                    ),
                )
            )
        _enhanced(ds, series, presentation=presentation, shared=shared, per_frame=per_frame)
        corpus.instances.append(_Instance(f"breast-projection-{number}", ds, ts, arr))


# -- cross-sectional and other images --------------------------------------------------------


def _ct_mr(corpus: _Corpus) -> list[Dataset]:
    """Three CT slices (returned: the source of the segmentations, RT and the presentation state) and three MR."""
    ct = corpus.series("ctmr", "CT", "CT abdomen")
    sources = []
    for number, ts in enumerate([ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless], 1):
        ds, arr = _image(ct, CT, number, image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
        _plane(ds, ct, z=2.0 * number)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        del ds.Laterality  # not a paired body part
        corpus.instances.append(_Instance(f"ct-{number}", ds, ts, arr))
        sources.append(ds)

    mr = corpus.series("ctmr", "MR", "MR T1 axial")
    for number, ts in enumerate([ExplicitVRLittleEndian, JPEGLSLossless, ExplicitVRBigEndian], 1):
        ds, arr = _image(mr, MR, number, image_type=("ORIGINAL", "PRIMARY", "M", "NONE"))
        _plane(ds, mr, z=3.0 * number)
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500
        ds.EchoTime = 15
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3
        ds.ImagingFrequency = 127.7
        ds.PatientPosition = "HFS"
        corpus.instances.append(_Instance(f"mr-{number}", ds, ts, arr))
    return sources


def _us_sc(corpus: _Corpus) -> None:
    us = corpus.series("us", "US", "US liver")
    ds = us.base(US, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    y, x = np.mgrid[0:16, 0:16]
    rgb = np.stack([x * 16, y * 16, (x + y) * 8], axis=-1).astype(np.uint8)
    _pixel_module(ds, rgb, bits_stored=8, photometric="YBR_FULL_422")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = 10
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    corpus.instances.append(_Instance("us-1", ds, JPEGBaseline8Bit, rgb))

    sc = corpus.series("us", "OT", "Secondary capture")
    ds, arr = _image(sc, SC, 1, bits_stored=8, image_type=("DERIVED", "SECONDARY"))
    ds.ConversionType = "WSD"
    corpus.instances.append(_Instance("sc-1", ds, ExplicitVRLittleEndian, arr))


def _ivoct(corpus: _Corpus) -> None:
    series = corpus.series("ivoct", "IVOCT", "IVOCT pullback")
    for number, (sop, presentation, ts) in enumerate(
        [(IVOCT_PRESENTATION, True, ExplicitVRLittleEndian), (IVOCT_PROCESSING, False, ImplicitVRLittleEndian)], 1
    ):
        ds, arr = _image(series, sop, number, bits_stored=8, frames=2)
        del ds.Laterality
        frame_type = ["ORIGINAL", "PRIMARY", "NONE", "NONE"]
        ds.ImageType = frame_type
        ds.RecognizableVisualFeatures = "NO"
        ds.IVUSAcquisition = "MOTORIZED"
        ds.IVUSPullbackRate = 20
        ds.IVUSPullbackStartFrameNumber = 1
        ds.IVUSPullbackStopFrameNumber = 2
        ds.ModeOfPercutaneousAccessSequence = Sequence()
        ds.OCTFocalDistance = 2.0
        ds.BeamSpotSize = 0.03
        ds.OCTAcquisitionDomain = "FREQUENCY"
        ds.OCTOpticalCenterWavelength = 1310
        ds.AxialResolution = 15.0
        ds.RangingDepth = 5.0
        ds.ALineRate = 50000.0
        ds.ALinesPerFrame = 16
        ds.CatheterDirectionOfRotation = "CW"
        ds.CatheterRotationalRate = 100
        ds.ContrastBolusAgentSequence = Sequence(
            [_item(**vars(_code("C-B0322", "SRT", "Iodinated contrast")), ContrastBolusAgentNumber=1)]
        )
        ds.ContrastBolusAgentSequence[0].ContrastBolusAdministrationRouteSequence = Sequence(
            [_code("G-D101", "SRT", "Intravenous route")]
        )
        ds.ContrastBolusAgentSequence[0].ContrastBolusIngredientCodeSequence = Sequence(
            [_code("C-11400", "SRT", "Iodine")]
        )
        ds.ContrastBolusAgentSequence[0].ContrastBolusVolume = 10
        ds.ContrastBolusAgentSequence[0].ContrastBolusIngredientConcentration = 300
        if presentation:
            ds.PresentationLUTShape = "IDENTITY"
            ds.InterpolationType = "BILINEAR"
        else:
            ds.EffectiveRefractiveIndex = 1.34
            ds.OCTZOffsetApplied = "NO"
            ds.RefractiveIndexApplied = "NO"
            ds.ALinePixelSpacing = 0.01
            ds.PixelIntensityRelationship = "LIN"
            ds.FirstALineLocation = 0.0
        shared = _item(
            FrameAnatomySequence=Sequence(
                [
                    _item(
                        AnatomicRegionSequence=Sequence([_code("T-43000", "SRT", "Coronary artery")]),
                        FrameLaterality="U",
                    )
                ]
            ),
            IntravascularOCTFrameTypeSequence=Sequence([_item(FrameType=frame_type)]),
        )
        per_frame = []
        for _ in range(2):
            item = Dataset()
            if presentation:
                item.IntravascularFrameContentSequence = Sequence([_item(SeamLineLocation=0.0, SeamLineIndex=0)])
            else:
                item.IntravascularOCTFrameContentSequence = Sequence(
                    [_item(OCTZOffsetCorrection=0, SeamLineLocation=0.0, SeamLineIndex=0, FirstALineLocation=0.0)]
                )
            per_frame.append(item)
        _enhanced(ds, series, presentation=presentation, shared=shared, per_frame=per_frame, volumetric="DISTORTED")
        corpus.instances.append(_Instance(f"ivoct-{number}", ds, ts, arr))


# -- waveforms ---------------------------------------------------------------------------------

_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
_LEAD_CODES = ["1", "2", "61", "62", "63", "64", "3", "4", "5", "6", "7", "8"]


def _ecg(corpus: _Corpus) -> Dataset:
    series = corpus.series("ecg", "ECG", "Resting 12-lead ECG")
    ds = series.base(ECG_12_LEAD, 1)
    del ds.Laterality
    ds.AcquisitionDateTime = f"{DATE}{TIME}"
    ds.AcquisitionContextSequence = Sequence()
    samples = 100
    group = Dataset()
    group.TriggerTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(_LEADS)
    group.NumberOfWaveformSamples = samples
    group.SamplingFrequency = 500
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for i, (lead, code) in enumerate(zip(_LEADS, _LEAD_CODES, strict=True), 1):
        ch = Dataset()
        ch.WaveformChannelNumber = i
        ch.ChannelLabel = lead
        source = _code(f"5.6.3-9-{code}", "SCPECG", f"Lead {lead}")
        source.CodingSchemeVersion = "1.3"
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity = 1.0
        ch.ChannelSensitivityUnitsSequence = Sequence([_code("uV", "UCUM", "microvolt")])
        ch.ChannelSensitivityCorrectionFactor = 1
        ch.ChannelBaseline = 0
        ch.ChannelSampleSkew = 0
        ch.WaveformBitsStored = 16
        ch.FilterLowFrequency = 0.05
        ch.FilterHighFrequency = 150
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    t = np.arange(samples)
    data = np.stack([(np.sin(t / 8.0 + i) * 500).astype("<i2") for i in range(len(_LEADS))], axis=1)
    group.WaveformData = data.tobytes()  # little endian: the ECG is written in a little endian syntax
    ds.WaveformSequence = Sequence([group])
    corpus.instances.append(_Instance("ecg-1", ds, ExplicitVRLittleEndian))
    return ds


def _waveform_states(corpus: _Corpus, ecg: Dataset) -> None:
    series = corpus.series("ecg", "PR", "Waveform presentation states")
    for number, sop in enumerate([WAVEFORM_PR, WAVEFORM_ACQUISITION_PR], 1):
        ds = series.base(sop, number)
        ds.ContentLabel = f"WAVEFORM{number}"
        ds.ContentDescription = "Display layout of the resting ECG"
        ds.PresentationCreationDate = DATE
        ds.PresentationCreationTime = TIME
        ds.ContentCreatorName = "Cardio^Tech"
        referenced = Dataset()
        referenced.SeriesInstanceUID = ecg.SeriesInstanceUID
        referenced.ReferencedInstanceSequence = Sequence([_ref(ecg)])
        ds.ReferencedSeriesSequence = Sequence([referenced])
        annotation = Dataset()
        annotation.UnformattedTextValue = "sinus rhythm"
        annotation.ReferencedWaveformChannels = [1, 1]
        ds.WaveformAnnotationSequence = Sequence([annotation])
        ts = ExplicitVRLittleEndian if number == 1 else ImplicitVRLittleEndian
        corpus.instances.append(_Instance(f"waveform-pr-{number}", ds, ts))


# -- structured reports and presentation states ----------------------------------------------


def _basic_text_sr(corpus: _Corpus, evidence: Dataset) -> None:
    series = corpus.series("ctmr", "SR", "Radiology report")
    ds = series.base(BASIC_TEXT_SR, 1)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "No acute abnormality."
    ds.ContentSequence = Sequence([finding])
    referenced = Dataset()
    referenced.StudyInstanceUID = evidence.StudyInstanceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = evidence.SeriesInstanceUID
    series_item.ReferencedSOPSequence = Sequence([_ref(evidence)])
    referenced.ReferencedSeriesSequence = Sequence([series_item])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([referenced])
    corpus.instances.append(_Instance("sr-basic-text-1", ds, ImplicitVRLittleEndian))


def _highdicom_objects(corpus: _Corpus, ct: list[Dataset]) -> None:
    """Comprehensive SR, GSPS, binary and label map segmentations, on the CT slices."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    series = corpus.series("ctmr", "SR", "Measurements")
    container = hd.sr.ContainerContentItem(name=codes.DCM.Findings)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value="A 3 mm lesion in slice 2.",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=ct,
        content=container,
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=corpus.uid("instance", "ctmr", series.number, 1),
        instance_number=1,
        manufacturer="oxidicom_py tests",
        is_complete=True,
    )
    _finish(sr, series, "comprehensive-sr-1", corpus, ExplicitVRLittleEndian)

    series = corpus.series("ctmr", "PR", "Soft tissue window")
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=ct,
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=corpus.uid("instance", "ctmr", series.number, 1),
        instance_number=1,
        manufacturer="oxidicom_py tests",
        manufacturer_model_name="modalities.py",
        software_versions="1",
        device_serial_number="0001",
        content_label="SOFTTISSUE",
        voi_lut_transformations=[hd.pr.SoftcopyVOILUTTransformation(window_center=40.0, window_width=400.0)],
    )
    pr.Laterality = ""
    _finish(pr, series, "gsps-1", corpus, ExplicitVRLittleEndian)

    category = codes.SCT.Tissue
    mask = np.zeros((len(ct), 16, 16), dtype=np.uint8)
    mask[:, 4:10, 4:10] = 1
    mask[1:, 10:14, 10:14] = 2
    for name, kind, ts in [("seg", "BINARY", ExplicitVRLittleEndian), ("seg-labelmap", "LABELMAP", RLELossless)]:
        series = corpus.series("ctmr", "SEG", f"Segmentation {kind.lower()}")
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for n, (label, prop) in enumerate([("liver", codes.SCT.Liver), ("kidney", codes.SCT.Kidney)], 1)
        ]
        seg = hd.seg.Segmentation(
            source_images=ct,
            pixel_array=mask,
            segmentation_type=kind,
            segment_descriptions=descriptions,
            series_instance_uid=series.uid,
            series_number=series.number,
            sop_instance_uid=corpus.uid("instance", "ctmr", series.number, 1),
            instance_number=1,
            manufacturer="oxidicom_py tests",
            manufacturer_model_name="modalities.py",
            software_versions="1",
            device_serial_number="0001",
            transfer_syntax_uid=ts,
            omit_empty_frames=False,
        )
        _finish(seg, series, f"{name}-1", corpus, ts)


def _finish(ds: Dataset, series: _Series, name: str, corpus: _Corpus, ts: str) -> None:
    """Make a highdicom object deterministic and give it the receiver's required tags."""
    ds.SeriesDescription = series.description
    for keyword in ("InstanceCreationDate", "ContentDate", "SeriesDate", "PresentationCreationDate"):
        if keyword in ds:
            setattr(ds, keyword, DATE)
    for keyword in ("InstanceCreationTime", "ContentTime", "SeriesTime", "PresentationCreationTime"):
        if keyword in ds:
            setattr(ds, keyword, TIME)
    org = corpus.uid("dimension-organization", series.study, series.number)
    for item in _walk(ds):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = org
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{DATE}{TIME}"
    corpus.instances.append(_Instance(name, ds, ts))


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


# -- segmentation by hand: height map --------------------------------------------------------


def _height_map(corpus: _Corpus, ct: list[Dataset]) -> None:
    series = corpus.series("ctmr", "SEG", "Segmentation height map")
    ds = series.base(HEIGHT_MAP_SEG, 1)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "HEIGHTMAP"
    ds.ContentDescription = "Surface height"
    ds.ContentCreatorName = "Seg^Tool"
    ds.SegmentationType = "HEIGHT"
    ds.FrameOfReferenceUID = series.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 32
    ds.NumberOfFrames = 1
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "retinal layer"
    segment.SegmentAlgorithmType = "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = Sequence([_code("85756007", "SCT", "Tissue")])
    segment.SegmentedPropertyTypeCodeSequence = Sequence([_code("5665001", "SCT", "Retina")])
    ds.SegmentSequence = Sequence([segment])
    source = Dataset()
    source.ReferencedSOPClassUID = ct[0].SOPClassUID
    source.ReferencedSOPInstanceUID = ct[0].SOPInstanceUID
    derivation = Dataset()
    derivation.DerivationCodeSequence = Sequence([_code("113076", "DCM", "Segmentation")])
    derivation.SourceImageSequence = Sequence([source])
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([derivation])
    content = Dataset()
    content.FrameAcquisitionNumber = 1
    frame.FrameContentSequence = Sequence([content])
    identification = Dataset()
    identification.ReferencedSegmentNumber = 1
    frame.SegmentIdentificationSequence = Sequence([identification])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    heights = (_gradient(16, 16, 1, 3, 255) / 10.0).astype("<f4")
    ds.FloatPixelData = heights.tobytes()
    corpus.instances.append(_Instance("seg-heightmap-1", ds, ExplicitVRLittleEndian))


# -- radiotherapy --------------------------------------------------------------------------------


def _rt(corpus: _Corpus, ct: list[Dataset]) -> None:
    structures = corpus.series("ctmr", "RTSTRUCT", "RT structures")
    ss = structures.base(RT_STRUCTURE_SET, 1)
    ss.OperatorsName = "Dosi^Metrist"
    ss.StructureSetLabel = "PLAN1"
    ss.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ss.PositionReferenceIndicator = ""
    ss.StructureSetDate = DATE
    ss.StructureSetTime = TIME
    contour_images = Sequence([_ref(img) for img in ct])
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = ct[0].SeriesInstanceUID
    rt_series.ContourImageSequence = contour_images
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as PS3.3 says)
    rt_study.ReferencedSOPInstanceUID = ct[0].StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([rt_study])
    ss.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = ct[0].FrameOfReferenceUID
    roi.ROIName = "GTV"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ss.StructureSetROISequence = Sequence([roi])
    contours = []
    for img in ct:
        contour = Dataset()
        contour.ContourImageSequence = Sequence([_ref(img)])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        z = float(img.ImagePositionPatient[2])
        contour.ContourData = [-1.0, -1.0, z, 1.0, -1.0, z, 1.0, 1.0, z, -1.0, 1.0, z]
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ss.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = ""
    ss.RTROIObservationsSequence = Sequence([observation])
    corpus.instances.append(_Instance("rtstruct-1", ss, ExplicitVRLittleEndian))

    plans = corpus.series("ctmr", "RTPLAN", "RT plan")
    plan = plans.base(RT_PLAN, 1)
    plan.OperatorsName = "Dosi^Metrist"
    plan.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    plan.PositionReferenceIndicator = ""
    plan.RTPlanLabel = "PLAN1"
    plan.RTPlanDate = DATE
    plan.RTPlanTime = TIME
    plan.RTPlanGeometry = "PATIENT"
    plan.ReferencedStructureSetSequence = Sequence([_ref(ss)])
    fraction = Dataset()
    fraction.FractionGroupNumber = 1
    fraction.NumberOfFractionsPlanned = 5
    fraction.NumberOfBeams = 0
    fraction.NumberOfBrachyApplicationSetups = 0
    plan.FractionGroupSequence = Sequence([fraction])
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    plan.PatientSetupSequence = Sequence([setup])
    plan.ApprovalStatus = "UNAPPROVED"
    corpus.instances.append(_Instance("rtplan-1", plan, ImplicitVRLittleEndian))

    doses = corpus.series("ctmr", "RTDOSE", "RT dose")
    dose, arr = _image(doses, RT_DOSE, 1, bits_stored=16, frames=2)
    for keyword in ("ImageType", "AcquisitionNumber", "PatientOrientation", "BurnedInAnnotation"):
        delattr(dose, keyword)
    _plane(dose, doses, z=0.0)
    del dose.SliceLocation
    dose.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    dose.OperatorsName = "Dosi^Metrist"
    dose.FrameIncrementPointer = 0x3004000C  # Grid Frame Offset Vector
    dose.GridFrameOffsetVector = [0.0, 2.0]
    dose.DoseUnits = "GY"
    dose.DoseType = "PHYSICAL"
    dose.DoseSummationType = "PLAN"
    dose.DoseGridScaling = 0.001
    dose.ReferencedRTPlanSequence = Sequence([_ref(plan)])
    corpus.instances.append(_Instance("rtdose-1", dose, ExplicitVRBigEndian, arr))


# -- writing -------------------------------------------------------------------------------------


def _encode_pixels(inst: _Instance) -> None:
    ds, arr, ts = inst.ds, inst.pixels, inst.transfer_syntax
    if arr is None:
        return
    if ts == JPEGBaseline8Bit:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        return
    if ts in (RLELossless, JPEGLSLossless):
        ds.compress(ts, arr, generate_instance_uid=False)
        return
    order = ">" if ts == ExplicitVRBigEndian else "<"
    ds.PixelData = arr.astype(arr.dtype.newbyteorder(order)).tobytes()
    ds["PixelData"].VR = "OW" if arr.dtype.itemsize > 1 else "OB"


def _write(inst: _Instance, folder: Path) -> Path:
    ds = inst.ds
    _encode_pixels(inst)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = inst.transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root, fixed: stable bytes
    meta.ImplementationVersionName = "OXIMIX_1"
    meta.SourceApplicationEntityTitle = "OXIMIX"
    ds.file_meta = meta
    path = folder / f"{inst.name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    _check(path, inst)
    return path


def _check(path: Path, inst: _Instance) -> None:
    """Read the file back with pydicom: same UIDs and syntax, and the pixels survive (exactly, if lossless)."""
    back = dcmread(path)
    expected = (inst.ds.SOPClassUID, inst.ds.SOPInstanceUID, inst.transfer_syntax)
    got = (back.file_meta.MediaStorageSOPClassUID, back.file_meta.MediaStorageSOPInstanceUID)
    if (back.SOPClassUID, back.SOPInstanceUID, back.file_meta.TransferSyntaxUID) != expected or got != expected[:2]:
        raise ValueError(f"{path} does not read back as written")
    if "PixelData" in back or "FloatPixelData" in back:
        pixels = back.pixel_array
        if inst.pixels is not None and inst.transfer_syntax not in _LOSSY and not np.array_equal(pixels, inst.pixels):
            raise ValueError(f"{path}: pixel data does not decode to what was encoded")


def write_mixed_corpus(folder: Path, seed: str = "oxidicom-mixed-corpus") -> list[Path]:
    """Write the corpus into ``folder`` (created if needed); return the files, in writing order.

    The same ``seed`` gives byte-identical files; another seed gives other UIDs everywhere.
    """
    folder.mkdir(parents=True, exist_ok=True)
    corpus = _Corpus(seed)
    _projection(corpus)
    _breast_projection(corpus)
    ct = _ct_mr(corpus)
    _us_sc(corpus)
    _ivoct(corpus)
    ecg = _ecg(corpus)
    _waveform_states(corpus, ecg)
    _basic_text_sr(corpus, ct[0])
    _highdicom_objects(corpus, ct)
    _height_map(corpus, ct)
    _rt(corpus, ct)
    return [_write(inst, folder) for inst in corpus.instances]
