"""The soak's hospital: eight simulated modalities sending a day's mix of studies, each with an exact ledger.

Each :class:`ModalityThread` makes one synthetic study at a time (:func:`make_study`: CT, RLE-compressed CT,
MR, a CR image, a multi-frame secondary capture) and sends it the way its :class:`Modality` does: dcmtk's
``storescu``, pynetdicom, or STOW-RS to the registry. Like a modality's send queue it resends what was not
acknowledged until every instance is, then waits and starts the next study.

The :class:`Ledger` is the proof the reconciliation needs: an instance is *acknowledged* only when the
receiver's response for that very instance was seen and said it was stored (C-STORE-RSP Success or a
Storage warning, Bxxx; a STOW-RS ReferencedSOPSequence item). Everything else is either a
:class:`Refusal` (the receiver answered no, with a status and, when it gave one, its reason) or an
:class:`Interruption` (no answer: connection refused, reset or aborted, as when the listener is killed).

How each sender's answers are read:

* ``storescu`` (dcmtk 3.6.7) runs with ``-d`` and ``-nh`` (keep sending after a refusal); its log (stderr)
  is parsed by :func:`parse_storescu_log`: ``I: Sending file: PATH`` names the file, ``I: Sending Store
  Request (MsgID N, ...)`` its message ID, and the ``INCOMING DIMSE MESSAGE`` block of the C-STORE RSP must
  answer that message ID (``Message ID Being Responded To``) for that SOP Instance UID, with its ``DIMSE
  Status : 0xNNNN: words``; the Error Comment is the ``(0000,0902) LO [...]`` line of the ``Status Detail:``
  dump that follows. ``F: Association Rejected:`` with its ``Result:`` and ``Reason:`` lines is a rejection.
* pynetdicom: the status dataset of each ``send_c_store`` (Status, ErrorComment); an empty one means no
  response.
* STOW-RS: the Store Instances Response (ReferencedSOPSequence, FailedSOPSequence with FailureReason), the
  reasons in words from the ``Warning: 299 hounsfield: ... (NNNN)`` header fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)

from hounsfield.dicom_status import is_stored
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

__all__ = [
    "KINDS",
    "MIX",
    "MODALITIES",
    "ROUTABLE_KINDS",
    "STORESCU",
    "Interruption",
    "Ledger",
    "Modality",
    "ModalityThread",
    "Refusal",
    "SendOutcome",
    "StudyPlan",
    "StudyRecord",
    "make_study",
    "parse_storescu_log",
    "send_pynetdicom",
    "send_storescu",
    "send_stow",
]

logger = logging.getLogger(__name__)

STORESCU = "/usr/bin/storescu"
KINDS = ("ct", "compressed-ct", "mr", "cr", "multiframe")
ROUTABLE_KINDS = frozenset({"ct", "compressed-ct"})
"""What the soak's deployment routes: CT series of >= 8 instances that are not scouts."""
COMPRESSED_CT_SYNTAX = RLELossless
"""The compressed CT's transfer syntax: lossless, encoded by pydicom (pylibjpeg-rle), sent by every sender."""

_CT_SHAPE = (12, 64, 64)
_MR_SHAPE = (10, 64, 64)
_CR_SIZE = 256
_MULTIFRAME_SHAPE = (24, 64, 64)

# storescu proposes a file's own compressed transfer syntax only with the matching option (dcmtk 3.6.7);
# uncompressed files need none (its default proposes every uncompressed syntax).
_STORESCU_SYNTAX_OPTION = {
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.1.99": "-xd",  # Deflated Explicit VR Little Endian
}
_STORESCU_TIMEOUT_S = 600.0


# --- studies ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyPlan:
    """One synthetic study on disk, ready to send."""

    kind: str
    """``ct``, ``mr``, ``cr``, ``multiframe`` or ``compressed-ct``."""
    study_instance_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    """In the order of :attr:`files`."""
    routable: bool
    """The soak's deployment routes it (CT, >= 8 instances, not a scout)."""
    patient_id: str = ""


