"""``hounsfield map run``: an application folder or a MAP image run on a folder of DICOM as a worker runs it.

The same code as a worker's job: the runtime a deployment of it would get (an application folder runs as
its ``app.json`` command in a process of its own, the subprocess runtime; an image runs in the container
runtime, with its limits, read-only, without network), the job's ``result_context.json`` (model identity
and mode), and every DICOM object the application writes through the validation gate (highdicom and
``dciodvfy``, then the identity check: each result must name the input's patient, study and frame of
reference, and reference only instances it was given). The application's own output is shown as it runs
and kept in ``application.log`` beside the results; each stage is timed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from hounsfield import containers
from hounsfield.catalog.manifests import MapManifests, load_map
from hounsfield.catalog.read_model import DeploymentSpec
from hounsfield.catalog.rules import compiled_rule
from hounsfield.config import ContainerSettings, Settings
from hounsfield.db.deployments import Stage
from hounsfield.errors import Invalid
from hounsfield.exporter.identity import JobIdentity
from hounsfield.exporter.validation import ValidationReport, validators
from hounsfield.worker.pipeline import run_and_check, write_result_context
from hounsfield.worker.runtimes import ApplicationRun, ContainerRuntime, Runtimes

__all__ = ["RunReport", "demo_deployment", "run_map"]

_NO_RULE = compiled_rule({"kind": "instance_count", "min": 1})
"""``map run`` routes nothing: its deployment's rule is never evaluated."""
_MODES = {"shadow": Stage.SHADOW, "research": Stage.RESEARCH, "clinical": Stage.CLINICAL}


@dataclass
class RunReport:
    """What ``map run`` did: the runtime, each stage's seconds, the results that passed the gate."""

    runtime: str
    timings: dict[str, float] = field(default_factory=dict)
    results: list[ValidationReport] = field(default_factory=list)
    log: Path | None = None


def _inputs(folder: Path) -> tuple[str, list[Path]]:
    """The DICOM files under ``folder`` and the one study they belong to."""
    if not folder.is_dir():
        raise Invalid("input", f"{folder} is not a folder")
    studies: dict[str, int] = {}
    paths: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM: the application never sees it differently from a worker's input
        study = str(ds.get("StudyInstanceUID", ""))
        studies[study] = studies.get(study, 0) + 1
        paths.append(path)
    if not paths:
        raise Invalid("input", f"{folder} holds no DICOM file")
    if len(studies) > 1:
        counts = ", ".join(f"{uid or '(none)'}: {n}" for uid, n in studies.items())
        raise Invalid("input", f"{folder} holds {len(studies)} studies ({counts}); a job is one study")
    return next(iter(studies)), paths


def _spec(
    manifests: MapManifests, *, name: str, runtime: str, mode: str, timeout_s: float, **where: object
) -> DeploymentSpec:
    models = manifests.pkg.models
    model_name = models[0].name if models else name
    return DeploymentSpec(
        name="map-run",
        model_name=model_name,
        model_version=str(manifests.pkg.version),
        display_name=model_name,
        device_uid=None,  # derived from the name and version (a registered version has its own)
        stage=_MODES[mode],
        rule_name="map-run",
        rule=_NO_RULE,
        destinations=(),
        queue="routine",
        app="",
        manufacturer="Hounsfield",
        timeout_s=timeout_s,
        runtime=runtime,
        **where,  # type: ignore[arg-type]
    )


class _Tail(threading.Thread):
    """Echoes the lines an application writes to its log while it runs."""

    def __init__(self, path: Path, echo: Callable[[str], None]) -> None:
        super().__init__(name="hounsfield-map-run-log", daemon=True)
        self._path, self._echo, self._done = path, echo, threading.Event()

    def run(self) -> None:
        while not self._path.is_file():
            if self._done.wait(0.2):
                return
        with self._path.open("rb") as handle:
            pending = b""
            while True:
                finished = self._done.is_set()  # read once more after the application ends: nothing is lost
                pending += handle.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._echo(f"  | {line.decode(errors='replace')}")
                if finished:
                    if pending:
                        self._echo(f"  | {pending.decode(errors='replace')}")
                    return
                self._done.wait(0.5)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=10)


