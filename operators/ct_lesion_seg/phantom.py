"""Synthetic abdominal CT phantoms with known lesions, and a DICOM series writer.

Every phantom is derived solely from ``numpy.random.default_rng(seed)``: the same seed
(and the same keyword arguments) always gives a bitwise identical phantom.  The phantom
is an elliptical body of soft tissue with a subcutaneous fat layer in air, a liver-like
organ, a vertebra, an aorta and 0-3 hypo- or hyperdense lesions inside the organ.

Array convention: volumes are ``(z, y, x)`` = (slice, row, column).  Slice ``k`` is
written as DICOM instance ``k + 1`` at ``ImagePositionPatient`` z = ``z0 + k * spacing_z``
(z increasing with ``k``), rows run along patient y (anterior -> posterior) and columns
along patient x (right -> left), i.e. ``ImageOrientationPatient`` is ``[1, 0, 0, 0, 1, 0]``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = [
    "LesionTruth",
    "Phantom",
    "hu_to_mr",
    "longest_axial_diameter_mm",
    "make_phantom",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

_HU_MIN = -1024
_HU_MAX = 3071
_LESION_COUNT_PROBABILITIES = (0.1, 0.3, 0.3, 0.3)
_STUDY_DATE = "20240115"
_STUDY_TIME = "093000"


@dataclass(frozen=True)
class LesionTruth:
    """Ground truth of one synthetic lesion.

    Attributes
    ----------
    index : int
        Label value of the lesion in :attr:`Phantom.lesion_labels` (1..n).
    center_zyx_mm : tuple of float
        Centre of the generating ellipsoid in mm, measured from the centre of voxel
        ``(0, 0, 0)`` along the array axes (z, y, x).
    radii_zyx_mm : tuple of float
        Semi-axes of the generating ellipsoid in mm (z, then the two in-plane axes before
        the in-plane rotation is applied).
    mean_hu : float
        Mean HU of the lesion voxels in the generated (noisy) image.
    volume_ml : float
        Voxel count times voxel volume, in millilitres.
    longest_axial_diameter_mm : float
        Longest in-plane extent of the label mask, see :func:`longest_axial_diameter_mm`.
    """

    index: int
    center_zyx_mm: tuple[float, float, float]
    radii_zyx_mm: tuple[float, float, float]
    mean_hu: float
    volume_ml: float
    longest_axial_diameter_mm: float


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT volume with its lesion ground truth.

    Attributes
    ----------
    hu : numpy.ndarray
        ``int16`` array ``(z, y, x)`` of Hounsfield units.
    lesion_labels : numpy.ndarray
        ``uint8`` array ``(z, y, x)``; 0 is background, ``k`` is lesion ``k``.
    spacing_zyx_mm : tuple of float
        Slice spacing (= thickness) in z, then row (y) and column (x) pixel spacing, in mm.
    lesions : tuple of LesionTruth
        One entry per lesion, ordered by index.
    """

    hu: np.ndarray
    lesion_labels: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    lesions: tuple[LesionTruth, ...]

    @property
    def lesion_mask(self) -> np.ndarray:
        """numpy.ndarray: Boolean ``(z, y, x)`` mask of all lesion voxels."""
        return self.lesion_labels > 0


