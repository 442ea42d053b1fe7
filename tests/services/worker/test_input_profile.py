"""The worker profiles a real job's input (the example application on a synthetic CT) before it runs the
application, keyed by the job with its model name and version; no patient data in the profile."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from hounsfield.config import Settings
from hounsfield.db import Job, JobState
from hounsfield.db.drift import InputProfile
from hounsfield.drift import record_profile
from hounsfield.worker.pipeline import execute_job
from tests.support import routed_job


def test_the_worker_records_the_profile_of_a_real_job(settings: Settings, tmp_path: Path) -> None:
    context, job = routed_job(tmp_path, settings, seed=71, destinations=[], model_name="ct-lesion-seg")
    assert execute_job(context, job.id) is JobState.DONE
    with context.db.session() as session:
        profile = session.scalars(select(InputProfile)).one()
        stored = session.get(Job, job.id)
        assert stored is not None
        timings = stored.timings
    files = sorted((tmp_path / "study").glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert (profile.job_id, profile.model_name, profile.model_version) == (job.id, "ct-lesion-seg", "1.0.0")
    assert profile.scanner == "Hounsfield phantom / Synthetic"
    assert profile.slice_thickness_mm == float(first.SliceThickness)
    assert profile.pixel_spacing_mm == float(first.PixelSpacing[0])
    assert profile.instances == len(files) == 8
    assert profile.sampled_pixels == 8 * 32 * 32  # below the limits: every pixel
    assert profile.intensity_p05 < profile.intensity_p50 < profile.intensity_p95
    assert "profile" in timings and timings["profile"] < timings["inference"]
    stored_values = " ".join(str(getattr(profile, c.key)) for c in InputProfile.__table__.columns)
    for identifying in (first.PatientID, str(first.PatientName), first.StudyInstanceUID, first.AccessionNumber):
        assert str(identifying) not in stored_values

    # a job redelivered after its worker died mid-run is profiled once
    assert record_profile(context.settings, context.db, job, files) is None
    with context.db.session() as session:
        assert len(session.scalars(select(InputProfile)).all()) == 1


def test_an_input_that_cannot_be_profiled_is_logged_by_kind_and_not_recorded(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    context, job = routed_job(tmp_path, settings, seed=72, destinations=[])
    files = sorted((tmp_path / "study").glob("*.dcm"))
    files[2].write_bytes(b"PATIENT NAME: nobody")
    with caplog.at_level(logging.WARNING, logger="hounsfield.drift"):
        assert record_profile(context.settings, context.db, job, files) is None  # never raises: the job goes on
    assert f"job {job.id}: input not profiled: a header could not be read (InvalidDicomError)" in caplog.text
    assert "nobody" not in caplog.text
    with context.db.session() as session:
        assert session.scalars(select(InputProfile)).all() == []
