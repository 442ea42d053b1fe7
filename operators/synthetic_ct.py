"""Building blocks of the synthetic CT phantoms: smoothing, ellipsoids and a DICOM series writer.

Shared by the example applications' phantom generators (``ct_lesion_seg.phantom``,
``ct_ich_triage.phantom``). Everything here is deterministic: the same volume and arguments give
bitwise identical arrays and files.

Array convention: volumes are ``(z, y, x)`` = (slice, row, column).  Slice ``k`` is
written as DICOM instance ``k + 1`` at ``ImagePositionPatient`` z = ``z0 + k * spacing_z``
(z increasing with ``k``), rows run along patient y (anterior -> posterior) and columns
along patient x (right -> left), i.e. ``ImageOrientationPatient`` is ``[1, 0, 0, 0, 1, 0]``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "SyntheticVolume",
    "ellipsoid_mask",
    "gaussian_filter_fft",
    "hu_to_mr",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

HU_MIN = -1024
"""Lowest HU a phantom holds (the clip applied before casting to ``int16``)."""
HU_MAX = 3071
"""Highest HU a phantom holds."""
_STUDY_DATE = "20240115"
_STUDY_TIME = "093000"


class SyntheticVolume(Protocol):
    """What :func:`write_dicom_series` needs of a phantom."""

    @property
    def hu(self) -> np.ndarray:
        """``int16`` array ``(z, y, x)`` of Hounsfield units."""
        ...

    @property
    def spacing_zyx_mm(self) -> tuple[float, float, float]:
        """Slice spacing (= thickness), then row and column pixel spacing, in mm."""
        ...


def gaussian_filter_fft(volume: np.ndarray, sigma_zyx_vox: tuple[float, float, float]) -> np.ndarray:
    """Gaussian smoothing with periodic boundaries, computed in the Fourier domain.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(z, y, x)`` array.
    sigma_zyx_vox : tuple of float
        Standard deviation of the kernel along each axis, in voxels.

    Returns
    -------
    numpy.ndarray
        The smoothed ``float64`` volume.
    """
    spectrum = np.fft.rfftn(volume)
    transfer = np.ones(spectrum.shape, dtype=np.float64)
    for axis, (size, sigma) in enumerate(zip(volume.shape, sigma_zyx_vox, strict=True)):
        freqs = np.fft.rfftfreq(size) if axis == volume.ndim - 1 else np.fft.fftfreq(size)
        shape = [1] * volume.ndim
        shape[axis] = freqs.size
        transfer = transfer * np.exp(-2.0 * (np.pi * sigma * freqs) ** 2).reshape(shape)
    return np.fft.irfftn(spectrum * transfer, s=volume.shape, axes=tuple(range(volume.ndim)))


def ellipsoid_mask(
    grid_zyx_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    center_zyx_mm: np.ndarray,
    radii_zyx_mm: np.ndarray,
    angle_rad: float = 0.0,
) -> np.ndarray:
    """Mask of an ellipsoid rotated in-plane by ``angle_rad``.

    Parameters
    ----------
    grid_zyx_mm : tuple of numpy.ndarray
        Broadcastable coordinates in mm along z, y and x.
    center_zyx_mm, radii_zyx_mm : numpy.ndarray
        Centre and semi-axes in mm (z, then the two in-plane axes before rotation).
    angle_rad : float
        In-plane rotation.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the broadcast shape.
    """
    dz = grid_zyx_mm[0] - center_zyx_mm[0]
    dy = grid_zyx_mm[1] - center_zyx_mm[1]
    dx = grid_zyx_mm[2] - center_zyx_mm[2]
    cos_a, sin_a = np.cos(angle_rad), np.sin(angle_rad)
    u = cos_a * dy + sin_a * dx
    v = -sin_a * dy + cos_a * dx
    return (dz / radii_zyx_mm[0]) ** 2 + (u / radii_zyx_mm[1]) ** 2 + (v / radii_zyx_mm[2]) ** 2 <= 1.0


def hu_to_mr(hu: np.ndarray) -> np.ndarray:
    """Map Hounsfield units to plausible T1-weighted-like MR signal intensities.

    Parameters
    ----------
    hu : numpy.ndarray
        Array of Hounsfield units.

    Returns
    -------
    numpy.ndarray
        ``int16`` array in roughly [0, 1100]: air dark, fat bright, organ brighter than
        soft tissue, cortical bone dark.
    """
    points_hu = [-1024.0, -900.0, -100.0, 0.0, 40.0, 65.0, 150.0, 400.0, 3071.0]
    points_mr = [0.0, 10.0, 1000.0, 300.0, 450.0, 600.0, 700.0, 150.0, 50.0]
    return np.rint(np.interp(hu.astype(np.float64), points_hu, points_mr)).astype(np.int16)


def _ds(value: float) -> str:
    """Format a float as a DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def write_dicom_series(
    phantom: SyntheticVolume,
    out_dir: Path,
    *,
    series_description: str,
    body_part_examined: str,
    modality: str = "CT",
    patient_id: str = "HF-PHANTOM-0001",
    patient_name: str = "Phantom^Demo",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    accession_number: str = "HF0001",
    drop_pixel_data_at: int | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a phantom as a single-frame DICOM series, one file per slice.

    Parameters
    ----------
    phantom : SyntheticVolume
        The phantom to write (its ``hu`` and ``spacing_zyx_mm``).
    out_dir : pathlib.Path
        Target directory (created if needed); files are named ``IM0001.dcm``, ...
    modality : {"CT", "MR"}
        ``"CT"`` writes CT Image Storage with HU pixel values (slope 1, intercept 0);
        ``"MR"`` writes MR Image Storage with intensities from :func:`hu_to_mr`.
    patient_id, patient_name, accession_number, series_description, body_part_examined : str
        Values of the corresponding DICOM attributes.
    study_instance_uid, series_instance_uid : str or None
        UIDs to use; ``None`` derives them deterministically (see ``uid_seed``).
    drop_pixel_data_at : int or None
        Index of a slice written without Pixel Data (everything else unchanged), to
        simulate a broken series.
    uid_seed : str or None
        Entropy for the derived UIDs.  ``None`` uses a hash of the phantom's voxels and
        spacing, so writing the same phantom twice with the same arguments yields
        identical UIDs (and identical files).

    Returns
    -------
    list of pathlib.Path
        The written files, ordered by slice index.
    """
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"unsupported modality {modality!r}; expected 'CT' or 'MR'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if uid_seed is None:
        digest = hashlib.sha256(phantom.hu.tobytes())
        digest.update(repr(phantom.spacing_zyx_mm).encode())
        uid_seed = f"phantom-{digest.hexdigest()}"
    study_uid = study_instance_uid or generate_uid(entropy_srcs=[uid_seed, "study", patient_id, accession_number])
    series_uid = series_instance_uid or generate_uid(
        entropy_srcs=[uid_seed, "series", study_uid, modality, series_description]
    )
    frame_of_reference_uid = generate_uid(entropy_srcs=[uid_seed, "frame-of-reference", study_uid])

    nz, ny, nx = phantom.hu.shape
    sz, sy, sx = phantom.spacing_zyx_mm
    origin = (-(nx - 1) / 2.0 * sx, -(ny - 1) / 2.0 * sy, -(nz - 1) / 2.0 * sz)
    if modality == "CT":
        pixels = phantom.hu.astype(np.int16)
        sop_class = CTImageStorage
        window_center, window_width = 40.0, 400.0
    else:
        pixels = hu_to_mr(phantom.hu)
        sop_class = MRImageStorage
        window_center, window_width = 500.0, 1000.0

    paths = []
    for k in range(nz):
        sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "HOUNSFIELD_1"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = _STUDY_DATE
        ds.SeriesDate = _STUDY_DATE
        ds.ContentDate = _STUDY_DATE
        ds.StudyTime = _STUDY_TIME
        ds.SeriesTime = _STUDY_TIME
        ds.ContentTime = _STUDY_TIME
        ds.AccessionNumber = accession_number
        ds.Modality = modality
        ds.Manufacturer = "Hounsfield phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Hounsfield synthetic phantom"
        ds.SeriesDescription = series_description
        ds.ManufacturerModelName = "Synthetic"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = body_part_examined
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.PatientPosition = "HFS"
        if modality == "CT":
            ds.KVP = "120"
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = "5.0"
            ds.EchoTime = "2.0"
            ds.EchoTrainLength = "1"
            ds.MagneticFieldStrength = "1.5"
            ds.ImagedNucleus = "1H"
            ds.FlipAngle = "10"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = accession_number[:16]
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(origin[2] + k * sz)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(origin[2] + k * sz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = _ds(window_center)
        ds.WindowWidth = _ds(window_width)
        if modality == "CT":
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
        if k != drop_pixel_data_at:
            ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels[k]).tobytes())
        path = out_dir / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d %s slices of series %s to %s", nz, modality, series_uid, out_dir)
    return paths
