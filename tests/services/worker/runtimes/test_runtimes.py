"""The runtimes: App SDK applications run in a warm forked process that can be stopped (in-process), and a
MAP's command run as a process of its own (subprocess).

Real components: App SDK applications (one that raises, one that never finishes, one that says which
process ran it), the worker's own
pipeline on a stored study (real DICOM files, the registry's tables), and the job's recorded state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from hounsfield.config import Settings
from hounsfield.db import Event, Job, JobState
from hounsfield.worker.pipeline import execute_job
from hounsfield.worker.runtimes import ApplicationFailed, ApplicationTimedOut, InProcessRuntime, SubprocessRuntime
from tests.e2e.raising_app import MESSAGE
from tests.e2e.sleeping_app import MARKER
from tests.services.worker.counting_app import FAIL_FLAG, HANG_FLAG, REPORT
from tests.support import EXAMPLE_MAP, REPO, application_run, routed_job, write_study

MODEL = EXAMPLE_MAP / "models" / "model.ts"


def _folders(tmp_path: Path) -> dict[str, Path]:
    _, files = write_study(tmp_path / "input", seed=5, shape=(8, 32, 32))
    folders = {"input_dir": files[0].parent, "output_dir": tmp_path / "output", "workdir": tmp_path / "work"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def test_the_example_application_runs_in_a_fork_and_writes_its_results(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    InProcessRuntime().run(application_run(timeout_s=300, **folders))
    written = sorted(p.name for p in folders["output_dir"].rglob("*.dcm"))
    assert len(written) == 2 and all(name.endswith(".dcm") for name in written), written


def test_a_raising_application_fails_with_its_own_words_and_logging_stays(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with pytest.raises(ApplicationFailed, match=MESSAGE) as failed:
        InProcessRuntime().run(application_run(app="tests.e2e.raising_app:RaisingApp", **_folders(tmp_path)))
    assert not isinstance(failed.value, ApplicationTimedOut)
    assert root.handlers == handlers and root.level == level, "the SDK's logging set-up stayed in the child"


def test_what_an_application_writes_goes_to_its_jobs_application_log_and_nowhere_else(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its prints, its own logging, holoscan's native lines: the job's ``application.log``, never the worker's
    standard streams, whose every line is one of the worker's log records (docs/logs.md)."""
    folders = _folders(tmp_path)
    for path in folders["input_dir"].iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "ID-4711", "19370412"
        ds.save_as(path)
    runtime = InProcessRuntime()
    with pytest.raises(ApplicationFailed, match="ID-4711"):  # the run's own words are its failure's
        runtime.run(application_run(app="tests.e2e.quoting_app:QuotingApp", **folders))
    runtime.run(application_run(timeout_s=300, **folders))  # the next run, in a fresh fork, logs too
    runtime.close()
    worker = capfd.readouterr()
    assert worker.out == "" and worker.err == "", worker
    written = (folders["workdir"] / "application.log").read_text(errors="replace")
    assert "reading the study of Doe^Jane (ID ID-4711, born 19370412)" in written
    assert "stderr: Doe^Jane" in written and "the App SDK's logging: Doe^Jane" in written
    assert "[info]" in written, "holoscan's native lines, written to the file descriptors themselves"


def test_an_application_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    runtime = InProcessRuntime()
    runtime.warm("tests.e2e.sleeping_app:SleepingApp")
    started = time.monotonic()
    with pytest.raises(ApplicationTimedOut, match="past its timeout of 8 s"):
        runtime.run(application_run(app="tests.e2e.sleeping_app:SleepingApp", timeout_s=8, **folders))
    assert time.monotonic() - started < 20
    assert (folders["workdir"] / MARKER).exists(), "the model had started: it was stopped mid-run"


def test_a_job_past_its_timeout_is_recorded_as_timed_out(tmp_path: Path, settings: Settings) -> None:
    context, job = routed_job(tmp_path, settings, 6, app="tests.e2e.sleeping_app:SleepingApp", timeout_s=8)
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