def _patient(seed: int) -> tuple[str, str, str]:
    """Synthetic Patient ID, Patient Name and Accession Number of a seed (no real person)."""
    return f"SOAK-P{seed}", f"SOAK^P{seed}", f"SK{seed}"[-16:]


def _today() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _phantom_series(kind: str, folder: Path, seed: int) -> list[Path]:
    """A CT or MR phantom series, written with today's dates and the seed's patient."""
    patient_id, patient_name, accession = _patient(seed)
    modality = "MR" if kind == "mr" else "CT"
    shape = _MR_SHAPE if kind == "mr" else _CT_SHAPE
    phantom = make_phantom(seed, shape_zyx=shape, n_lesions=1)
    files = write_dicom_series(
        phantom, folder, modality=modality, uid_seed=f"soak-{seed}-{kind}",
        patient_id=patient_id, patient_name=patient_name, accession_number=accession,
    )  # fmt: skip
    date, clock = _today()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = clock
        if kind == "compressed-ct":
            ds.compress(COMPRESSED_CT_SYNTAX)
        ds.save_as(path, enforce_file_format=True)
    return files


def _pixels(rng: np.random.Generator, frames: int, rows: int, cols: int, high: int) -> np.ndarray:
    """Smooth blobs with a little noise, unsigned, from 0 to ``high``."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    stack = np.empty((frames, rows, cols))
    for index in range(frames):
        image = 0.2 * yy / rows
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols
            width = rng.uniform(0.01, 0.05) * rows * cols
            image = image + rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width)
        stack[index] = image + rng.normal(0.0, 0.004, (rows, cols))
    stack = (stack - stack.min()) / (stack.max() - stack.min())
    return np.rint(stack * high).astype(np.uint16)


def _single_instance(kind: str, seed: int) -> Dataset:
    """A CR image or a multi-frame word secondary capture (12 of 16 bits), with the seed's UIDs and patient."""
    patient_id, patient_name, accession = _patient(seed)
    date, clock = _today()
    entropy = f"soak-{seed}-{kind}"
    study_uid = generate_uid(entropy_srcs=[entropy, "study"])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[entropy, "series", study_uid])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[entropy, "instance", study_uid])
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = clock
    ds.AccessionNumber, ds.StudyID = accession, accession
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer, ds.ManufacturerModelName = "Hounsfield soak", "Synthetic"
    ds.PatientOrientation = ""
    rng = np.random.default_rng(seed)
    if kind == "cr":
        ds.SOPClassUID = ComputedRadiographyImageStorage
        ds.Modality = "CR"
        ds.StudyDescription, ds.SeriesDescription = "Chest", "Chest PA"
        ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PixelSpacing = [0.5, 0.5]
        pixels = _pixels(rng, 1, _CR_SIZE, _CR_SIZE, 4095)[0]
    else:
        ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
        ds.Modality = "OT"
        ds.StudyDescription, ds.SeriesDescription = "MR cine", "Cine capture"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.NumberOfFrames = _MULTIFRAME_SHAPE[0]
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.FrameTime = 40.0
        pixels = _pixels(rng, *_MULTIFRAME_SHAPE, 4095)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_study(kind: str, folder: Path, seed: int) -> StudyPlan:
    """Write one synthetic study of ``kind`` into ``folder``; the same seed gives the same UIDs.

    UIDs derive from the seed and the kind, so that two kinds of one seed never share a study. The
    patient (``SOAK-P{seed}``, ``SOAK^P{seed}``) and the accession number are the seed's; the study
    date is today.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}; expected one of {', '.join(KINDS)}")
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("ct", "compressed-ct", "mr"):
        files = _phantom_series(kind, folder, seed)
    else:
        ds = _single_instance(kind, seed)
        path = folder / "IM0001.dcm"
        ds.save_as(path, enforce_file_format=True)
        files = [path]
    uids, study_uid = [], ""
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        uids.append(str(header.SOPInstanceUID))
        study_uid = str(header.StudyInstanceUID)
    return StudyPlan(
        kind=kind, study_instance_uid=study_uid, files=tuple(files), sop_instance_uids=tuple(uids),
        routable=kind in ROUTABLE_KINDS, patient_id=_patient(seed)[0],
    )  # fmt: skip


# --- the hospital -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One sending device: its name, its calling AE title, how it sends, and the kinds it cycles through."""

    name: str
    ae_title: str
    sender: str
    """``storescu`` (dcmtk), ``pynetdicom`` or ``stow`` (STOW-RS to the registry)."""
    kinds: tuple[str, ...]


