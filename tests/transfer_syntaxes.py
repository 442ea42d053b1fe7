"""Synthetic images in every transfer syntax the listener must accept as sent (import as ``tests.transfer_syntaxes``).

Modalities send what they were configured to send: uncompressed (implicit or explicit VR), deflated, JPEG
(baseline, process 14, SV1), JPEG-LS, JPEG 2000, HTJ2K or RLE. The tests need real, decodable files in each,
built here from small synthetic images (no PHI: the patient is made up):

* pydicom writes the uncompressed and deflated files and encodes RLE, JPEG-LS and JPEG 2000
  (its pyjpegls and pylibjpeg-openjpeg encoder plugins);
* dcmtk's ``dcmcjpeg`` (by absolute path) encodes JPEG baseline, extended, lossless process 14 and SV1,
  which pydicom cannot;
* imagecodecs (OpenJPH) encodes HTJ2K code streams, which pydicom then encapsulates.

Every factory returns a native (Explicit VR Little Endian) :class:`~pydicom.dataset.Dataset`; :func:`encode`
writes it as a Part-10 file in one :class:`Syntax`. :func:`pixels_match` says whether decoded pixels are the
original ones (exactly for lossless syntaxes, within a PSNR floor for lossy ones).
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

__all__ = [
    "IMAGE_FACTORIES",
    "SYNTAXES",
    "Syntax",
    "ct_image",
    "encode",
    "enhanced_ct_image",
    "enhanced_mr_image",
    "mr_image",
    "multiframe_word_sc_image",
    "pixels_match",
    "psnr",
    "sc_image",
]

DCMCJPEG = "/usr/bin/dcmcjpeg"
LOSSY_PSNR_FLOOR_DB = 30.0
"""Lossy syntaxes must reproduce the synthetic images at least this well (they reach 40-60 dB)."""


@dataclass(frozen=True)
class Syntax:
    """One transfer syntax: how to make a file in it and how a sender proposes it."""

    name: str
    """pydicom's keyword for the UID (``JPEGLosslessSV1``): test ids and failure messages use it."""
    uid: UID
    lossless: bool
    encoder: str
    """Who encodes it here: ``pydicom``, ``dcmcjpeg`` or ``imagecodecs``."""
    dcmtk_can_send: bool = True
    """dcmtk 3.6.7 (Debian bookworm) knows the UID; HTJ2K came with 3.6.8, so pynetdicom sends those."""
    bits: int | None = None
    """The only bit depth the syntax takes (JPEG baseline: 8, extended: 12); ``None`` for any."""


def _syntax(name: str, lossless: bool, encoder: str, **kwargs: object) -> Syntax:
    return Syntax(name, UID(getattr(uid, name)), lossless, encoder, **kwargs)  # type: ignore[arg-type]


SYNTAXES: tuple[Syntax, ...] = (
    _syntax("ImplicitVRLittleEndian", True, "pydicom"),
    _syntax("ExplicitVRLittleEndian", True, "pydicom"),
    _syntax("DeflatedExplicitVRLittleEndian", True, "pydicom"),
    _syntax("JPEGBaseline8Bit", False, "dcmcjpeg", bits=8),
    _syntax("JPEGExtended12Bit", False, "dcmcjpeg", bits=12),
    _syntax("JPEGLossless", True, "dcmcjpeg"),
    _syntax("JPEGLosslessSV1", True, "dcmcjpeg"),
    _syntax("JPEGLSLossless", True, "pydicom"),
    _syntax("JPEGLSNearLossless", False, "pydicom"),
    _syntax("JPEG2000Lossless", True, "pydicom"),
    _syntax("JPEG2000", False, "pydicom"),
    _syntax("HTJ2KLossless", True, "imagecodecs", dcmtk_can_send=False),
    _syntax("HTJ2KLosslessRPCL", True, "imagecodecs", dcmtk_can_send=False),
    _syntax("HTJ2K", False, "imagecodecs", dcmtk_can_send=False),
    _syntax("RLELossless", True, "pydicom"),
)

