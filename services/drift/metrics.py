"""The drift of model versions as Prometheus metrics, computed from the database at each scrape.

The registry registers one :class:`DriftCollector`; each scrape compares the windows of at most
``drift.max_metric_versions`` versions (the most recently profiled), each reading at most
``drift.reference_jobs + drift.window_jobs`` profiles. Labels are model, version and feature: bounded,
no patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hounsfield.config import Settings
from hounsfield.db import Database
from hounsfield.drift.monitor import drift_statuses

__all__ = ["DriftCollector"]

logger = logging.getLogger(__name__)


class DriftCollector(Collector):
    """``hounsfield_drift_score`` per model, version and feature; ``hounsfield_drift_drifting`` (0/1) per version."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db

    def collect(self) -> Iterator[Metric]:
        scores = GaugeMetricFamily(
            "hounsfield_drift_score",
            "Input drift of a model version per feature: KS distance (numeric features) or total variation "
            "distance (scanner) between its recent jobs and its reference; absent with not enough data.",
            labels=["model", "version", "feature"],
        )
        drifting = GaugeMetricFamily(
            "hounsfield_drift_drifting",
            "1 when a model version's inputs drift (a feature past its threshold), else 0 (not enough data: 0).",
            labels=["model", "version"],
        )
        if not self._settings.drift.enabled:
            return
        try:
            with self._db.session() as session:
                statuses = drift_statuses(session, self._settings)
        except Exception as exc:  # the database down: the scrape's other metrics still go out (source_up says it)
            logger.warning("input drift not read for metrics: %s", type(exc).__name__)
            return
        for status in statuses:
            labels = [status.model_name, status.model_version]
            drifting.add_metric(labels, 1.0 if status.status == "drifting" else 0.0)
            for feature in status.features:
                if feature.score is not None:
                    scores.add_metric([*labels, feature.feature], feature.score)
        yield scores
        yield drifting

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing read at registration: the database is read at scrape time only
