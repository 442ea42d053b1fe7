"""Jobs of a model version with input profiles drawn from a seeded distribution (drift and registry tests)."""

from __future__ import annotations

import itertools

import numpy as np

from hounsfield.config import DriftSettings, Settings
from hounsfield.db import Database, Job, Study
from hounsfield.drift import DriftStatus, Profile, store_profile

__all__ = ["BASELINE", "SMALL_WINDOWS", "ProfiledJobs"]

SMALL_WINDOWS = DriftSettings(reference_jobs=40, window_jobs=30, min_reference_jobs=20, min_window_jobs=15)
"""Windows small enough for a test to fill (the defaults are 100 and 50 jobs)."""

BASELINE = {"scanner": ("Acme / CT-1", "Acme / CT-2"), "slice_thickness_mm": (1.0, 1.25), "intensity_mean": -500.0}


class ProfiledJobs:
    """Jobs of one model version whose input profiles are drawn from a seeded distribution."""

    def __init__(self, settings: Settings, db: Database, model_name: str = "ct-lesion-seg", version: str = "1.0.0"):
        self.settings, self.db, self.model_name, self.version = settings, db, model_name, version
        self.rng = np.random.default_rng(20261202)
        self._numbers = itertools.count(1)
        self.study = "1.2.826.0.1.3680043.10.1392.77"
        with db.session() as session:
            if session.get(Study, self.study) is None:
                session.add(Study(study_instance_uid=self.study))

    def job(self) -> Job:
        number = next(self._numbers)
        job = Job(
            id=f"job-{self.model_name}-{self.version}-{number}", idempotency_key=f"{self.version}-{number}",
            study_instance_uid=self.study, series_instance_uids=[], deployment="ct", model_name=self.model_name,
            model_version=self.version, mode="shadow", queue="routine",
        )  # fmt: skip
        with self.db.session() as session:
            session.add(job)
            session.flush()
            session.expunge(job)
        return job

    def profile(
        self,
        *,
        scanner: tuple[str, ...] = BASELINE["scanner"],  # type: ignore[assignment]
        slice_thickness_mm: tuple[float, ...] = BASELINE["slice_thickness_mm"],  # type: ignore[assignment]
        intensity_mean: float = BASELINE["intensity_mean"],  # type: ignore[assignment]
    ) -> Profile:
        """One input: a scanner and a thickness of those given (70/30 for two), intensities with noise."""
        shares = [0.7, 0.3] if len(scanner) == 2 else None
        mean = intensity_mean + self.rng.normal(0, 20)
        std = 480 + self.rng.normal(0, 15)
        return Profile(
            scanner=str(self.rng.choice(scanner, p=shares)),
            slice_thickness_mm=float(self.rng.choice(slice_thickness_mm)),
            pixel_spacing_mm=round(float(self.rng.uniform(0.68, 0.8)), 3),
            instances=int(self.rng.integers(80, 400)),
            sampled_pixels=200_000,
            intensity_mean=mean,
            intensity_std=std,
            intensity_p05=mean - 1.6 * std,
            intensity_p50=mean + self.rng.normal(0, 10),
            intensity_p95=mean + 1.6 * std,
        )

    def run(self, count: int, **shift: object) -> list[DriftStatus]:
        """``count`` jobs profiled (with ``shift`` to the distribution); the version's status after each."""
        return [store_profile(self.settings, self.db, self.job(), self.profile(**shift)) for _ in range(count)]  # type: ignore[arg-type]
