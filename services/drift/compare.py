"""How far a version's recent inputs are from its reference, feature by feature.

Numeric features (slice thickness, pixel spacing, intensity statistics): the two-sample
Kolmogorov-Smirnov distance (the largest gap between the two empirical distribution functions, 0 to
1) with its p-value. The scanner (a category): the total variation distance between the two windows'
shares of each scanner (half the sum of the absolute differences, 0 to 1) with the p-value of a
chi-square test of the two windows' counts. A feature drifts when its distance reaches its threshold
*and* its p-value is at most ``drift.max_p_value``; a feature with fewer values than the minimums in
either window has no score ("not enough data"), never an alarm.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats

from hounsfield.config import DriftSettings

__all__ = ["NUMERIC_FEATURES", "FeatureDrift", "compare_feature", "ks_distance", "total_variation"]

NUMERIC_FEATURES = (
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "intensity_mean",
    "intensity_std",
    "intensity_p05",
    "intensity_p50",
    "intensity_p95",
)
"""The numeric features of a profile, in the order they are reported (after ``scanner``)."""


class FeatureDrift(BaseModel):
    """One feature of one version: its distance between reference and recent window, and the verdict."""

    feature: str
    statistic: Literal["ks", "total_variation"]
    score: float | None
    """The distance (0: the same distribution, 1: disjoint); None with not enough data."""
    p_value: float | None
    threshold: float
    reference_n: int
    window_n: int
    status: Literal["ok", "drifting", "not_enough_data"]


def ks_distance(reference: Sequence[float], window: Sequence[float]) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov distance and its p-value."""
    result = stats.ks_2samp(np.asarray(reference, dtype=float), np.asarray(window, dtype=float))
    return float(result.statistic), float(result.pvalue)


def total_variation(reference: Sequence[str], window: Sequence[str]) -> tuple[float, float]:
    """The total variation distance between the two samples' category shares, and the p-value of a
    chi-square test of their counts (1 when both hold one and the same category)."""
    ref, win = Counter(reference), Counter(window)
    categories = sorted(set(ref) | set(win))
    distance = 0.5 * sum(abs(ref[c] / len(reference) - win[c] / len(window)) for c in categories)
    if len(categories) < 2:
        return distance, 1.0
    table = np.array([[ref[c] for c in categories], [win[c] for c in categories]])
    p_value = float(stats.chi2_contingency(table).pvalue)
    return distance, p_value


def compare_feature(
    feature: str, reference: Sequence[object], window: Sequence[object], settings: DriftSettings
) -> FeatureDrift:
    """The drift of one feature; ``reference`` and ``window`` are its values per profile (None: absent)."""
    categorical = feature == "scanner"
    ref = [v for v in reference if v is not None]
    win = [v for v in window if v is not None]
    threshold = settings.scanner_threshold if categorical else settings.ks_threshold
    statistic: Literal["ks", "total_variation"] = "total_variation" if categorical else "ks"
    shown = {"feature": feature, "statistic": statistic, "threshold": threshold}
    if len(ref) < settings.min_reference_jobs or len(win) < settings.min_window_jobs:
        return FeatureDrift(
            **shown, score=None, p_value=None, reference_n=len(ref), window_n=len(win), status="not_enough_data"
        )
    if categorical:
        score, p_value = total_variation([str(v) for v in ref], [str(v) for v in win])
    else:
        score, p_value = ks_distance([float(v) for v in ref], [float(v) for v in win])  # type: ignore[arg-type]
    if math.isnan(p_value):
        p_value = 1.0
    drifting = score >= threshold and p_value <= settings.max_p_value
    return FeatureDrift(
        **shown,
        score=round(score, 4),
        p_value=float(f"{p_value:.4g}"),
        reference_n=len(ref),
        window_n=len(win),
        status="drifting" if drifting else "ok",
    )