# dcmcjpeg options per syntax: the mode, and "never assign a new SOP Instance UID" so tests find the instance.
_DCMCJPEG_ARGS = {
    "JPEGBaseline8Bit": ["+eb", "+q", "95"],
    "JPEGExtended12Bit": ["+ee", "+q", "95"],
    "JPEGLossless": ["+el", "+sv", "6"],
    "JPEGLosslessSV1": ["+e1"],
}


# --- synthetic images ---------------------------------------------------------------------------------------------


def _phantom(seed: int, frames: int, rows: int, cols: int, low: int, high: int) -> np.ndarray:
    """Smooth blobs with a little noise: realistic enough for codecs, and lossy ones stay well above the floor."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    stack = np.empty((frames, rows, cols), dtype=np.float64)
    for index in range(frames):
        image = np.zeros((rows, cols))
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols
            image += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(60, 300))
        image += 0.2 * yy / rows + rng.normal(0, 0.004, (rows, cols))
        stack[index] = image
    stack = (stack - stack.min()) / (stack.max() - stack.min())
    return np.rint(low + stack * (high - low))


def _base(sop_class: UID, modality: str, seed: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Synthetic^Syntax"
    ds.PatientID = f"SYN-{seed:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{seed:05d}"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Hounsfield tests"
    ds.ManufacturerModelName = "Synthetic"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _pixels(ds: Dataset, array: np.ndarray, *, bits_stored: int, signed: bool) -> None:
    frames, rows, cols = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    data = array.astype(dtype)
    if frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _plane(ds: Dataset, index: int) -> None:
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-32.0, -32.0, 2.5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.5


def ct_image(seed: int) -> Dataset:
    """A classic single-frame CT: signed 16-bit stored values, the hard case for codecs."""
    ds = _base(uid.CTImageStorage, "CT", seed)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    _plane(ds, seed % 7)
    _pixels(ds, _phantom(seed, 1, 64, 64, -1000, 1500), bits_stored=16, signed=True)
    return ds


def mr_image(seed: int) -> Dataset:
    """A classic single-frame MR: unsigned, 12 bits stored in 16."""
    ds = _base(uid.MRImageStorage, "MR", seed)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500, 15, 1, 1.5
    _plane(ds, seed % 7)
    _pixels(ds, _phantom(seed, 1, 64, 64, 0, 4095), bits_stored=12, signed=False)
    return ds


def _secondary_capture(ds: Dataset) -> None:
    del ds.FrameOfReferenceUID  # no Frame of Reference module in SC images
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"


def sc_image(seed: int) -> Dataset:
    """A Secondary Capture: 8-bit grey (what JPEG baseline is for)."""
    ds = _base(uid.SecondaryCaptureImageStorage, "OT", seed)
    _secondary_capture(ds)
    _pixels(ds, _phantom(seed, 1, 64, 64, 0, 255), bits_stored=8, signed=False)
    return ds


def multiframe_word_sc_image(seed: int, frames: int = 3) -> Dataset:
    """A Multi-frame Grayscale Word Secondary Capture: 12 of 16 bits, several frames."""
    ds = _base(uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "OT", seed)
    _secondary_capture(ds)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 100.0
    _pixels(ds, _phantom(seed, frames, 64, 64, 0, 4095), bits_stored=12, signed=False)
    return ds


def _item(**elements: object) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _seq(**elements: object) -> Sequence:
    return Sequence([_item(**elements)])


_IMAGE_DESCRIPTION = {
    "PixelPresentation": "MONOCHROME",
    "VolumetricProperties": "VOLUME",
    "VolumeBasedCalculationTechnique": "NONE",
}


def _enhanced(sop_class: UID, modality: str, seed: int, frames: int, image_type: list[str]) -> Dataset:
    """The multi-frame functional group skeleton shared by enhanced CT and MR."""
    ds = _base(sop_class, modality, seed)
    ds.PatientPosition = "HFS"
    ds.ImageType = image_type
    for keyword, value in _IMAGE_DESCRIPTION.items():
        setattr(ds, keyword, value)
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20240102101500"
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = Sequence()
    ds.BurnedInAnnotation = "NO"
    ds.PositionReferenceIndicator = ""
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = frames
    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = _seq(DimensionOrganizationUID=dimension_uid)
    ds.DimensionIndexSequence = _seq(
        DimensionOrganizationUID=dimension_uid,
        DimensionIndexPointer=0x00209057,  # InStackPositionNumber
        FunctionalGroupPointer=0x00209111,  # FrameContentSequence
        DimensionDescriptionLabel="In-stack position",
    )
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=_seq(PixelSpacing=[1.0, 1.0], SliceThickness=2.5),
                PlaneOrientationSequence=_seq(ImageOrientationPatient=[1, 0, 0, 0, 1, 0]),
                FrameAnatomySequence=_seq(
                    FrameLaterality="U",
                    AnatomicRegionSequence=_seq(
                        CodeValue="38266002", CodingSchemeDesignator="SCT", CodeMeaning="Entire body"
                    ),
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _item(
                FrameContentSequence=_seq(
                    StackID="1",
                    InStackPositionNumber=index + 1,
                    DimensionIndexValues=[index + 1],
                    FrameAcquisitionDateTime="20240102101500",
                    FrameReferenceDateTime="20240102101500",
                    FrameAcquisitionDuration=100.0,
                ),
                PlanePositionSequence=_seq(ImagePositionPatient=[-32.0, -32.0, 2.5 * index]),
            )
            for index in range(frames)
        ]
    )
    return ds


def enhanced_ct_image(seed: int, frames: int = 3) -> Dataset:
    """An Enhanced CT Image (single-energy, axial): functional groups, dimensions, signed 16-bit frames."""
    image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds = _enhanced(uid.EnhancedCTImageStorage, "CT", seed, frames, image_type)
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.CTImageFrameTypeSequence = _seq(FrameType=image_type, **_IMAGE_DESCRIPTION)
    shared.PixelValueTransformationSequence = _seq(RescaleIntercept=0, RescaleSlope=1, RescaleType="HU")
    shared.CTAcquisitionTypeSequence = _seq(AcquisitionType="SEQUENCED", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
    shared.CTAcquisitionDetailsSequence = _seq(
        DataCollectionDiameter=500.0,
        GantryDetectorTilt=0.0,
        TableHeight=150.0,
        RotationDirection="CW",
        RevolutionTime=1.0,
        SingleCollimationWidth=0.625,
        TotalCollimationWidth=40.0,
    )
    shared.CTTableDynamicsSequence = _seq(TableSpeed=0.0, TableFeedPerRotation=0.0, SpiralPitchFactor=0.0)
    shared.CTPositionSequence = _seq(
        TablePosition=0.0,
        ReconstructionTargetCenterPatient=[0.0, 0.0, 0.0],
        DataCollectionCenterPatient=[0.0, 0.0, 0.0],
    )
    shared.CTGeometrySequence = _seq(DistanceSourceToDetector=1000.0, DistanceSourceToDataCollectionCenter=500.0)
    shared.CTReconstructionSequence = _seq(
        ReconstructionAlgorithm="FILTER_BACK_PROJ",
        ConvolutionKernel="STANDARD",
        ConvolutionKernelGroup="SOFT_TISSUE",
        ReconstructionDiameter=64.0,
        ReconstructionPixelSpacing=[1.0, 1.0],
        ReconstructionAngle=360.0,
        ImageFilter="NONE",
    )
    shared.CTExposureSequence = _seq(
        ExposureTimeInms=1000.0,
        XRayTubeCurrentInmA=200.0,
        ExposureInmAs=200.0,
        ExposureModulationType="NONE",
    )
    shared.CTXRayDetailsSequence = _seq(KVP=120.0, FilterType="FLAT", FilterMaterial="ALUMINUM", FocalSpots=[1.0])
    shared.IrradiationEventIdentificationSequence = _seq(IrradiationEventUID=generate_uid())
    _pixels(ds, _phantom(seed, frames, 64, 64, -1000, 1500), bits_stored=16, signed=True)
    return ds


def enhanced_mr_image(seed: int, frames: int = 3) -> Dataset:
    """An Enhanced MR Image (2D spin echo): functional groups, dimensions, 12-bit unsigned frames."""
    image_type = ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    ds = _enhanced(uid.EnhancedMRImageStorage, "MR", seed, frames, image_type)
    contrast = {"ComplexImageComponent": "MAGNITUDE", "AcquisitionContrast": "T1"}
    for keyword, value in contrast.items():
        setattr(ds, keyword, value)
    ds.MagneticFieldStrength = 1.5
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    # MR Pulse Sequence module (required for ORIGINAL images)
    ds.PulseSequenceName = "SE2D"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "SPIN"
    ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.NumberOfKSpaceTrajectories = 1
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.MRImageFrameTypeSequence = _seq(FrameType=image_type, **_IMAGE_DESCRIPTION, **contrast)
    shared.PixelValueTransformationSequence = _seq(RescaleIntercept=0, RescaleSlope=1, RescaleType="US")
    shared.MRTimingAndRelatedParametersSequence = _seq(
        RepetitionTime=500.0,
        FlipAngle=90.0,
        EchoTrainLength=1,
        RFEchoTrainLength=1,
        GradientEchoTrainLength=0,
        GradientOutputType="DB_DT",
        GradientOutput=10.0,
        OperatingModeSequence=_seq(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
        SpecificAbsorptionRateSequence=_seq(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5
        ),
    )
    shared.MRFOVGeometrySequence = _seq(
        InPlanePhaseEncodingDirection="ROW",
        MRAcquisitionFrequencyEncodingSteps=64,
        MRAcquisitionPhaseEncodingStepsInPlane=64,
        PercentSampling=100.0,
        PercentPhaseFieldOfView=100.0,
    )
    shared.MREchoSequence = _seq(EffectiveEchoTime=15.0)
    shared.MRModifierSequence = _seq(
        InversionRecovery="NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
    )
    shared.MRImagingModifierSequence = _seq(
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency=63.9,
        PixelBandwidth=200.0,
    )
    shared.MRReceiveCoilSequence = _seq(
        ReceiveCoilName="HEAD", ReceiveCoilManufacturerName="", ReceiveCoilType="VOLUME", QuadratureReceiveCoil="YES"
    )
    shared.MRTransmitCoilSequence = _seq(
        TransmitCoilName="BODY", TransmitCoilManufacturerName="", TransmitCoilType="BODY"
    )
    shared.MRAveragesSequence = _seq(NumberOfAverages=1.0)
    _pixels(ds, _phantom(seed, frames, 64, 64, 0, 4095), bits_stored=12, signed=False)
    return ds


IMAGE_FACTORIES: dict[str, Callable[[int], Dataset]] = {
    "CT": ct_image,
    "MR": mr_image,
    "SC": sc_image,
    "MultiFrameWordSC": multiframe_word_sc_image,
    "EnhancedCT": enhanced_ct_image,
    "EnhancedMR": enhanced_mr_image,
}


# --- encoding ------------------------------------------------------------------------------------------------------


def _frames(ds: Dataset) -> np.ndarray:
    array = ds.pixel_array
    return array if int(ds.get("NumberOfFrames", 1)) > 1 else array[np.newaxis]


def _htj2k(ds: Dataset, syntax: Syntax) -> Dataset:
    """Encode each frame with OpenJPH (via imagecodecs) and encapsulate the code streams.

    The RPCL syntax wants RPCL progression (OpenJPH's default, checked) and a TLM marker segment (PS3.5 A.4.11).
    """
    rpcl = syntax.name == "HTJ2KLosslessRPCL"
    # Lossy: the quantisation step, small enough to keep the synthetic images well above the PSNR floor.
    level = None if syntax.lossless else 1e-4
    frames: list[bytes] = []
    for frame in _frames(ds):
        stream = bytes(imagecodecs.htj2k_encode(frame, level, reversible=syntax.lossless, tlm=rpcl))
        if rpcl and _progression_order(stream) != 2:
            raise RuntimeError("OpenJPH did not write RPCL progression, which HTJ2KLosslessRPCL requires")
        frames.append(stream)
    encoded = copy.deepcopy(ds)
    encoded.PixelData = encapsulate(frames)
    encoded["PixelData"].VR = "OB"
    encoded["PixelData"].is_undefined_length = True
    encoded.file_meta.TransferSyntaxUID = syntax.uid
    if not syntax.lossless:
        _mark_lossy(encoded, "ISO_15444_15")
    return encoded


def _progression_order(stream: bytes) -> int:
    """The COD marker segment's progression order (0 LRCP, 1 RLCP, 2 RPCL, 3 PCRL, 4 CPRL)."""
    cod = stream.index(b"\xff\x52")
    return stream[cod + 5]  # marker (2), Lcod (2), Scod (1), then SGcod starts with the progression order


def _mark_lossy(ds: Dataset, method: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method


def _dcmcjpeg(native: Path, syntax: Syntax, target: Path) -> None:
    argv = [DCMCJPEG, *_DCMCJPEG_ARGS[syntax.name], "+un", str(native), str(target)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dcmcjpeg could not encode {syntax.name}: {proc.stderr.strip()[-400:]}")


def encode(ds: Dataset, syntax: Syntax, folder: Path) -> Path:
    """Write ``ds`` (native, Explicit VR Little Endian) as a Part-10 file in ``syntax``; return its path.

    The SOP Instance UID is kept, so a test finds the instance it sent. ``ds`` itself is not changed.
    """
    if syntax.bits is not None and int(ds.BitsStored) != syntax.bits:
        raise ValueError(f"{syntax.name} takes {syntax.bits}-bit images, not {ds.BitsStored}-bit")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{ds.SOPInstanceUID}.{syntax.name}.dcm"
    if syntax.encoder == "dcmcjpeg":
        native = folder / f"{ds.SOPInstanceUID}.native.dcm"
        ds.save_as(native, enforce_file_format=True)
        try:
            _dcmcjpeg(native, syntax, target)
        finally:
            native.unlink(missing_ok=True)
        return target
    if syntax.encoder == "imagecodecs":
        _htj2k(ds, syntax).save_as(target, enforce_file_format=True)
        return target
    encoded = copy.deepcopy(ds)
    if syntax.uid.is_compressed:
        options: dict[str, object] = {}
        if syntax.name == "JPEGLSNearLossless":
            options["jls_error"] = 2
        elif syntax.name == "JPEG2000":
            options["j2k_psnr"] = [60.0]
        encoded.compress(syntax.uid, generate_instance_uid=False, **options)  # type: ignore[arg-type]
        if not syntax.lossless:
            _mark_lossy(encoded, "ISO_14495_1" if "LS" in syntax.name else "ISO_15444_1")
    else:
        encoded.file_meta.TransferSyntaxUID = syntax.uid  # pydicom writes (and deflates) per the file meta
    encoded.save_as(target, enforce_file_format=True)
    return target


# --- comparing pixels ----------------------------------------------------------------------------------------------


def psnr(decoded: np.ndarray, original: np.ndarray, bits_stored: int) -> float:
    """Peak signal-to-noise ratio in dB against the stored bit depth's full range (inf when identical)."""
    error = np.mean((decoded.astype(np.float64) - original.astype(np.float64)) ** 2)
    if error == 0:
        return float("inf")
    return float(10 * np.log10(float(2**bits_stored - 1) ** 2 / error))


def pixels_match(decoded: np.ndarray, original: np.ndarray, *, lossless: bool, bits_stored: int) -> str | None:
    """``None`` when ``decoded`` reproduces ``original`` well enough, else why not (for an assertion message)."""
    if decoded.shape != original.shape:
        return f"shape {decoded.shape} != {original.shape}"
    if lossless:
        if np.array_equal(decoded, original):
            return None
        differing = int(np.count_nonzero(decoded != original))
        return f"{differing} of {original.size} pixels differ after a lossless round trip"
    quality = psnr(decoded, original, bits_stored)
    if quality < LOSSY_PSNR_FLOOR_DB:
        return f"PSNR {quality:.1f} dB is below the {LOSSY_PSNR_FLOOR_DB} dB floor"
    return None
