"""The in-process runtime: App SDK applications imported once, each run in a fork that can be stopped.

Real components: App SDK applications (one that raises, one that never finishes), the worker's own
pipeline on a stored study (real DICOM files, the registry's tables), and the job's recorded state.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from services.config import Settings
from services.contracts import StudyComplete
from services.db import Database, Event, Job, JobState
from services.registry.lifecycle import prepare_database
from services.router.routing import Router
from services.store import StudyStore
from services.worker.pipeline import WorkerContext, execute_job
from services.worker.runtime import AppFailed, AppTimedOut, InProcessRuntime, SubprocessRuntime
from tests.e2e.raising_app import MESSAGE
from tests.e2e.sleeping_app import MARKER
from tests.support import index_files, write_study

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"


def _folders(tmp_path: Path) -> dict[str, Path]:
    _, files = write_study(tmp_path / "input", seed=5, shape=(8, 32, 32))
    folders = {"input_dir": files[0].parent, "output_dir": tmp_path / "output", "workdir": tmp_path / "work"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def test_the_example_application_runs_in_a_fork_and_writes_its_results(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    InProcessRuntime().run("operators.ct_lesion_seg.app:CTLesionSegApp", model_path=MODEL, timeout_s=300, **folders)
    written = sorted(p.name for p in folders["output_dir"].rglob("*.dcm"))
    assert len(written) == 2 and all(name.endswith(".dcm") for name in written), written


def test_a_raising_application_fails_with_its_own_words_and_logging_stays(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with pytest.raises(AppFailed, match=MESSAGE) as failed:
        InProcessRuntime().run("tests.e2e.raising_app:RaisingApp", model_path=MODEL, **_folders(tmp_path))
    assert not isinstance(failed.value, AppTimedOut)
    assert root.handlers == handlers and root.level == level, "the SDK's logging set-up stayed in the child"


def test_an_application_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    runtime = InProcessRuntime()
    runtime.warm("tests.e2e.sleeping_app:SleepingApp")
    started = time.monotonic()
    with pytest.raises(AppTimedOut, match="past its timeout of 8 s"):
        runtime.run("tests.e2e.sleeping_app:SleepingApp", model_path=MODEL, timeout_s=8, **folders)
    assert time.monotonic() - started < 20
    assert (folders["workdir"] / MARKER).exists(), "the model had started: it was stopped mid-run"


def _routed_job(tmp_path: Path, settings: Settings, seed: int, **deployment: object) -> tuple[WorkerContext, Job]:
    """A stored study routed to the configured deployment (with ``deployment``'s changes); the job queued."""
    declared = settings.deployments[0].model_copy(update=deployment)
    settings = settings.model_copy(update={"deployments": [declared]})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    study_uid, files = write_study(tmp_path / "study", seed=seed, shape=(8, 32, 32))
    index_files(db, files)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    return WorkerContext(settings=settings, db=db, store=StudyStore(settings.data_dir)), job


def test_a_job_past_its_timeout_is_recorded_as_timed_out(tmp_path: Path, settings: Settings) -> None:
    context, job = _routed_job(tmp_path, settings, 6, app="tests.e2e.sleeping_app:SleepingApp", timeout_s=8)
    db = context.db
    assert execute_job(context, job.id) is JobState.TIMED_OUT
    with db.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.state is JobState.TIMED_OUT
        assert stored.error is not None and "timed out" in stored.error and "timeout of 8 s" in stored.error
        assert 7 < stored.timings["inference"] < 20
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)).all()
    assert kinds[-1] == "job-timed_out"
    db.dispose()


def test_the_subprocess_runtime_runs_the_maps_command_with_its_environment(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    runtime = SubprocessRuntime(map_path=REPO / "operators" / "ct_lesion_seg", application_root=REPO)
    env = runtime.environment({**folders, "model_path": MODEL})
    assert env["HOLOSCAN_INPUT_PATH"] == str(folders["input_dir"]) and env["HOLOSCAN_MODEL_PATH"] == str(MODEL)
    assert env["PYTHONPATH"] == str(REPO), "app.json's /opt/holoscan/app is this host's application root"
    runtime.run(model_path=MODEL, timeout_s=300, **folders)
    assert len(list(folders["output_dir"].rglob("*.dcm"))) == 2
    assert (folders["workdir"] / "application.log").stat().st_size > 0


def test_the_subprocess_runtime_stops_a_run_past_its_timeout_and_reports_failures(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    slow = tmp_path / "slow-map"
    slow.mkdir()
    app = json.loads((REPO / "operators" / "ct_lesion_seg" / "app.json").read_text())
    pkg = (REPO / "operators" / "ct_lesion_seg" / "pkg.json").read_text()
    (slow / "pkg.json").write_text(pkg)
    (slow / "app.json").write_text(json.dumps({**app, "command": "sh -c 'sleep 600 & sleep 600'"}))
    started = time.monotonic()
    with pytest.raises(AppTimedOut, match="past its timeout of 3 s"):
        SubprocessRuntime(map_path=slow, application_root=REPO).run(model_path=MODEL, timeout_s=3, **folders)
    assert time.monotonic() - started < 10
    (slow / "app.json").write_text(json.dumps({**app, "command": "sh -c 'echo bad input >&2; exit 3'"}))
    with pytest.raises(AppFailed, match="exited with code 3: bad input"):
        SubprocessRuntime(map_path=slow, application_root=REPO).run(model_path=MODEL, **folders)


def test_a_job_of_a_subprocess_deployment_runs_the_map_and_keeps_valid_results(
    tmp_path: Path, settings: Settings
) -> None:
    isolated = {
        "runtime": "subprocess", "app": None, "map_path": REPO / "operators" / "ct_lesion_seg",
        "application_root": REPO, "model_path": MODEL, "destinations": [],
    }  # fmt: skip
    context, job = _routed_job(tmp_path, settings, 7, **isolated)
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and sorted(r.kind for r in stored.results) == ["SEG", "SR"], stored.error
    context.db.dispose()