MODALITIES: tuple[Modality, ...] = (
    Modality("ct-1", "SOAK-CT1", "storescu", ("ct",)),
    Modality("ct-2", "SOAK-CT2", "storescu", ("ct", "compressed-ct")),
    Modality("ct-3", "SOAK-CT3", "pynetdicom", ("ct",)),
    Modality("mr-1", "SOAK-MR1", "storescu", ("mr",)),
    Modality("mr-2", "SOAK-MR2", "pynetdicom", ("mr", "multiframe")),
    Modality("cr-1", "SOAK-CR1", "storescu", ("cr",)),
    Modality("cr-2", "SOAK-CR2", "pynetdicom", ("cr",)),
    Modality("pacs-stow", "SOAK-STOW", "stow", ("ct", "mr", "cr")),
)
"""The day's senders: four of the eight send only or mostly CT (routable), so that jobs run all day."""

MIX: tuple[str, ...] = tuple(kind for modality in MODALITIES for kind in modality.kinds)
"""The day's mix: every modality's cycle of kinds end to end (each kind as often as the hospital sends it
per cycle; CT 5 of 12, compressed CT 1, MR 3, CR 3, multi-frame 1; by instances CT dominates)."""


# --- the ledger -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The receiver answered no: a DICOM status, an association rejection, or an HTTP status."""

    modality: str
    at: float
    protocol: str
    """``dicom`` (a C-STORE-RSP failure status), ``dicom-association`` (A-ASSOCIATE-RJ; status is its reason
    code, 1-7) or ``http`` (STOW-RS: a FailedSOPSequence item, status its FailureReason, a DICOM code; or
    the whole request, status the HTTP code)."""
    status: int | None
    reason: str
    """The receiver's words: Error Comment, rejection reason, Warning header or ``detail``; "" when none."""
    sop_instance_uid: str | None


@dataclass(frozen=True)
class Interruption:
    """No answer: the connection was refused, reset or aborted (the receiver was down, not refusing)."""

    modality: str
    at: float
    message: str


@dataclass
class StudyRecord:
    """What the ledger knows of one study (mutable: read it under :attr:`Ledger.lock`, or via a copy)."""

    modality: str
    kind: str
    routable: bool
    n_instances: int
    sop_instance_uids: tuple[str, ...]
    patient_id: str
    first_sent_at: float | None = None
    completed_at: float | None = None
    """When its last instance was acknowledged (every instance was); None until then."""