def run_map(
    target: str,
    input_dir: Path,
    output_dir: Path,
    *,
    settings: Settings | None = None,
    timeout_s: float | None = None,
    mode: str = "research",
    network: bool = False,
    echo: Callable[[str], None] = print,
) -> RunReport:
    """Run ``target`` (an application folder, or a MAP image) on ``input_dir`` (one study) into ``output_dir``
    (made; it must be empty) as a worker would; :class:`~hounsfield.worker.runtimes.ApplicationFailed`,
    :class:`~hounsfield.exporter.validation.GateRejected` or :class:`~hounsfield.errors.Invalid` when it does
    not end well. ``mode``: the deployment mode the results are labelled with (anything but clinical says
    NOT FOR DIAGNOSTIC USE)."""
    settings = settings or Settings()
    if mode not in _MODES:
        raise Invalid("mode", f"{mode!r} is not one of {', '.join(_MODES)}")
    report = RunReport(runtime="")
    started = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal started
        now = time.monotonic()
        report.timings[stage] = round(now - started, 2)
        echo(f"{stage}: {report.timings[stage]:.2f} s")
        started = now

    if output_dir.exists() and any(output_dir.iterdir()):
        raise Invalid("output", f"{output_dir} is not empty: results of another run would mix with these")
    study, sources = _inputs(input_dir)
    folder = Path(target)
    with tempfile.TemporaryDirectory(prefix="hounsfield-map-run-") as scratch:
        scratch_path = Path(scratch)
        runtimes = Runtimes(settings, scratch_path)
        if folder.is_dir():
            loaded = load_map(folder)
            manifests = loaded.manifests
            where: dict[str, object] = {
                "map_path": folder.resolve(),
                "application_root": folder.resolve(),
                "model_path": loaded.models_root.resolve(),
            }
            runtime_name = "subprocess"
        else:
            if not containers.image_exists(target) and settings.worker.container.pull == "never":
                raise Invalid("target", f"{target} is neither a folder nor an image here")
            where = {"image": target, "network": network, "model_path": Path("/opt/holoscan/models")}
            manifests = runtimes.container.manifests(_spec_for_image(target))
            runtime_name = "container"
        limit = timeout_s or float(manifests.app.timeout or 600)
        deployment = _spec(manifests, name=folder.name, runtime=runtime_name, mode=mode, timeout_s=limit, **where)
        runtime = runtimes.for_deployment(deployment)
        report.runtime = runtime.name
        workdir = scratch_path / "work"
        workdir.mkdir()
        output_dir.mkdir(parents=True, exist_ok=True)
        owner = output_dir.stat()
        write_result_context(workdir, deployment, mode=mode, uid_root=settings.uid_root, job_key=None)
        identity = JobIdentity.of_inputs(study, sources)
        echo(
            f"{deployment.model_name} {deployment.model_version}: {len(sources)} instances in, "
            f"{runtime.name} runtime, timeout {limit:g} s"
        )
        lap("prepare")
        tail = _Tail(workdir / "application.log", echo)
        tail.start()
        run = ApplicationRun("map-run", deployment, input_dir.resolve(), output_dir.resolve(), workdir)
        try:
            report.results = run_and_check(
                runtime,
                run,
                identity,
                validators=validators(settings),
                lap=lambda _: _ended(tail, lap),
            )
            lap("validation gate")
        finally:
            tail.stop()
            log = workdir / "application.log"
            if log.is_file():
                report.log = output_dir / "application.log"
                shutil.copyfile(log, report.log)
            if os.geteuid() == 0:  # the container runtime gave the folder to the application's user: back to its owner
                for path in (output_dir, *output_dir.rglob("*")):
                    os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
            runtimes.container.close()
            runtimes.in_process.close()
    return report


def _ended(tail: _Tail, lap: Callable[[str], None]) -> None:
    """The application has ended: the rest of its output, then its time."""
    tail.stop()
    lap("application")


def _spec_for_image(image: str) -> DeploymentSpec:
    """A deployment naming only the image: what the container runtime reads manifests from."""
    return DeploymentSpec(
        name="map-run", model_name="", model_version="0.0.0", display_name="", device_uid=None,
        stage=Stage.RESEARCH, rule_name="map-run", rule=_NO_RULE, destinations=(),
        queue="routine", app="", model_path=Path("/opt/holoscan/models"), manufacturer="", timeout_s=1,
        runtime="container", image=image,
    )  # fmt: skip


def demo_deployment(target: str) -> dict[str, Any]:
    """A deployment of ``target`` (an application folder: the subprocess runtime; an image: the container
    runtime, pinned by digest) as ``hounsfield demo --map`` runs it: CT series of at least 8 instances,
    results to the demo PACS, research mode."""
    folder = Path(target)
    if folder.is_dir():
        loaded = load_map(folder)
        manifests = loaded.manifests
        where: dict[str, Any] = {
            "runtime": "subprocess",
            "map_path": str(folder.resolve()),
            "model_path": str(loaded.models_root.resolve()),
        }
    else:
        if not containers.image_exists(target):
            raise Invalid("map", f"{target} is neither an application folder nor an image here")
        manifests = ContainerRuntime(ContainerSettings()).manifests(_spec_for_image(target))
        repository = target.split("@")[0]
        repository = repository.rsplit(":", 1)[0] if ":" in repository.rsplit("/", 1)[-1] else repository
        where = {"runtime": "container", "image": f"{repository}@{containers.image_digest(target)}"}
    models = manifests.pkg.models
    model_name = models[0].name if models else folder.name
    return {
        "name": re.sub(r"[^a-z0-9._-]+", "-", model_name.lower()).strip("-._")[:63] or "map",
        "model_name": model_name,
        "model_version": str(manifests.pkg.version),
        "mode": "research",
        "queue": "routine",
        "timeout_s": float(manifests.app.timeout or 600),
        "rule": {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "instance_count", "min": 8}]},
        "destinations": ["pacs"],
        **where,
    }
