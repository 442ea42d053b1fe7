"""The contract every way of running an application keeps: :class:`Runtime`, :class:`ApplicationRun`.

A runtime takes one :class:`ApplicationRun` (the job, its deployment, its folders) and returns when
the application has written its results into the output folder, or raises
:class:`ApplicationFailed` (its own words, or its exit) or :class:`ApplicationTimedOut` (stopped at
the deployment's timeout). It holds no job's state between runs; what it keeps warm (an application
process) it releases in :meth:`Runtime.close`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.errors import HounsfieldError

__all__ = ["ApplicationFailed", "ApplicationRun", "ApplicationTimedOut", "Runtime"]


class ApplicationFailed(HounsfieldError, RuntimeError):
    """The application raised or exited badly; the message is the application's own."""


class ApplicationTimedOut(ApplicationFailed):
    """The application ran past its deployment's timeout and was stopped."""


@dataclass(frozen=True)
class ApplicationRun:
    """One job's run of its deployment's application, with the job's folders (the MAP's I/O paths)."""

    job_id: str
    deployment: DeploymentSpec
    input_dir: Path
    """The study's files (hard links into the store): ``HOLOSCAN_INPUT_PATH``."""
    output_dir: Path
    """Where the application writes its DICOM results: ``HOLOSCAN_OUTPUT_PATH``."""
    workdir: Path
    """Scratch space, and the job's ``result_context.json``: ``HOLOSCAN_WORKDIR``."""

    @property
    def model_path(self) -> Path:
        return self.deployment.model_path

    @property
    def timeout_s(self) -> float:
        return self.deployment.timeout_s


@runtime_checkable
class Runtime(Protocol):
    """A way of running a deployment's application: in a warm process forked from the worker, as the
    MAP's command in a process of its own, or as a Kubernetes Job."""

    name: ClassVar[str]
    """``in-process``, ``subprocess`` or ``kubernetes``: how events and logs name it."""

    def run(self, run: ApplicationRun) -> None:
        """Run the application on one job's folders; :class:`ApplicationFailed` or
        :class:`ApplicationTimedOut` when it does not finish well."""
        ...

    def close(self) -> None:
        """Release what is kept between runs (an application process); the runtime may not run again."""
        ...