def longest_axial_diameter_mm(mask_zyx: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Longest in-plane extent of a binary mask.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        Boolean ``(z, y, x)`` mask.
    spacing_zyx_mm : tuple of float
        Voxel spacing ``(z, y, x)`` in mm.

    Returns
    -------
    float
        Over all axial slices, the largest Euclidean distance in mm between the centres of
        two mask voxels of the same slice, plus one mean in-plane pixel spacing (so that a
        single voxel measures one pixel, edge to edge).  0.0 for an empty mask.
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    if not mask.any():
        return 0.0
    _, sy, sx = spacing_zyx_mm
    longest = 0.0
    for axial in mask[mask.any(axis=(1, 2))]:
        interior = axial.copy()
        interior[1:, :] &= axial[:-1, :]
        interior[:-1, :] &= axial[1:, :]
        interior[:, 1:] &= axial[:, :-1]
        interior[:, :-1] &= axial[:, 1:]
        rows, cols = np.nonzero(axial & ~interior)
        points = np.stack([rows * sy, cols * sx], axis=1)
        distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
        longest = max(longest, float(distances.max()))
    return longest + 0.5 * (sy + sx)


def _gaussian_filter_fft(volume: np.ndarray, sigma_zyx_vox: tuple[float, float, float]) -> np.ndarray:
    """Gaussian smoothing with periodic boundaries, computed in the Fourier domain."""
    spectrum = np.fft.rfftn(volume)
    transfer = np.ones(spectrum.shape, dtype=np.float64)
    for axis, (size, sigma) in enumerate(zip(volume.shape, sigma_zyx_vox, strict=True)):
        freqs = np.fft.rfftfreq(size) if axis == volume.ndim - 1 else np.fft.fftfreq(size)
        shape = [1] * volume.ndim
        shape[axis] = freqs.size
        transfer = transfer * np.exp(-2.0 * (np.pi * sigma * freqs) ** 2).reshape(shape)
    return np.fft.irfftn(spectrum * transfer, s=volume.shape, axes=tuple(range(volume.ndim)))


def _ellipsoid_mask(
    grid_zyx_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    center_zyx_mm: np.ndarray,
    radii_zyx_mm: np.ndarray,
    angle_rad: float = 0.0,
) -> np.ndarray:
    """Mask of an ellipsoid rotated in-plane by ``angle_rad``; grids are broadcastable mm coordinates."""
    dz = grid_zyx_mm[0] - center_zyx_mm[0]
    dy = grid_zyx_mm[1] - center_zyx_mm[1]
    dx = grid_zyx_mm[2] - center_zyx_mm[2]
    cos_a, sin_a = np.cos(angle_rad), np.sin(angle_rad)
    u = cos_a * dy + sin_a * dx
    v = -sin_a * dy + cos_a * dx
    return (dz / radii_zyx_mm[0]) ** 2 + (u / radii_zyx_mm[1]) ** 2 + (v / radii_zyx_mm[2]) ** 2 <= 1.0


def make_phantom(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] = (48, 128, 128),
    n_lesions: int | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
) -> Phantom:
    """Generate a synthetic abdominal CT phantom.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; everything is derived from it.
    shape_zyx : tuple of int
        Volume shape ``(z, y, x)``.
    n_lesions : int or None
        Number of lesions to place (0-3 recommended).  ``None`` draws 0, 1, 2 or 3 with
        probabilities 0.1, 0.3, 0.3, 0.3.  Fewer are placed if the organ has no room.
    spacing_zyx_mm : tuple of float or None
        Voxel spacing in mm.  ``None`` draws z in [1.5, 3] mm and an isotropic in-plane
        spacing in [1.5, 3.0] mm (rounded to 0.01 mm); the anatomy scales with the
        field of view.

    Returns
    -------
    Phantom
        The generated phantom.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    if spacing_zyx_mm is None:
        pixel = round(float(rng.uniform(1.5, 3.0)), 2)
        spacing = (round(float(rng.uniform(1.5, 3.0)), 2), pixel, pixel)
    else:
        spacing = (float(spacing_zyx_mm[0]), float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2]))
    if n_lesions is None:
        n_lesions = int(rng.choice(len(_LESION_COUNT_PROBABILITIES), p=_LESION_COUNT_PROBABILITIES))

    sz, sy, sx = spacing
    fov = np.array([nz * sz, ny * sy, nx * sx])
    gz = (np.arange(nz) * sz)[:, None, None]
    gy = (np.arange(ny) * sy)[None, :, None]
    gx = (np.arange(nx) * sx)[None, None, :]
    grid = (gz, gy, gx)
    center = (fov - np.array([sz, sy, sx])) / 2.0

    # Body: elliptic cylinder with a subcutaneous fat layer.
    body_y = fov[1] * rng.uniform(0.30, 0.38)
    body_x = fov[2] * rng.uniform(0.40, 0.46)
    fat = min(body_y, body_x) * rng.uniform(0.06, 0.12)
    inner_y, inner_x = body_y - fat, body_x - fat
    ry = (gy - center[1]) / body_y
    rx = (gx - center[2]) / body_x
    body = np.broadcast_to(ry**2 + rx**2 <= 1.0, shape_zyx)
    inner = np.broadcast_to(((gy - center[1]) / inner_y) ** 2 + ((gx - center[2]) / inner_x) ** 2 <= 1.0, shape_zyx)

    clean = np.full(shape_zyx, -1000.0)
    clean[body] = rng.uniform(-115.0, -90.0)
    clean[inner] = rng.uniform(35.0, 45.0)

    # Vertebra (cortical ring, cancellous core) and aorta: bright structures outside the organ.
    spine_c = np.array([center[1] + 0.62 * inner_y, center[2]])
    spine_r = 0.14 * inner_y
    spine_d2 = (gy - spine_c[0]) ** 2 + (gx - spine_c[1]) ** 2
    clean[np.broadcast_to(spine_d2 <= spine_r**2, shape_zyx)] = rng.uniform(600.0, 900.0)
    clean[np.broadcast_to(spine_d2 <= (0.7 * spine_r) ** 2, shape_zyx)] = rng.uniform(180.0, 300.0)
    aorta_c = np.array([spine_c[0] - 1.6 * spine_r, center[2] + 0.9 * spine_r])
    aorta_d2 = (gy - aorta_c[0]) ** 2 + (gx - aorta_c[1]) ** 2
    clean[np.broadcast_to(aorta_d2 <= (0.55 * spine_r) ** 2, shape_zyx)] = rng.uniform(40.0, 200.0)

    # Liver-like organ on the patient's right (image left).
    organ_center = np.array(
        [
            center[0] + rng.uniform(-0.08, 0.08) * fov[0],
            center[1] - rng.uniform(0.05, 0.15) * inner_y,
            center[2] - rng.uniform(0.38, 0.45) * inner_x,
        ]
    )
    organ_radii = np.array(
        [
            rng.uniform(0.32, 0.42) * fov[0],
            rng.uniform(0.50, 0.62) * inner_y,
            rng.uniform(0.42, 0.50) * inner_x,
        ]
    )
    organ_hu = rng.uniform(55.0, 70.0)
    organ = _ellipsoid_mask(grid, organ_center, organ_radii) & inner
    clean[organ] = organ_hu

    # Lesions inside the organ, not touching each other.
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    # At least four pixels in-plane: smaller lesions are below what this phantom's noise allows.
    min_radius = max(6.0, 4.0 * spacing[1])
    max_radius = max(min_radius, min(20.0, 0.45 * float(organ_radii.min())))
    for _ in range(n_lesions):
        for _attempt in range(100):
            base = rng.uniform(min_radius, max_radius)
            radii = base * rng.uniform(0.8, 1.2, size=3)
            angle = rng.uniform(0.0, np.pi)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = direction * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)
            lesion_center = organ_center + offset * np.maximum(organ_radii - radii.max(), 0.0)
            if any(np.linalg.norm(lesion_center - c) < radii.max() + r.max() + 3.0 for c, r, _ in placed):
                continue
            lesion = _ellipsoid_mask(grid, lesion_center, radii, angle)
            if lesion.sum() < 8 or (lesion & ~organ).any():
                continue
            lesion_hu = rng.uniform(-10.0, 15.0) if rng.uniform() < 0.6 else rng.uniform(115.0, 165.0)
            clean[lesion] = lesion_hu
            labels[lesion] = len(placed) + 1
            placed.append((lesion_center, radii, angle))
            break
        else:
            logger.debug("seed %d: no room for lesion %d, placing %d", seed, len(placed) + 1, len(placed))
            break

    # Partial volume, smooth intensity inhomogeneity inside the body, correlated noise.
    image = _gaussian_filter_fft(clean, (0.3, 0.6, 0.6))
    bias_amplitude = rng.uniform(0.0, 10.0)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
    bias = (
        bias_amplitude
        * np.cos(np.pi * (gy - center[1]) / fov[1] + phase[0])
        * np.cos(np.pi * (gx - center[2]) / fov[2] + phase[1])
    )
    image += np.where(body, bias, 0.0)
    noise_sigma = rng.uniform(10.0, 20.0)
    corr = rng.uniform(0.5, 1.0)
    noise = _gaussian_filter_fft(rng.normal(size=shape_zyx), (0.3, corr, corr))
    image += noise * (noise_sigma / noise.std())
    hu = np.clip(np.rint(image), _HU_MIN, _HU_MAX).astype(np.int16)

    truths = []
    for index, (lesion_center, radii, _angle) in enumerate(placed, start=1):
        lesion = labels == index
        truths.append(
            LesionTruth(
                index=index,
                center_zyx_mm=(float(lesion_center[0]), float(lesion_center[1]), float(lesion_center[2])),
                radii_zyx_mm=(float(radii[0]), float(radii[1]), float(radii[2])),
                mean_hu=float(hu[lesion].mean()),
                volume_ml=float(lesion.sum() * sz * sy * sx / 1000.0),
                longest_axial_diameter_mm=longest_axial_diameter_mm(lesion, spacing),
            )
        )
    return Phantom(hu=hu, lesion_labels=labels, spacing_zyx_mm=spacing, lesions=tuple(truths))


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
    phantom: Phantom,
    out_dir: Path,
    *,
    modality: str = "CT",
    patient_id: str = "HF-PHANTOM-0001",
    patient_name: str = "Phantom^Demo",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    accession_number: str = "HF0001",
    series_description: str = "Phantom abdomen",
    body_part_examined: str = "ABDOMEN",
    drop_pixel_data_at: int | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a phantom as a single-frame DICOM series, one file per slice.

    Parameters
    ----------
    phantom : Phantom
        The phantom to write.
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