def test_the_subprocess_runtime_runs_the_maps_command_with_its_environment(tmp_path: Path, settings: Settings) -> None:
    folders = _folders(tmp_path)
    run = application_run(runtime="subprocess", map_path=EXAMPLE_MAP, application_root=REPO, timeout_s=300, **folders)
    runtime = SubprocessRuntime(settings.worker.application_environment)
    env = runtime.environment(run)
    assert env["HOLOSCAN_INPUT_PATH"] == str(folders["input_dir"]) and env["HOLOSCAN_MODEL_PATH"] == str(MODEL)
    assert env["PYTHONPATH"] == str(REPO), "app.json's /opt/holoscan/app is this host's application root"
    runtime.run(run)
    assert len(list(folders["output_dir"].rglob("*.dcm"))) == 2
    assert (folders["workdir"] / "application.log").stat().st_size > 0


def test_the_subprocess_runtime_stops_a_run_past_its_timeout_and_reports_failures(tmp_path: Path) -> None:
    folders = _folders(tmp_path)
    slow = tmp_path / "slow-map"
    slow.mkdir()
    app = json.loads((EXAMPLE_MAP / "app.json").read_text())
    pkg = (EXAMPLE_MAP / "pkg.json").read_text()
    (slow / "pkg.json").write_text(pkg)
    (slow / "app.json").write_text(json.dumps({**app, "command": "sh -c 'sleep 600 & sleep 600'"}))
    started = time.monotonic()
    with pytest.raises(ApplicationTimedOut, match="past its timeout of 3 s"):
        SubprocessRuntime().run(application_run(map_path=slow, application_root=REPO, timeout_s=3, **folders))
    assert time.monotonic() - started < 10
    (slow / "app.json").write_text(json.dumps({**app, "command": "sh -c 'echo bad input >&2; exit 3'"}))
    with pytest.raises(ApplicationFailed, match="exited with code 3: bad input"):
        SubprocessRuntime().run(application_run(map_path=slow, application_root=REPO, **folders))


