"""The soak's reconciliation: what the modalities were told against what Hounsfield and the PACS hold.

Each check is a :class:`Check` (passed or not, with the figures behind it). ``losses`` counts what a
hospital would have lost: acknowledged instances not stored and indexed, routable studies with no
result in the PACS, and jobs that never finished.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from benchmarks.soak.modalities import Ledger
from hounsfield.db import Instance, Job, Result, Series, Study

__all__ = ["Check", "Holdings", "Reconciliation", "pacs_holdings", "read_holdings", "reconcile"]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    failures: list[str] = field(default_factory=list)
    """The first few things that failed it (UIDs are synthetic test data; no patient's)."""


@dataclass
class Holdings:
    """What Hounsfield's index and store hold at the end."""

    indexed: dict[str, tuple[str, str]] = field(default_factory=dict)
    """SOP Instance UID -> (Study Instance UID, file path)."""
    study_states: dict[str, str] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    """Every job: id, study, deployment, state, error, superseded_by, and its results as
    (kind, SOP Instance UID, exported_to)."""


@dataclass
class Reconciliation:
    checks: list[Check]
    losses: int
    totals: dict[str, int]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks) and self.losses == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "losses": self.losses,
            "totals": self.totals,
            "checks": [asdict(check) for check in self.checks],
        }


def read_holdings(database_url: str, store_root: Path) -> Holdings:
    """The index, the studies' states and every job with its results, read once."""
    holdings = Holdings()
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Series.study_instance_uid, Instance.path).join(Series)
            ).all()
            for sop, study, path in rows:
                resolved = Path(path) if Path(path).is_absolute() else store_root / path
                holdings.indexed[sop] = (study, str(resolved))
            holdings.study_states = {
                uid: str(state) for uid, state in session.execute(select(Study.study_instance_uid, Study.state))
            }
            results: dict[str, list[tuple[str, str, list[str]]]] = defaultdict(list)
            for job_id, kind, sop, exported in session.execute(
                select(Result.job_id, Result.kind, Result.sop_instance_uid, Result.exported_to)
            ):
                results[job_id].append((kind, sop, list(exported or [])))
            for job in session.scalars(select(Job).order_by(Job.created_at)):
                holdings.jobs.append(
                    {
                        "id": job.id,
                        "study": job.study_instance_uid,
                        "deployment": job.deployment,
                        "state": str(job.state),
                        "error": job.error,
                        "superseded_by": job.superseded_by,
                        "model": f"{job.model_name} {job.model_version}",
                        "results": results.get(job.id, []),
                    }
                )
    finally:
        engine.dispose()
    return holdings


def pacs_holdings(orthanc_url: str, study_uids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """For each study: the SOP Instance UIDs Orthanc holds of it (a list: a duplicate would show twice)
    and the Patient IDs they carry."""
    found: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=orthanc_url, timeout=30) as client:
        for uid in study_uids:
            lookup = client.post("/tools/lookup", content=uid).json()
            ids = [item["ID"] for item in lookup if item.get("Type") == "Study"]
            sops: list[str] = []
            patients: set[str] = set()
            for study_id in ids:
                for instance in client.get(f"/studies/{study_id}/instances").json():
                    sops.append(instance["MainDicomTags"].get("SOPInstanceUID", ""))
                tags = client.get(f"/studies/{study_id}").json().get("PatientMainDicomTags", {})
                patients.add(tags.get("PatientID", ""))
            found[uid] = {"sops": sops, "patients": sorted(patients)}
    return found


def _check(name: str, failures: Sequence[str], detail: str) -> Check:
    return Check(name, not failures, detail, list(failures[:10]))


