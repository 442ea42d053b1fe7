"""The in-process runtime: App SDK applications imported once, each run in a fork that can be stopped.

Real components: App SDK applications (one that raises, one that never finishes), the worker's own
pipeline on a stored study (real DICOM files, the registry's tables), and the job's recorded state.
"""

from __future__ import annotations

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
from services.worker.runtime import AppFailed, AppTimedOut, InProcessRuntime
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


def test_a_job_past_its_timeout_is_recorded_as_timed_out(tmp_path: Path, settings: Settings) -> None:
    declared = settings.deployments[0].model_copy(update={"app": "tests.e2e.sleeping_app:SleepingApp", "timeout_s": 8})
    settings = settings.model_copy(update={"deployments": [declared]})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    study_uid, files = write_study(tmp_path / "study", seed=6, shape=(8, 32, 32))
    index_files(db, files)
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=study_uid, trigger="manual")
    )
    context = WorkerContext(settings=settings, db=db, store=StudyStore(settings.data_dir))
    assert execute_job(context, job.id) is JobState.TIMED_OUT
    with db.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.state is JobState.TIMED_OUT
        assert stored.error is not None and "timed out" in stored.error and "timeout of 8 s" in stored.error
        assert 7 < stored.timings["inference"] < 20
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)).all()
    assert kinds[-1] == "job-timed_out"
    db.dispose()