def test_the_application_sees_none_of_the_workers_secrets(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's environment holds the database URL, the broker's password and the destinations'
    tokens; the MAP's process (third-party code) gets only the allowed variables, its own and the job's."""
    secrets = {
        "HOUNSFIELD_DATABASE_URL": "postgresql+psycopg://hf:s3cret@db/hf",
        "HF_REDIS_PASSWORD": "r3dis",
        "PACS_TOKEN": "t0ken",
        "AWS_SECRET_ACCESS_KEY": "k3y",
    }
    for name, value in {**secrets, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    folders = _folders(tmp_path)
    printing = tmp_path / "env-map"
    printing.mkdir()
    app = json.loads((EXAMPLE_MAP / "app.json").read_text())
    (printing / "pkg.json").write_text((EXAMPLE_MAP / "pkg.json").read_text())
    (printing / "app.json").write_text(json.dumps({**app, "command": "sh -c 'env > $HOLOSCAN_WORKDIR/seen.env'"}))
    run = application_run(map_path=printing, application_root=REPO, **folders)
    SubprocessRuntime(settings.worker.application_environment).run(run)
    seen = dict(
        line.split("=", 1) for line in (folders["workdir"] / "seen.env").read_text().splitlines() if "=" in line
    )
    assert not {name for name in secrets if name in seen}, "a secret of the worker reached the application"
    assert not [value for value in secrets.values() if value in "\n".join(seen.values())]
    assert (seen["LC_ALL"], seen["OMP_NUM_THREADS"]) == ("C.UTF-8", "1"), "allowed variables pass, prefixes too"
    assert seen["HOLOSCAN_INPUT_PATH"] == str(folders["input_dir"]) and seen["PYTHONPATH"] == str(REPO)


def test_a_job_of_a_subprocess_deployment_runs_the_map_and_keeps_valid_results(
    tmp_path: Path, settings: Settings
) -> None:
    isolated = {
        "runtime": "subprocess", "app": None, "map_path": EXAMPLE_MAP,
        "application_root": REPO, "model_path": MODEL, "destinations": [],
    }  # fmt: skip
    context, job = routed_job(tmp_path, settings, 7, **isolated)
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and sorted(r.kind for r in stored.results) == ["SEG", "SR"], stored.error
    context.db.dispose()


COUNTING = "tests.services.worker.counting_app:CountingApp"


def _count(runtime: InProcessRuntime, tmp_path: Path, name: str, *, fail: bool = False) -> tuple[int, int]:
    """One run of the counting application; which process ran it, and its how-manieth run that was."""
    work = tmp_path / name
    work.mkdir()
    if fail:
        (work / FAIL_FLAG).touch()
        with pytest.raises(ApplicationFailed, match="asked to fail"):
            runtime.run(application_run(app=COUNTING, input_dir=tmp_path, output_dir=work / "out", workdir=work))
        return (0, 0)
    runtime.run(application_run(app=COUNTING, input_dir=tmp_path, output_dir=work / "out", workdir=work, timeout_s=60))
    report = json.loads((work / REPORT).read_text())
    return report["pid"], report["run"]


def test_jobs_run_one_after_another_in_one_warm_application_process(tmp_path: Path) -> None:
    runtime = InProcessRuntime(max_jobs=3)
    try:
        runs = [_count(runtime, tmp_path, f"job{n}") for n in range(4)]
    finally:
        runtime.close()
    pids = [pid for pid, _ in runs]
    assert pids[0] == pids[1] == pids[2] != pids[3], "three jobs in one process, then a fresh fork"
    assert [run for _, run in runs] == [1, 2, 3, 1]
    assert os.getpid() not in pids


def test_a_failed_run_is_never_followed_in_the_same_process(tmp_path: Path) -> None:
    runtime = InProcessRuntime()
    try:
        first = _count(runtime, tmp_path, "ok")
        _count(runtime, tmp_path, "failing", fail=True)
        after = _count(runtime, tmp_path, "after")
    finally:
        runtime.close()
    assert after[0] != first[0] and after[1] == 1


def test_one_job_per_process_when_asked(tmp_path: Path) -> None:
    runtime = InProcessRuntime(max_jobs=1)
    try:
        runs = [_count(runtime, tmp_path, f"job{n}") for n in range(2)]
    finally:
        runtime.close()
    assert runs[0][0] != runs[1][0] and runs[0][1] == runs[1][1] == 1


def test_after_a_timeout_the_next_job_runs_in_a_fresh_process(tmp_path: Path) -> None:
    runtime = InProcessRuntime()
    hanging = tmp_path / "hanging"
    hanging.mkdir()
    (hanging / HANG_FLAG).touch()
    try:
        first, _ = _count(runtime, tmp_path, "first")
        with pytest.raises(ApplicationTimedOut, match="past its timeout of 3 s"):
            runtime.run(
                application_run(app=COUNTING, input_dir=hanging, output_dir=hanging, workdir=hanging, timeout_s=3)
            )
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)  # the hanging process was killed (and reaped)
        after = _count(runtime, tmp_path, "after")
    finally:
        runtime.close()
    assert after[0] != first and after[1] == 1


def test_closing_the_runtime_lets_every_application_process_leave_at_once(tmp_path: Path) -> None:
    runtime = InProcessRuntime()
    pids = [_count(runtime, tmp_path, "counting")[0]]
    runtime.run(application_run(timeout_s=300, **_folders(tmp_path)))
    processes = [p.process for p in runtime._processes.values()]
    assert len(processes) == 2 and pids[0] in {p.pid for p in processes}
    started = time.monotonic()
    runtime.close()
    assert time.monotonic() - started < 10, "each left when told, none waited to be killed"
    assert [p.exitcode for p in processes] == [0, 0]
