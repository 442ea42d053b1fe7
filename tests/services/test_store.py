from __future__ import annotations

from pathlib import Path

import pytest

from hounsfield.store import InvalidUID, StoreFull, StudyStore


def test_write_is_durable_and_idempotent(tmp_path: Path) -> None:
    store = StudyStore(tmp_path)
    first = store.write_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", b"abc")
    assert first.path.read_bytes() == b"abc" and not first.duplicate and first.revision == 0
    again = store.write_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", b"abc")
    assert again.duplicate and again.path == first.path
    assert not list(first.path.parent.glob(".incoming-*")), "no temporary file is left behind"


def test_different_bytes_become_a_revision_and_keep_the_first(tmp_path: Path) -> None:
    store = StudyStore(tmp_path)
    first = store.write_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", b"abc")
    second = store.write_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", b"abcd")
    assert second.revision == 1 and second.path != first.path
    assert first.path.read_bytes() == b"abc" and second.path.read_bytes() == b"abcd"


@pytest.mark.parametrize("uid", ["", "../../etc", "1.2.a", "1." + "2" * 70, "1..2"])
def test_hostile_uids_cannot_escape(tmp_path: Path, uid: str) -> None:
    with pytest.raises(InvalidUID):
        StudyStore(tmp_path).write_instance("1.2.3", "1.2.3.4", uid, b"x")


def test_workspace_is_fresh(tmp_path: Path) -> None:
    store = StudyStore(tmp_path)
    job_id = "0b2a4c1e-0000-4000-8000-000000000001"
    ws = store.workspace(job_id)
    (ws.output / "left.dcm").write_bytes(b"x")
    ws = store.workspace(job_id)
    assert list(ws.output.iterdir()) == []
    with pytest.raises(ValueError):
        store.workspace("../../x")


def test_two_runs_of_one_job_have_workspaces_of_their_own(tmp_path: Path) -> None:
    """A job's message delivered again while its first worker still runs it: neither run may remove the
    other's files (the soak met it: a Redis restart hands running tasks out again)."""
    store = StudyStore(tmp_path)
    job_id = "0b2a4c1e-0000-4000-8000-000000000002"
    first, second = store.workspace(job_id, "a1"), store.workspace(job_id, "b2")
    (first.output / "seg.dcm").write_bytes(b"x")
    (second.output / "seg.dcm").write_bytes(b"y")
    store.remove_workspace(job_id, "b2")
    assert (first.output / "seg.dcm").read_bytes() == b"x"
    store.workspace(job_id, "c3")  # a third run starts: the first's files stay
    assert (first.output / "seg.dcm").exists()
    store.remove_workspace(job_id, "a1")
    store.remove_workspace(job_id, "c3")
    assert not (tmp_path / "jobs" / job_id).exists(), "the job's folder goes with its last run"
    with pytest.raises(ValueError):
        store.workspace(job_id, "../x")


def test_a_disk_below_the_floor_refuses_before_writing(tmp_path: Path) -> None:
    store = StudyStore(tmp_path, min_free_bytes=2**62)
    with pytest.raises(StoreFull, match="would fall below the floor"):
        store.write_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", b"abc")
    assert not list(tmp_path.rglob("*.dcm")) and not list(tmp_path.rglob(".incoming-*"))
