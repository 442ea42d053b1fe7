"""The soak's reconciliation fails for each kind of loss it is there to find (and passes a clean run).

Built by hand: a ledger of what the modalities were told, the index and store as Hounsfield holds them
(real DICOM files read back), the jobs, and what the PACS holds. One change per test breaks one
promise, and the check that guards it must fail.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from benchmarks.soak.chaos import KINDS
from benchmarks.soak.modalities import Ledger, Refusal, StudyPlan
from benchmarks.soak.reconcile import Holdings, Reconciliation, reconcile

STUDY = "1.2.826.0.1.3680043.10.1392.20.1"
OTHER = "1.2.826.0.1.3680043.10.1392.20.2"


def _file(folder: Path, sop: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, sop
    path = folder / f"{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Any]:
    """A clean soak: one routed CT study (3 instances) with one result set, one CR study with no route."""
    ledger = Ledger()
    holdings = Holdings()
    for uid, kind, n, routable, patient in ((STUDY, "ct", 3, True, "SOAK^P1"), (OTHER, "cr", 1, False, "SOAK^P2")):
        sops = tuple(f"{uid}.{i}" for i in range(n))
        files = tuple(_file(tmp_path, sop) for sop in sops)
        ledger.plan("ct-1", StudyPlan(kind, uid, files, sops, routable, patient))
        for sop, path in zip(sops, files, strict=True):
            ledger.acknowledge(uid, sop, 1.0)
            holdings.indexed[sop] = (uid, str(path))
        holdings.study_states[uid] = "routed" if routable else "no_route"
    seg, sr = generate_uid(), generate_uid()
    holdings.jobs.append({"id": "job-1", "study": STUDY, "deployment": "ct-lesion-seg", "state": "done", "error": None,
                          "superseded_by": None, "model": "CT lesion segmentation 1.0.0",
                          "results": [("SEG", seg, ["pacs"]), ("SR", sr, ["pacs"])]})  # fmt: skip
    ledger.refuse(Refusal("ct-1", 2.0, "dicom", 0xA700, "the data volume is at its floor", None))
    return {
        "ledger": ledger,
        "holdings": holdings,
        "pacs": {STUDY: {"sops": [seg, sr], "patients": ["SOAK^P1"]}, OTHER: {"sops": [], "patients": []}},
        "patient_ids": {STUDY: "SOAK^P1", OTHER: "SOAK^P2"},
        "memory": {"listener": 300.0, "worker-1": 1500.0},
        "memory_limits_mb": {"listener": 1024.0, "worker-1": 3072.0},
        "http_answers": [{"at": 3.0, "status": 503, "reason": "the database is not reachable"}],
        "faults": [{"kind": kind} for kind in KINDS],
        "fault_kinds": KINDS,
        "fault_errors": [],
        "modalities": ["ct-1"],
        "processes": ["listener", "worker-1"],
        "samples": 100,
        "http_probes": 100,
    }


def _reconcile(run: dict[str, Any]) -> Reconciliation:
    ledger, holdings, pacs = run["ledger"], run["holdings"], run["pacs"]
    rest = {k: v for k, v in run.items() if k not in ("ledger", "holdings", "pacs")}
    return reconcile(ledger, holdings, pacs, **rest)


def _failed(result: Reconciliation) -> list[str]:
    return [check.name for check in result.checks if not check.passed]


def test_a_clean_run_passes(run: dict[str, Any]) -> None:
    result = _reconcile(run)
    assert result.passed and result.losses == 0, [(c.name, c.failures) for c in result.checks]
    assert result.totals["instances_acknowledged"] == 4 and result.totals["result_sets_in_pacs"] == 1


def test_an_acknowledged_instance_that_is_not_indexed_is_a_loss(run: dict[str, Any]) -> None:
    del run["holdings"].indexed[f"{STUDY}.1"]
    result = _reconcile(run)
    assert _failed(result) == ["every acknowledged instance is stored and indexed"] and result.losses == 1


def test_an_indexed_instance_whose_file_is_gone_is_a_loss(run: dict[str, Any]) -> None:
    Path(run["holdings"].indexed[f"{STUDY}.2"][1]).unlink()
    result = _reconcile(run)
    assert _failed(result) == ["every acknowledged instance is stored and indexed"] and result.losses == 1


def test_a_study_left_receiving_fails(run: dict[str, Any]) -> None:
    run["holdings"].study_states[OTHER] = "receiving"
    assert _failed(_reconcile(run)) == ["every study sent in full was completed and routed"]


def test_a_second_result_set_in_the_pacs_fails(run: dict[str, Any]) -> None:
    again = copy.deepcopy(run["holdings"].jobs[0])
    again["id"], again["superseded_by"] = "job-2", None
    again["results"] = [("SEG", generate_uid(), ["pacs"]), ("SR", generate_uid(), ["pacs"])]
    run["holdings"].jobs.append(again)
    run["pacs"][STUDY]["sops"] += [sop for _, sop, _ in again["results"]]
    result = _reconcile(run)
    assert _failed(result) == ["every routed study has one result set per deployment in the PACS, of its own patient"]


def test_a_duplicate_or_unrecorded_instance_in_the_pacs_fails(run: dict[str, Any]) -> None:
    run["pacs"][STUDY]["sops"].append(run["pacs"][STUDY]["sops"][0])
    assert "an instance twice" in " ".join(_reconcile(run).checks[2].failures)
    run["pacs"][STUDY]["sops"][-1] = generate_uid()
    assert "no job recorded" in " ".join(_reconcile(run).checks[2].failures)


def test_results_under_another_patient_fail(run: dict[str, Any]) -> None:
    run["pacs"][STUDY]["patients"] = ["SOAK^P2"]
    assert "another patient" in " ".join(_reconcile(run).checks[2].failures)


def test_a_routable_study_without_a_job_or_its_results_is_a_loss(run: dict[str, Any]) -> None:
    run["pacs"][STUDY]["sops"] = run["pacs"][STUDY]["sops"][:1]  # the SR never arrived
    result = _reconcile(run)
    assert "not in the PACS" in " ".join(result.checks[2].failures) and result.losses == 1
    run["holdings"].jobs.clear()
    run["pacs"][STUDY]["sops"] = []
    result = _reconcile(run)
    assert "routable, no job" in " ".join(result.checks[2].failures) and result.losses == 1


def test_a_done_job_without_its_sr_or_with_two_of_a_kind_fails(run: dict[str, Any]) -> None:
    job = run["holdings"].jobs[0]
    seg = job["results"][0]
    job["results"] = [seg]  # the SR is missing (the SEG alone: a found lesion without its report)
    assert "has results ['SEG']" in " ".join(_reconcile(run).checks[2].failures)
    job["results"] = [seg, ("SEG", generate_uid(), ["pacs"]), job["results"][0]]
    assert "has results" in " ".join(_reconcile(run).checks[2].failures)
    sr = ("SR", run["pacs"][STUDY]["sops"][1], ["pacs"])
    job["results"] = [sr]  # no lesion found: the SR alone is a whole result set
    run["pacs"][STUDY]["sops"] = [sr[1]]
    assert _reconcile(run).passed


@pytest.mark.parametrize("state", ["queued", "running", "waiting", "failed"])
def test_a_stuck_or_failed_job_fails(run: dict[str, Any], state: str) -> None:
    run["holdings"].jobs[0]["state"] = state
    result = _reconcile(run)
    assert "no job is stuck or failed" in _failed(result)
    assert result.losses == (0 if state == "failed" else 1)  # a failed job has its reason; a stuck one is lost


def test_memory_above_its_bound_fails(run: dict[str, Any]) -> None:
    run["memory"]["worker-1"] = 3100.0
    assert _failed(_reconcile(run)) == ["every process's memory stayed bounded"]


def test_a_refusal_without_a_reason_fails(run: dict[str, Any]) -> None:
    run["ledger"].refuse(Refusal("cr-1", 5.0, "dicom", 0xA700, "", None))
    assert _failed(_reconcile(run)) == ["every refusal had a status and a reason"]
    run["ledger"].refusals.pop()
    run["http_answers"].append({"at": 4.0, "status": 500, "reason": ""})
    assert _failed(_reconcile(run)) == ["every refusal had a status and a reason"]


def test_a_fault_never_injected_or_not_recovered_fails(run: dict[str, Any]) -> None:
    run["faults"] = run["faults"][1:]
    assert _failed(_reconcile(run)) == ["every kind of fault was injected and recovered from"]
    run["faults"] = [{"kind": kind} for kind in KINDS]
    run["fault_errors"] = ["listener exited without a fault and was started again"]
    assert _failed(_reconcile(run)) == ["every kind of fault was injected and recovered from"]


IDLE = "the load was real: every modality sent, results arrived, every process was watched"


@pytest.mark.parametrize(
    "change",
    [
        {"modalities": ["ct-1", "mr-1"]},
        {"pacs": {STUDY: {"sops": [], "patients": []}, OTHER: {"sops": [], "patients": []}}},
        {"processes": ["listener", "worker-1", "postgres"]},
        {"http_probes": 80},
    ],
    ids=["a modality sent nothing", "no result in the PACS", "a process never sampled", "registry mostly silent"],
)
def test_a_run_where_nothing_happened_fails(run: dict[str, Any], change: dict[str, Any]) -> None:
    """The other checks pass by themselves on an idle run: a modality that sent nothing, no result in the
    PACS, a process never sampled or a registry that mostly did not answer must each fail the run."""
    assert IDLE not in _failed(_reconcile(run))
    assert IDLE in _failed(_reconcile(run | change))