def reconcile(
    ledger: Ledger,
    holdings: Holdings,
    pacs: Mapping[str, Mapping[str, Any]],
    *,
    patient_ids: Mapping[str, str],
    memory: Mapping[str, float],
    memory_limits_mb: Mapping[str, float],
    http_answers: Sequence[Mapping[str, Any]],
    faults: Sequence[Mapping[str, Any]],
    fault_kinds: Sequence[str],
    fault_errors: Sequence[str],
    modalities: Sequence[str],
    processes: Sequence[str],
    samples: int,
    http_probes: int,
) -> Reconciliation:
    """Every check of the soak. ``patient_ids``: each sent study's Patient ID; ``memory``: each process's
    peak resident memory (MiB); ``http_answers``: the registry's non-2xx answers (status, reason);
    ``modalities`` and ``processes``: what the run started (each must have done its part); ``samples``: the
    monitor's samples, ``http_probes``: how many of them the registry answered (any status)."""
    checks: list[Check] = []
    acknowledged = dict(ledger.acknowledged)

    # 1. Every acknowledged instance is stored (its file reads back as that instance) and indexed.
    lost: list[str] = []
    for sop, (study, _) in acknowledged.items():
        row = holdings.indexed.get(sop)
        if row is None:
            lost.append(f"{sop}: not indexed")
        elif row[0] != study:
            lost.append(f"{sop}: indexed under another study")
        else:
            try:
                stored = pydicom.dcmread(row[1], stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                if str(stored.SOPInstanceUID) != sop:
                    lost.append(f"{sop}: its file holds another instance")
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                lost.append(f"{sop}: file unreadable ({type(exc).__name__})")
    checks.append(
        _check(
            "every acknowledged instance is stored and indexed",
            lost,
            f"{len(acknowledged)} acknowledged, {len(acknowledged) - len(lost)} stored and indexed",
        )
    )

    # 2. Every study whose instances were all acknowledged completed (routed, or nothing to route).
    studies = dict(ledger.studies)
    unfinished = [
        f"{uid} ({holdings.study_states.get(uid, 'unknown')})"
        for uid, record in studies.items()
        if record.completed_at is not None and holdings.study_states.get(uid) not in ("routed", "no_route")
    ]
    checks.append(
        _check(
            "every study sent in full was completed and routed",
            unfinished,
            f"{sum(r.completed_at is not None for r in studies.values())} studies sent in full",
        )
    )

    # 3. Every routed study has exactly one result set per deployment in the PACS, of its own patient.
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in holdings.jobs:
        by_study[job["study"]].append(job)
    wrong: list[str] = []
    result_sets = 0
    for uid, record in studies.items():
        if record.completed_at is None:
            continue
        jobs = by_study.get(uid, [])
        if record.routable and not jobs:
            wrong.append(f"{uid}: routable, no job")
            continue
        held = pacs.get(uid, {"sops": [], "patients": []})
        held_sops = Counter(held["sops"])
        if any(n > 1 for n in held_sops.values()):
            wrong.append(f"{uid}: an instance twice in the PACS")
        sets_in_pacs: Counter[str] = Counter()
        recorded: set[str] = set()
        for job in jobs:
            sops = {sop for _, sop, _ in job["results"]}
            recorded |= sops
            if sops & set(held_sops):
                sets_in_pacs[job["deployment"]] += 1
        for deployment in {job["deployment"] for job in jobs}:
            if sets_in_pacs[deployment] != 1:
                wrong.append(f"{uid}: {sets_in_pacs[deployment]} result sets of {deployment} in the PACS")
        result_sets += sum(sets_in_pacs.values())
        current = [job for job in jobs if job["superseded_by"] is None and job["state"] != "superseded"]
        for job in current:
            kinds = sorted(kind for kind, _, _ in job["results"])
            # The CT lesion application always writes its SR, and a SEG only when it found a lesion;
            # never two of a kind (a job run twice makes its results again with the same UIDs).
            if job["state"] == "done" and ("SR" not in kinds or len(set(kinds)) != len(kinds)):
                wrong.append(f"{uid}: job {job['id']} has results {kinds}")
            missing = {sop for _, sop, _ in job["results"]} - set(held_sops)
            if job["state"] == "done" and missing:
                wrong.append(f"{uid}: {len(missing)} result(s) of job {job['id']} not in the PACS")
        strangers = set(held_sops) - recorded
        if strangers:
            wrong.append(f"{uid}: {len(strangers)} instance(s) in the PACS that no job recorded")
        if held["sops"] and held["patients"] != [patient_ids.get(uid)]:
            wrong.append(f"{uid}: results in the PACS under another patient")
    routed = sum(1 for uid in studies if by_study.get(uid))
    checks.append(
        _check(
            "every routed study has one result set per deployment in the PACS, of its own patient",
            wrong,
            f"{routed} routed studies, {result_sets} result sets in the PACS",
        )
    )

    # 4. No job is stuck, and none failed.
    not_done = [
        f"{job['id']} ({job['state']}: {job['error'] or 'no reason'})"
        for job in holdings.jobs
        if job["state"] not in ("done", "superseded")
    ]
    checks.append(
        _check(
            "no job is stuck or failed",
            not_done,
            f"{len(holdings.jobs)} jobs, {sum(j['state'] == 'done' for j in holdings.jobs)} done",
        )
    )

    # 5. Every process's memory stayed under its bound.
    over = [
        f"{name}: peak {peak:.0f} MiB > {memory_limits_mb[name]:.0f} MiB"
        for name, peak in memory.items()
        if name in memory_limits_mb and peak > memory_limits_mb[name]
    ]
    peaks = ", ".join(f"{name} {peak:.0f}" for name, peak in sorted(memory.items()))
    checks.append(_check("every process's memory stayed bounded", over, f"peak MiB: {peaks}"))

    # 6. Every refusal had a status (DICOM or HTTP) and a reason.
    refusals = list(ledger.refusals)
    unexplained = [
        f"{r.modality} {r.protocol} {r.status}: no reason" for r in refusals if r.status is None or not r.reason
    ]
    # A 500 is not an answer: whatever its body says, the server did not know what went wrong.
    unexplained += [
        f"{r.modality} HTTP 500: {r.reason[:60]}" for r in refusals if r.protocol == "http" and r.status == 500
    ]
    unexplained += [
        f"registry HTTP {a['status']}: no reason" for a in http_answers if not a["reason"] or a["status"] == 500
    ]
    checks.append(
        _check(
            "every refusal had a status and a reason",
            unexplained,
            f"{len(refusals)} refusals by the receivers, {len(http_answers)} non-2xx registry answers",
        )
    )

    # 7. Every kind of fault was injected and recovered from.
    seen = Counter(fault["kind"] for fault in faults)
    missing_kinds = [f"{kind}: never injected" for kind in fault_kinds if not seen[kind]]
    checks.append(
        _check(
            "every kind of fault was injected and recovered from",
            missing_kinds + list(fault_errors),
            ", ".join(f"{kind} x{seen[kind]}" for kind in fault_kinds),
        )
    )

    # 8. The load was real: a check above passes by itself when nothing happened, so the run must show work.
    idle = [
        f"{name}: no study acknowledged in full"
        for name in modalities
        if not any(r.modality == name and r.completed_at is not None for r in studies.values())
    ]
    if not result_sets:
        idle.append("no result set reached the PACS")
    idle += [f"{name}: its memory was never sampled" for name in processes if not memory.get(name)]
    if http_probes < 0.9 * samples:
        idle.append(f"the registry answered {http_probes} of {samples} probes")
    checks.append(
        _check(
            "the load was real: every modality sent, results arrived, every process was watched",
            idle,
            f"{len(modalities)} modalities, {routed} routed studies, {len(processes)} processes, "
            f"registry answered {http_probes} of {samples} probes",
        )
    )

    losses = len(lost) + len(unfinished) + sum(1 for w in wrong if "no job" in w or "not in the PACS" in w)
    losses += sum(1 for job in holdings.jobs if job["state"] not in ("done", "superseded", "failed", "timed_out"))
    totals = {
        "instances_acknowledged": len(acknowledged),
        "instances_indexed": len(holdings.indexed),
        "studies": len(studies),
        "studies_sent_in_full": sum(r.completed_at is not None for r in studies.values()),
        "studies_routed": routed,
        "jobs": len(holdings.jobs),
        "result_sets_in_pacs": result_sets,
        "refusals": len(refusals),
        "interruptions": len(ledger.interruptions),
        "faults": len(faults),
    }
    return Reconciliation(checks, losses, totals)
