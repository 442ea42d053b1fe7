"""Retention fixtures: stored studies (files and rows) aged as a test needs, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from hounsfield.catalog import open_database
from hounsfield.config import Settings
from hounsfield.db import Database, Job, JobState, Study, StudyState, utcnow
from hounsfield.db.index import IndexedInstance, record_instance
from hounsfield.store import StudyStore
from tests.support import settings_on_both_backends as settings_on_both_backends  # the settings fixture, on both


@dataclass
class Stored:
    """A study in the store: its UID and instance files."""

    uid: str
    files: list[Path]


@dataclass
class Rig:
    settings: Settings
    db: Database
    store: StudyStore
    made: int = 0

    def instance(self, study_uid: str, series_uid: str, sop_uid: str, *, size: int, calling_ae: str) -> Path:
        """One instance file written into the store and indexed, as the listener does."""
        stored = self.store.write_instance(study_uid, series_uid, sop_uid, sop_uid.encode().ljust(size, b"\0"))
        item = IndexedInstance(
            study_instance_uid=study_uid, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
            sop_class_uid=CTImageStorage, transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="PAT-SECRET",
            accession_number="ACC", study_date="20260101", modality="CT", series_number=1, series_description="",
            instance_number=1, calling_ae=calling_ae, called_ae="HOUNSFIELD", tags={}, path=str(stored.path),
            size=stored.size, sha256=stored.sha256, revision=stored.revision,
        )  # fmt: skip
        with self.db.session() as session:
            record_instance(session, item)
        return stored.path

    def study(
        self,
        *,
        state: StudyState = StudyState.ROUTED,
        days_ago: float = 40,
        jobs: tuple[JobState, ...] = (JobState.DONE,),
        deployment: str = "ct-lesion-seg",
        calling_ae: str = "CT01",
        instances: int = 3,
        size: int = 4096,
    ) -> Stored:
        """A study received, completed and (its jobs) ended ``days_ago``, in ``state``."""
        self.made += 1
        uid = f"1.2.826.0.1.3680043.10.1392.99.{self.made}"
        files = [
            self.instance(uid, f"{uid}.1", f"{uid}.1.{i}", size=size, calling_ae=calling_ae) for i in range(instances)
        ]
        at = utcnow() - timedelta(days=days_ago)
        with self.db.session() as session:
            study = session.get(Study, uid)
            assert study is not None
            study.state, study.completed_at = state, at
            study.first_received_at = study.last_received_at = at
            for n, job_state in enumerate(jobs):
                session.add(
                    Job(
                        id=str(uuid.uuid4()), idempotency_key=f"{uid}-{n}", study_instance_uid=uid,
                        series_instance_uids=[f"{uid}.1"], deployment=deployment, model_name="m", model_version="1.0.0",
                        mode="research", queue="routine", state=job_state, created_at=at,
                        finished_at=at if job_state.final else None,
                    )
                )  # fmt: skip
        return Stored(uid, files)

    def state(self, uid: str) -> StudyState:
        with self.db.session() as session:
            study = session.get(Study, uid)
            assert study is not None
            return study.state


@pytest.fixture
def rig(settings: Settings) -> Iterator[Rig]:
    retention = settings.retention.model_copy(
        update={"enabled": True, "high_water_percent": 100.0, "floor_margin_mb": 0}
    )  # never above high water here: a test that wants it sets its own marks
    configured = settings.model_copy(update={"retention": retention})
    db = open_database(configured)
    yield Rig(configured, db, StudyStore(configured.data_dir))
    db.dispose()