class Ledger:
    """Every modality's acknowledgements, refusals and interruptions; shared by all modalities (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: dict[str, tuple[str, float]] = {}
        """SOP Instance UID -> (Study Instance UID, time.time() of its first Success)."""
        self.refusals: list[Refusal] = []
        self.interruptions: list[Interruption] = []
        self.studies: dict[str, StudyRecord] = {}

    def plan(self, modality: str, plan: StudyPlan) -> None:
        """Note a study about to be sent (once; a study made again keeps its record)."""
        with self.lock:
            self.studies.setdefault(
                plan.study_instance_uid,
                StudyRecord(
                    modality=modality, kind=plan.kind, routable=plan.routable, n_instances=len(plan.files),
                    sop_instance_uids=plan.sop_instance_uids, patient_id=plan.patient_id,
                ),
            )  # fmt: skip

    def sending(self, study_instance_uid: str, at: float) -> None:
        """A send of the study starts (the first one sets ``first_sent_at``)."""
        with self.lock:
            record = self.studies.get(study_instance_uid)
            if record is not None and record.first_sent_at is None:
                record.first_sent_at = at

    def acknowledge(self, study_instance_uid: str, sop_instance_uid: str, at: float) -> None:
        """The receiver said it stored this instance (the first time counts)."""
        with self.lock:
            if sop_instance_uid in self.acknowledged:
                return
            self.acknowledged[sop_instance_uid] = (study_instance_uid, at)
            record = self.studies.get(study_instance_uid)
            if (
                record is not None
                and record.completed_at is None
                and all(uid in self.acknowledged for uid in record.sop_instance_uids)
            ):
                record.completed_at = at

    def refuse(self, refusal: Refusal) -> None:
        with self.lock:
            self.refusals.append(refusal)

    def interrupt(self, interruption: Interruption) -> None:
        with self.lock:
            self.interruptions.append(interruption)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def snapshot(self) -> dict[str, Any]:
        """Counts, overall and per modality, as JSON-able values."""
        with self.lock:
            by_modality: dict[str, dict[str, int]] = {}

            def row(name: str) -> dict[str, int]:
                return by_modality.setdefault(
                    name, {"studies": 0, "studies_complete": 0, "instances_planned": 0, "acknowledged": 0,
                           "refusals": 0, "interruptions": 0},
                )  # fmt: skip

            study_modality = {}
            for uid, record in self.studies.items():
                study_modality[uid] = record.modality
                counts = row(record.modality)
                counts["studies"] += 1
                counts["studies_complete"] += record.completed_at is not None
                counts["instances_planned"] += record.n_instances
            for study_uid, _ in self.acknowledged.values():
                if study_uid in study_modality:
                    row(study_modality[study_uid])["acknowledged"] += 1
            for refusal in self.refusals:
                row(refusal.modality)["refusals"] += 1
            for interruption in self.interruptions:
                row(interruption.modality)["interruptions"] += 1
            statuses = Counter(
                f"{r.protocol} 0x{r.status:04X}" if r.status is not None and r.protocol != "dicom-association"
                else f"{r.protocol} {r.status}"
                for r in self.refusals
            )  # fmt: skip
            kinds = Counter(record.kind for record in self.studies.values())
            return {
                "acknowledged": len(self.acknowledged),
                "refusals": len(self.refusals),
                "refusals_by_status": dict(sorted(statuses.items())),
                "interruptions": len(self.interruptions),
                "studies": len(self.studies),
                "studies_complete": sum(r.completed_at is not None for r in self.studies.values()),
                "routable_studies": sum(r.routable for r in self.studies.values()),
                "routable_studies_complete": sum(
                    r.routable and r.completed_at is not None for r in self.studies.values()
                ),
                "studies_by_kind": dict(sorted(kinds.items())),
                "by_modality": dict(sorted(by_modality.items())),
            }


# --- sending ----------------------------------------------------------------------------------------------------


@dataclass
class SendOutcome:
    """What one send attempt of some files proved: which instances were acknowledged, and why others were not."""

    acknowledged: list[str] = field(default_factory=list)
    """SOP Instance UIDs whose response said stored."""
    refusals: list[tuple[str, int | None, str, str | None]] = field(default_factory=list)
    """(protocol, status, reason, SOP Instance UID or None) per refusal."""
    interruption: str | None = None
    """Why some files got no answer at all (connection refused, aborted...), else None."""


# Association rejection reasons in dcmtk's words (ASC_printRejectParameters) -> PS3.8 Table 9-21 codes.
_REJECT_REASONS = {
    "No Reason": 1,
    "App Context Name Not Supported": 2,
    "Calling AE Title Not Recognized": 3,
    "Called AE Title Not Recognized": 7,
    "Protocol Version Not Supported": 2,
    "Temporary Congestion": 1,
    "Local Limit Exceeded": 2,
}
_LOG_LINE = re.compile(r"^([TDIWEF]): ?(.*)$")
_SENDING_FILE = "Sending file: "
_STORE_REQUEST = re.compile(r"^Sending Store Request \(MsgID (\d+)\b")
_BLOCK_FIELD = re.compile(r"^([A-Za-z][A-Za-z /-]*?)\s*: (.*)$")
_DIMSE_STATUS = re.compile(r"^0x([0-9A-Fa-f]{4})\b")
_ERROR_COMMENT = re.compile(r"^\(0000,0902\) LO \[(.*)\]\s+#\s*\d+,\s*\d+\s+ErrorComment$")


def parse_storescu_log(log: str, files: Sequence[Path | str], sop_instance_uids: Sequence[str]) -> SendOutcome:
    """What ``storescu -d`` proved about ``files`` (whose SOP Instance UIDs are ``sop_instance_uids``).

    A file is acknowledged only when, after its ``Sending file:`` line and its ``Sending Store Request
    (MsgID N`` line, an incoming C-STORE RSP block answers message N for the file's own SOP Instance UID
    (when the block names one) with a stored status (Success or a Bxxx warning). A failure status is a
    refusal, with the Error Comment of the ``Status Detail:`` dump that follows. Files with no response
    are an interruption (or, after ``Association Rejected``, a ``dicom-association`` refusal).
    """
    expected = {str(path): uid for path, uid in zip(files, sop_instance_uids, strict=True)}
    outcome = SendOutcome()
    answered: set[str] = set()
    current: str | None = None
    message_id: int | None = None
    block: dict[str, str] | None = None
    last_refusal: int | None = None
    in_detail = False
    rejected = False
    rejection: dict[str, str] = {}
    errors: list[str] = []
    for raw in log.splitlines():
        match = _LOG_LINE.match(raw.rstrip())
        if match is None:
            continue
        level, text = match.groups()
        if block is not None:
            if "END DIMSE MESSAGE" in text:
                last_refusal = _store_response(block, current, message_id, expected, answered, outcome)
                block = None
            elif (item := _BLOCK_FIELD.match(text)) is not None:
                block[item.group(1)] = item.group(2).strip()
            continue
        if "INCOMING DIMSE MESSAGE" in text:
            block, in_detail = {}, False
        elif text.startswith(_SENDING_FILE):
            current, message_id, last_refusal, in_detail = text[len(_SENDING_FILE) :], None, None, False
        elif (request := _STORE_REQUEST.match(text)) is not None:
            message_id = int(request.group(1))
        elif text == "Status Detail:":
            in_detail = True
        elif in_detail and (comment := _ERROR_COMMENT.match(text)) is not None:
            if last_refusal is not None:
                protocol, status, _, uid = outcome.refusals[last_refusal]
                outcome.refusals[last_refusal] = (protocol, status, comment.group(1).strip(), uid)
        elif text.startswith("Association Rejected"):
            rejected = True
        elif rejected and text.startswith(("Result:", "Reason:")):
            key, _, value = text.partition(":")
            rejection[key] = value.strip()
        elif level in "EF":
            errors.append(text)
    if rejected:
        words = rejection.get("Reason", "")
        reason = "; ".join(filter(None, [rejection.get("Result", ""), words])) or "association rejected"
        outcome.refusals.append(("dicom-association", _REJECT_REASONS.get(words), reason, None))
    elif len(answered) < len(expected):
        lines = [e for e in errors if not e.startswith("Store SCU Failed")][:2]
        outcome.interruption = " ".join(lines) or "storescu ended without a response"
    return outcome


def _store_response(
    block: dict[str, str],
    current: str | None,
    message_id: int | None,
    expected: dict[str, str],
    answered: set[str],
    outcome: SendOutcome,
) -> int | None:
    """Account one incoming DIMSE block; returns the index of the refusal it added, if any."""
    if block.get("Message Type") != "C-STORE RSP" or current is None or current not in expected:
        return None
    responded = block.get("Message ID Being Responded To", "")
    uid = expected[current]
    affected = block.get("Affected SOP Instance UID")
    status = _DIMSE_STATUS.match(block.get("DIMSE Status", ""))
    if message_id is None or responded != str(message_id) or status is None or current in answered:
        return None
    if affected is not None and affected != uid:
        return None
    answered.add(current)
    code = int(status.group(1), 16)
    if is_stored(code):
        outcome.acknowledged.append(uid)
        return None
    outcome.refusals.append(("dicom", code, "", uid))
    return len(outcome.refusals) - 1


def _syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def send_storescu(
    files: Sequence[Path], sop_instance_uids: Sequence[str], *, calling_ae: str, called_ae: str, host: str, port: int
) -> SendOutcome:
    """Send ``files`` with dcmtk's ``storescu`` (one association per transfer syntax among them)."""
    groups: dict[str, list[int]] = {}
    for index, path in enumerate(files):
        groups.setdefault(_syntax(path), []).append(index)
    outcome = SendOutcome()
    for syntax, indexes in groups.items():
        option = [_STORESCU_SYNTAX_OPTION[syntax]] if syntax in _STORESCU_SYNTAX_OPTION else []
        paths = [str(files[i]) for i in indexes]
        argv = [
            STORESCU, "-d", "-nh", "-R", *option, "-to", "10", "-ta", "30", "-td", "120",
            "-aet", calling_ae, "-aec", called_ae, host, str(port), *paths,
        ]  # fmt: skip
        env = {**os.environ, "TCP_NODELAY": "1"}
        try:
            proc = subprocess.run(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=_STORESCU_TIMEOUT_S,
                check=False, text=True, errors="replace",
            )  # fmt: skip
            log, note = proc.stderr, f"storescu exited {proc.returncode} without a response"
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr or ""
            log = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            note = f"storescu ran past {_STORESCU_TIMEOUT_S:.0f} s and was killed"
        part = parse_storescu_log(log, paths, [sop_instance_uids[i] for i in indexes])
        outcome.acknowledged += part.acknowledged
        outcome.refusals += part.refusals
        if part.interruption is not None:
            reason = part.interruption
            if reason == "storescu ended without a response":
                reason = note
            outcome.interruption = reason
        if any(protocol == "dicom-association" for protocol, *_ in part.refusals):
            break  # the next association would be rejected the same way
    return outcome


def send_pynetdicom(
    files: Sequence[Path], sop_instance_uids: Sequence[str], *, calling_ae: str, called_ae: str, host: str, port: int
) -> SendOutcome:
    """Send ``files`` over one pynetdicom association proposing each file's own SOP class and syntax."""
    from pynetdicom import AE

    outcome = SendOutcome()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout, ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 10, 30, 120, 60
    for sop_class, syntax in dict.fromkeys(_context(path) for path in files):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        diagnostic = getattr(primitive, "diagnostic", None) if primitive is not None else None
        reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
        result = getattr(primitive, "result_str", "") if primitive is not None else ""
        words = "; ".join(filter(None, [result, reason])) or "association rejected"
        outcome.refusals.append(("dicom-association", diagnostic, words, None))
        return outcome
    if not assoc.is_established:
        outcome.interruption = f"association to {host}:{port} failed (connection refused, aborted or timed out)"
        return outcome
    _no_delay(assoc)
    _keep_responses(assoc)
    try:
        for path, uid in zip(files, sop_instance_uids, strict=True):
            if not assoc.is_established:
                break
            try:
                status = assoc.send_c_store(path)
            except (RuntimeError, ValueError, OSError) as exc:  # the association went away mid-send
                outcome.interruption = f"{type(exc).__name__}: {exc}"
                break
            code = status.get("Status") if status is not None else None
            if code is None:
                outcome.interruption = "no C-STORE response (association aborted or timed out)"
                break
            if is_stored(int(code)):
                outcome.acknowledged.append(uid)
            else:
                comment = str(status.get("ErrorComment", "") or "").strip()
                outcome.refusals.append(("dicom", int(code), comment, uid))
    finally:
        if assoc.is_established:
            assoc.release()
    if len(outcome.acknowledged) + sum(1 for r in outcome.refusals if r[3]) < len(files):
        outcome.interruption = outcome.interruption or "the association ended before every file was answered"
    return outcome


def _keep_responses(assoc: Any) -> None:
    """Give a waiting ``send_c_store`` the response pynetdicom's own reactor thread took (pynetdicom 3.0.4).

    ``send_c_store`` pauses the reactor, waits until it reads it as paused, sends and waits for the
    response. The reactor marks itself unpaused only after it wakes, so a send that follows a response
    at once can read the old mark, and the reactor then takes the next response off the queue as an
    "unexpected C-STORE service message": the sender waits for it until the listener's timeout ends the
    association. A response the reactor takes while a send is waiting (the reactor paused) is put back
    for that send, as it would have reached it had the reactor stopped in time.
    """
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not assoc._reactor_checkpoint.is_set():
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_request


def _no_delay(assoc: Any) -> None:
    """TCP_NODELAY on the association's socket, as dcmtk's TCP_NODELAY=1 (pynetdicom has no option for it):
    without it each C-STORE waits on the peer's delayed ACK (about 40 ms an instance)."""
    with contextlib.suppress(AttributeError, OSError):
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _context(path: Path) -> tuple[str, str]:
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


_WARNING = re.compile(r"^\s*299\s+\S+\s+(.*?)\s*\(([0-9A-Fa-f]{4})\)\s*$")
STOW_CHUNK = 4
"""Files per STOW-RS request."""


def _warnings(response: httpx.Response) -> tuple[dict[int, str], str]:
    """The ``Warning`` header fields by the status code they end with, and all of them joined."""
    by_status: dict[int, str] = {}
    texts = response.headers.get_list("warning")
    for text in texts:
        match = _WARNING.match(text)
        if match is not None:
            by_status.setdefault(int(match.group(2), 16), match.group(1).strip('"').strip())
    return by_status, "; ".join(t.strip() for t in texts)


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    return list(element.get("Value", [])) if isinstance(element, dict) else []


def send_stow(
    files: Sequence[Path], sop_instance_uids: Sequence[str], *, url: str, headers: dict[str, str],
    chunk: int = STOW_CHUNK, client: httpx.Client | None = None,
) -> SendOutcome:  # fmt: skip
    """POST ``files`` as STOW-RS requests of ``chunk`` files each; read each Store Instances Response."""
    outcome = SendOutcome()
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
    try:
        for start in range(0, len(files), chunk):
            paths = files[start : start + chunk]
            uids = list(sop_instance_uids[start : start + chunk])
            boundary = uuid.uuid4().hex
            body = bytearray()
            for path in paths:
                body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                body += path.read_bytes() + b"\r\n"
            body += f"--{boundary}--\r\n".encode()
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
            try:
                response = http.post(url, content=bytes(body), headers={**headers, "Content-Type": content_type})
            except httpx.TransportError as exc:
                outcome.interruption = f"{type(exc).__name__}: {exc}"
                break  # the registry is unreachable: the rest would fail the same way
            _stow_response(response, uids, outcome)
    finally:
        if own:
            http.close()
    return outcome


def _stow_response(response: httpx.Response, uids: list[str], outcome: SendOutcome) -> None:
    """Account one STOW-RS response for the request that carried ``uids``."""
    try:
        answer = response.json() if response.status_code in (200, 202, 409) else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        try:
            detail = response.json().get("detail", "")
            reason = (detail if isinstance(detail, str) else str(detail)) or response.text
        except (ValueError, AttributeError):
            reason = response.text
        outcome.refusals.append(("http", response.status_code, reason.strip()[:200], None))
        return
    sent = set(uids)
    for item in _values(answer, "00081199"):  # ReferencedSOPSequence
        for uid in _values(item, "00081155"):  # ReferencedSOPInstanceUID
            if uid in sent and uid not in outcome.acknowledged:
                outcome.acknowledged.append(uid)
    by_status, joined = _warnings(response)
    for item in _values(answer, "00081198"):  # FailedSOPSequence
        found = _values(item, "00081155")
        reasons = _values(item, "00081197")  # FailureReason
        status = int(reasons[0]) if reasons else None
        reason = by_status.get(status, joined) if status is not None else joined
        outcome.refusals.append(("http", status, reason[:200], str(found[0]) if found else None))


# --- the modality's send queue ----------------------------------------------------------------------------------


def _study_seed(seed: int, name: str, index: int) -> int:
    """A 40-bit seed per (modality seed, modality, study number): UIDs never repeat across modalities."""
    return int(hashlib.sha256(f"{seed}/{name}/{index}".encode()).hexdigest()[:10], 16)


class ModalityThread(threading.Thread):
    """One modality's day: make a study, send it until every instance is acknowledged, wait, repeat.

    When ``stop`` is set mid-study the study is finished first (its unacknowledged files resent) unless
    :attr:`abandon` is set too. Studies are made one at a time in ``workdir/<modality>/<n>/`` and deleted
    once every instance is acknowledged.
    """

    def __init__(
        self,
        modality: Modality,
        *,
        host: str,
        port: int,
        called_ae: str,
        stow_url: str,
        stow_headers: dict[str, str],
        workdir: Path,
        ledger: Ledger,
        stop: threading.Event,
        seed: int,
        study_interval_s: float = 2.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        super().__init__(name=f"soak-{modality.name}", daemon=True)
        if modality.sender not in ("storescu", "pynetdicom", "stow"):
            raise ValueError(f"unknown sender {modality.sender!r} for {modality.name}")
        self.modality = modality
        self.host, self.port, self.called_ae = host, port, called_ae
        self.stow_url, self.stow_headers = stow_url, dict(stow_headers)
        self.workdir = workdir
        self.ledger = ledger
        self.stop = stop
        self.abandon = threading.Event()
        """Set (with ``stop``) to give up the current study's unacknowledged files."""
        self.seed = seed
        self.study_interval_s = study_interval_s
        self.retry_delay_s = retry_delay_s
        self.studies_made = 0
        self.studies_completed = 0
        self.attempts = 0
        """Send attempts (one per association or batch of STOW-RS requests)."""

    def run(self) -> None:
        index = 0
        while not self.stop.is_set() and not self.abandon.is_set():
            kind = self.modality.kinds[index % len(self.modality.kinds)]
            folder = self.workdir / self.modality.name / str(index)
            try:
                shutil.rmtree(folder, ignore_errors=True)
                plan = make_study(kind, folder, _study_seed(self.seed, self.modality.name, index))
            except OSError as exc:  # our own disk: try again later
                logger.warning("%s could not write a %s study: %s", self.modality.name, kind, exc)
                self.abandon.wait(self.retry_delay_s)
                continue
            self.studies_made += 1
            self.ledger.plan(self.modality.name, plan)
            if self.send_study(plan):
                self.studies_completed += 1
                shutil.rmtree(folder, ignore_errors=True)
            index += 1
            self.stop.wait(self.study_interval_s)

    def send_study(self, plan: StudyPlan) -> bool:
        """Send the study's files, then only the unacknowledged ones, until all are (or :attr:`abandon`)."""
        pending = list(range(len(plan.files)))
        while pending:
            if self.abandon.is_set():
                return False
            files = [plan.files[i] for i in pending]
            uids = [plan.sop_instance_uids[i] for i in pending]
            self.ledger.sending(plan.study_instance_uid, time.time())
            self.attempts += 1
            try:
                outcome = self._send(files, uids)
            except Exception as exc:  # a sender's own failure must not end the modality's day
                logger.exception("%s: sending failed unexpectedly", self.modality.name)
                outcome = SendOutcome(interruption=f"sender error {type(exc).__name__}: {exc}")
            self._account(plan, outcome)
            acked = set(outcome.acknowledged)
            pending = [i for i in pending if plan.sop_instance_uids[i] not in acked]
            if pending:
                self.abandon.wait(self.retry_delay_s)
        return True

    def _send(self, files: list[Path], uids: list[str]) -> SendOutcome:
        sender = self.modality.sender
        if sender == "stow":
            return send_stow(files, uids, url=self.stow_url, headers=self.stow_headers)
        send = send_storescu if sender == "storescu" else send_pynetdicom
        return send(
            files, uids, calling_ae=self.modality.ae_title, called_ae=self.called_ae, host=self.host, port=self.port
        )

    def _account(self, plan: StudyPlan, outcome: SendOutcome) -> None:
        now = time.time()
        name = self.modality.name
        for uid in outcome.acknowledged:
            self.ledger.acknowledge(plan.study_instance_uid, uid, now)
        for protocol, status, reason, sop in outcome.refusals:
            self.ledger.refuse(Refusal(name, now, protocol, status, reason, sop))
        if outcome.interruption is not None:
            self.ledger.interrupt(Interruption(name, now, outcome.interruption))
