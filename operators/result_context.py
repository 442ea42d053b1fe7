"""Who made a result: the model identity and job identity stamped on every SEG and SR.

The Hounsfield worker writes ``<workdir>/result_context.json`` for each job; an
application reads it with :meth:`ResultContext.load`. Every UID a result carries
is derived from ``uid_root`` plus ``job_key`` (or, without a job key, the source
series UIDs) and a purpose string, so re-running a job reproduces the same UIDs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

__all__ = ["IHE_PROCESSING_ALGORITHM", "RESULT_CONTEXT_FILENAME", "DeploymentMode", "ResultContext"]

logger = logging.getLogger(__name__)

DeploymentMode = Literal["shadow", "research", "clinical"]

#: File name the worker writes into the job's working directory.
RESULT_CONTEXT_FILENAME = "result_context.json"

#: IHE AIR Purpose of Reference for the algorithm item of the Contributing Equipment Sequence.
IHE_PROCESSING_ALGORITHM = hd.sr.CodedConcept(
    value="Newcode1", scheme_designator="99IHE", meaning="Processing Algorithm"
)

_DEPLOYMENT_MODES: tuple[str, ...] = ("shadow", "research", "clinical")
_NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
_MAX_LO_LENGTH = 64


@dataclass(frozen=True)
class ResultContext:
    """Identity of the algorithm and job behind a result.

    Parameters
    ----------
    model_name : str
        Model name; Manufacturer's Model Name and Algorithm Name.
    model_version : str
        Model version; Software Versions and Algorithm Version.
    manufacturer : str
        Manufacturer of the algorithm.
    device_uid : str or None
        Device UID of the algorithm (IHE AIR: a new model version gets a new Device UID).
        ``None`` derives one deterministically from ``model_name`` and ``model_version``.
    deployment_mode : {"shadow", "research", "clinical"}
        Anything but ``"clinical"`` marks series descriptions "NOT FOR DIAGNOSTIC USE".
    uid_root : str or None
        UID root (ending in ``"."``) for every generated UID; ``None`` uses pydicom's root
        (``pydicom.uid.PYDICOM_ROOT_UID``), which is for testing only.
    job_key : str or None
        Stable key of the job; the entropy for generated UIDs.
    series_number_seg : int
        Series Number of the Segmentation.
    series_number_sr : int
        Series Number of the Structured Report.
    """

    model_name: str = "CT lesion segmentation"
    model_version: str = "1.0.0"
    manufacturer: str = "Hounsfield"
    device_uid: str | None = None
    deployment_mode: DeploymentMode = "research"
    uid_root: str | None = None
    job_key: str | None = None
    series_number_seg: int = 9001
    series_number_sr: int = 9002

    def __post_init__(self) -> None:
        if self.deployment_mode not in _DEPLOYMENT_MODES:
            raise ValueError(f"deployment_mode must be one of {_DEPLOYMENT_MODES}, got {self.deployment_mode!r}.")
        if self.uid_root is not None and (not self.uid_root.endswith(".") or len(self.uid_root) > 40):
            raise ValueError(
                "uid_root must end with '.' and be at most 40 characters (leaving >= 24 digits of entropy), "
                f"got {self.uid_root!r}."
            )
        for name in ("series_number_seg", "series_number_sr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("model_name", "model_version", "manufacturer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > _MAX_LO_LENGTH:
                raise ValueError(f"{name} must be a non-empty string of at most 64 characters, got {value!r}.")
        if self.device_uid is None:
            derived = generate_uid(prefix=self._prefix, entropy_srcs=["device", self.model_name, self.model_version])
            object.__setattr__(self, "device_uid", str(derived))

    @property
    def _prefix(self) -> str:
        # generate_uid(prefix=None) would return a random 2.25 UID, never a derived one.
        return self.uid_root if self.uid_root is not None else PYDICOM_ROOT_UID

    @property
    def is_clinical(self) -> bool:
        """Whether results are released for clinical (diagnostic) use."""
        return self.deployment_mode == "clinical"

    def uid(self, purpose: str, *extra_entropy: str) -> str:
        """Return a deterministic UID for one object of this job.

        Parameters
        ----------
        purpose : str
            What the UID identifies, e.g. ``"seg-series"`` or ``"tracking/Lesion 1"``.
        *extra_entropy : str
            Further sources (e.g. the source series UIDs); they must identify the job when
            ``job_key`` is ``None``.

        Returns
        -------
        str
            A UID below ``uid_root``.

        Raises
        ------
        ValueError
            When neither ``job_key`` nor ``extra_entropy`` is given (the UID would not be job-specific).
        """
        if self.job_key is None and not extra_entropy:
            raise ValueError("A job-specific UID needs job_key or extra entropy (e.g. the source series UIDs).")
        sources = [self.job_key or "", purpose, *extra_entropy]
        return str(generate_uid(prefix=self._prefix, entropy_srcs=sources))

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """Contributing Equipment item describing the algorithm, per IHE AIR.

        Built with :class:`highdicom.ContributingEquipment` (Manufacturer, Manufacturer's Model
        Name, Software Versions), then given what highdicom does not offer: the IHE AIR Purpose
        of Reference (Newcode1, 99IHE, "Processing Algorithm") -- highdicom only accepts DCM
        equipment codes -- and the Device UID.

        Returns
        -------
        highdicom.ContributingEquipment
            One item for the ``contributing_equipment`` argument of highdicom SOP classes.
        """
        item = hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.model_name,
            software_versions=self.model_version,
        )
        item.PurposeOfReferenceCodeSequence = [IHE_PROCESSING_ALGORITHM]
        item.DeviceUID = self.device_uid
        return item

    def series_description(self, kind: str) -> str:
        """Series Description for a result series.

        Parameters
        ----------
        kind : str
            Short name of the result kind, e.g. ``"SEG"`` or ``"SR"``.

        Returns
        -------
        str
            At most 64 characters: kind, model name and version, and "NOT FOR DIAGNOSTIC USE"
            unless the deployment mode is clinical. The model name is shortened if needed.
        """
        suffix = "" if self.is_clinical else f" {_NOT_FOR_DIAGNOSTIC_USE}"
        head = f"{kind} "
        tail = f" v{self.model_version}{suffix}"
        room = _MAX_LO_LENGTH - len(head) - len(tail)
        name = self.model_name if len(self.model_name) <= room else self.model_name[: max(room, 0)].rstrip()
        return f"{head}{name}{tail}"[:_MAX_LO_LENGTH].strip()

    @classmethod
    def load(cls, workdir: Path | None) -> ResultContext:
        """Read ``<workdir>/result_context.json``, or return the defaults.

        Parameters
        ----------
        workdir : pathlib.Path or None
            The job's working directory; ``None`` or a missing file gives the defaults.

        Returns
        -------
        ResultContext

        Raises
        ------
        ValueError
            When the file is not a JSON object, holds an unknown key, or holds an invalid value.
        """
        if workdir is None:
            return cls()
        path = Path(workdir) / RESULT_CONTEXT_FILENAME
        if not path.is_file():
            logger.info("No %s in %s; using the default result context.", RESULT_CONTEXT_FILENAME, workdir)
            return cls()
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
        known = {field.name for field in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))}).")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
