"""Input drift per model version: has what a version sees moved away from what it was validated on?

- :mod:`.profile`: one job's input in numbers (scanner, slice thickness, pixel spacing, intensity
  statistics in rescaled units), taken by the worker from every header and a bounded pixel sample;
- :mod:`.compare`: one feature's distance between two windows of profiles (Kolmogorov-Smirnov, total
  variation for the scanner), with minimum sample sizes;
- :mod:`.monitor`: each version's recent window against its reference, the crossings recorded once as
  events, the reference window a model developer may set (audited);
- :mod:`.metrics`: the Prometheus collector the registry serves (scores and a drifting gauge).
"""

from __future__ import annotations

from hounsfield.drift.compare import NUMERIC_FEATURES, FeatureDrift
from hounsfield.drift.metrics import DriftCollector
from hounsfield.drift.monitor import (
    DriftStatus,
    ReferenceWindow,
    drift_status,
    drift_statuses,
    evaluate,
    record_profile,
    set_reference_window,
    store_profile,
)
from hounsfield.drift.profile import Profile, ProfileFailed, profile_input

__all__ = [
    "NUMERIC_FEATURES",
    "DriftCollector",
    "DriftStatus",
    "FeatureDrift",
    "Profile",
    "ProfileFailed",
    "ReferenceWindow",
    "drift_status",
    "drift_statuses",
    "evaluate",
    "profile_input",
    "record_profile",
    "set_reference_window",
    "store_profile",
]
