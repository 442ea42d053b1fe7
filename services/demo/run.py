"""``hounsfield demo``: one synthetic CT study from modality to PACS, with a summary."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from orthanc_api_client import OrthancApiClient
from rich.console import Console

from hounsfield.demo.findings import lesion_findings
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import HounsfieldStack, StackFailed
from hounsfield.errors import HounsfieldError
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

__all__ = ["DEMO_SEED", "DemoFailed", "print_summary", "run_demo"]

DEMO_SEED = 20261127
REQUIRED_TOOLS = ("/usr/bin/storescu", "redis-server", "dciodvfy", "java")
UNITS = {"ml": "mL", "[hnsf'U]": "HU"}


class DemoFailed(HounsfieldError, RuntimeError):
    """The demo could not show a result arriving in the PACS; the message says why."""


def _check_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
        missing.append("Orthanc")
    if missing:
        raise DemoFailed(f"missing tools: {', '.join(missing)} (run `make demo`, which installs them)")


def _say(progress: Console | None, message: str) -> None:
    if progress is not None:
        progress.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {message}", highlight=False)


def run_demo(
    *,
    timeout_s: float = 300.0,
    keep: bool = False,
    progress: Console | None = None,
    deployments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the whole path once and return the summary (see :func:`print_summary`). ``deployments``: what the
    demo runs instead of the example CT lesion application (``hounsfield demo --map``)."""
    _check_tools()
    root = Path(tempfile.mkdtemp(prefix="hounsfield-demo-"))
    pacs = LocalOrthanc(root / "orthanc", aet="DEMO-PACS")
    stack = HounsfieldStack(root / "hounsfield", pacs, deployments=deployments)
    try:
        _say(progress, f"starting Orthanc (the PACS) on DICOM port {pacs.dicom_port}, HTTP {pacs.url}")
        pacs.start()
        _say(progress, "starting Hounsfield: redis-server, worker (warming the model), listener, registry")
        started = time.perf_counter()
        stack.start()
        startup_s = time.perf_counter() - started
        phantom = make_phantom(DEMO_SEED, n_lesions=2)
        files = write_dicom_series(phantom, root / "modality", uid_seed=f"hounsfield-demo-{DEMO_SEED}")
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        _say(
            progress,
            f"sending a synthetic CT study ({len(files)} slices) with dcmtk storescu "
            f"to HOUNSFIELD@127.0.0.1:{stack.listener_port}",
        )
        send_s = stack.send(files)
        released = time.perf_counter()
        study = stack.wait_for_study(study_uid, timeout=timeout_s)
        time_to_result = time.perf_counter() - released
        summary = _summary(stack, pacs, study, files, phantom, send_s, time_to_result, startup_s)
        if keep:
            summary["kept"] = str(root)
        return summary
    except (StackFailed, RuntimeError, OSError) as exc:
        raise DemoFailed(f"{exc} (logs in {root})") from exc
    finally:
        stack.stop()
        pacs.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _summary(
    stack: HounsfieldStack,
    pacs: LocalOrthanc,
    study: dict[str, Any],
    files: list[Path],
    phantom: Any,
    send_s: float,
    time_to_result: float,
    startup_s: float,
) -> dict[str, Any]:
    orthanc = OrthancApiClient(pacs.url)
    jobs = []
    for job in study["jobs"]:
        if job["state"] != "done":
            raise DemoFailed(f"job {job['id']} {job['state']}: {job['error']}")
        objects = []
        for result in job["results"]:
            instance_id = orthanc.instances.lookup(result["sop_instance_uid"])
            if instance_id is None:
                raise DemoFailed(f"{result['kind']} {result['sop_instance_uid']} is not in the PACS")
            series_id = orthanc.instances.get_parent_series_id(instance_id)
            entry = {
                "kind": result["kind"],
                "sop_instance_uid": result["sop_instance_uid"],
                "orthanc_instance": instance_id,
                "orthanc_series": series_id,
                "orthanc_study": orthanc.instances.get_parent_study_id(instance_id),
                "url": f"{pacs.url}/instances/{instance_id}",
                "series_description": str(orthanc.instances.get_tags(instance_id).get("SeriesDescription") or ""),
            }
            if result["kind"] == "SR":
                sr = pydicom.dcmread(io.BytesIO(orthanc.instances.get_file(instance_id)))
                entry["findings"] = lesion_findings(sr)
            objects.append(entry)
        jobs.append(
            {
                "id": job["id"],
                "deployment": job["deployment"],
                "model": {"name": job["model_name"], "version": job["model_version"], "mode": job["mode"]},
                "state": job["state"],
                "timings_s": job["timings"],
                "results": objects,
            }
        )
    if not jobs:
        raise DemoFailed("no model ran on the study (no route)")
    return {
        "study": {
            "study_instance_uid": study["study_instance_uid"],
            "instances": len(files),
            "series": [
                {"modality": s["modality"], "description": s["series_description"], "instances": s["instance_count"]}
                for s in study["series"]
            ],
            "completion_trigger": study["completion_trigger"],
            "truth": [
                {
                    "lesion": t.index,
                    "volume_ml": round(t.volume_ml, 2),
                    "longest_axial_diameter_mm": round(t.longest_axial_diameter_mm, 1),
                }
                for t in phantom.lesions
            ],
        },
        "timings_s": {
            "startup": round(startup_s, 2),
            "send": round(send_s, 3),
            "time_to_result": round(time_to_result, 3),
        },
        "jobs": jobs,
        "pacs": {"url": pacs.url, "ae_title": pacs.aet, "dicom_port": pacs.dicom_port},
    }


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The human form of the summary."""
    study = summary["study"]
    console.print(
        f"[bold]Received[/bold] {study['instances']} instances, "
        + ", ".join(f"{s['modality']} '{s['description']}' ({s['instances']})" for s in study["series"])
        + f"; complete on {study['completion_trigger']}"
    )
    t = summary["timings_s"]
    console.print(
        f"[bold]Sent[/bold] in {t['send']:.2f} s with storescu; [bold]result in PACS[/bold] "
        f"{t['time_to_result']:.2f} s after the association was released"
    )
    for job in summary["jobs"]:
        model = job["model"]
        console.print(
            f"\n[bold]{model['name']} {model['version']}[/bold] ({job['deployment']}, {model['mode']}): {job['state']}"
        )
        timings = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in job["timings_s"].items())
        console.print(f"  seconds per stage: {timings}", highlight=False)
        console.print("  [bold]results in the PACS[/bold]")
        for obj in job["results"]:
            console.print(f"    {obj['kind']:<4} '{obj['series_description']}'", highlight=False)
            console.print(f"         Orthanc series {obj['orthanc_series']}", highlight=False)
            console.print(f"         {obj['url']}", highlight=False, soft_wrap=True)
        for obj in job["results"]:
            for finding in obj.get("findings", []):
                values = ", ".join(
                    f"{name.lower()} {m['value']:.1f} {UNITS.get(m['unit'], m['unit'])}"
                    for name, m in finding["measurements"].items()
                )
                console.print(f"  {finding['tracking_identifier']}: {values}", highlight=False)
    largest_first = sorted(study["truth"], key=lambda x: -x["volume_ml"])
    truth = ", ".join(f"{x['volume_ml']} mL, {x['longest_axial_diameter_mm']} mm" for x in largest_first)
    console.print(f"  phantom truth, largest first: {truth}", highlight=False)
