"""The registry's face of input drift: a version's status for readers, its reference window for model
developers (audited), and the drift gauges on /metrics, computed from the database at the scrape."""

from __future__ import annotations

from fastapi.testclient import TestClient

from hounsfield.access import Role
from hounsfield.config import Settings
from hounsfield.db import Database, utcnow
from hounsfield.registry.app import create_app
from tests.services.drift.profiled import SMALL_WINDOWS, ProfiledJobs
from tests.support import bearer

DRIFT = "/models/ct-lesion-seg/versions/1.0.0/drift"


def test_drift_status_reference_window_and_metrics(settings: Settings, tokens: dict[Role, str]) -> None:
    settings = settings.model_copy(update={"drift": SMALL_WINDOWS})
    db = Database(settings.sqlalchemy_url)
    jobs = ProfiledJobs(settings, db)
    jobs.run(40)
    start = utcnow()
    jobs.run(30, slice_thickness_mm=(5.0,))
    end = utcnow()
    viewer, developer, radiologist = tokens[Role.VIEWER], tokens[Role.MODEL_DEVELOPER], tokens[Role.RADIOLOGIST]

    with TestClient(create_app(settings, enqueue=lambda job: None)) as client:
        assert client.get(DRIFT).status_code == 401
        answer = client.get(DRIFT, headers=bearer(viewer))
        assert answer.status_code == 200
        shown = answer.json()
        assert (shown["status"], shown["reference"], shown["reference_jobs"], shown["window_jobs"]) == (
            "drifting", "first_jobs", 40, 30,
        )  # fmt: skip
        features = {f["feature"]: f for f in shown["features"]}
        assert list(features)[:2] == ["scanner", "slice_thickness_mm"]
        assert features["slice_thickness_mm"]["status"] == "drifting" and features["slice_thickness_mm"]["score"] == 1
        assert features["scanner"]["status"] == "ok" and features["scanner"]["statistic"] == "total_variation"
        assert client.get("/models/ct-lesion-seg/versions/9.9.9/drift", headers=bearer(viewer)).status_code == 404

        metrics = client.get("/metrics").text
        assert 'hounsfield_drift_drifting{model="ct-lesion-seg",version="1.0.0"} 1.0' in metrics
        assert (
            'hounsfield_drift_score{feature="slice_thickness_mm",model="ct-lesion-seg",version="1.0.0"} 1.0' in metrics
        )

        reference = f"{DRIFT}/reference"
        window = {"start": start.isoformat(), "end": end.isoformat()}
        assert client.put(reference, json=window, headers=bearer(viewer)).status_code == 403
        assert client.put(reference, json=window, headers=bearer(radiologist)).status_code == 403
        backwards = client.put(
            reference, json={"start": window["end"], "end": window["start"]}, headers=bearer(developer)
        )
        assert backwards.status_code == 422 and backwards.json()["detail"][0]["loc"] == ["body", "end"]
        half = client.put(reference, json={"start": window["start"]}, headers=bearer(developer))
        assert half.status_code == 422
        answer = client.put(reference, json=window, headers=bearer(developer))
        assert answer.status_code == 200
        assert (answer.json()["reference"], answer.json()["reference_jobs"]) == ("window", 30)
        assert answer.json()["status"] == "not_enough_data"  # no jobs after the window yet
        assert 'hounsfield_drift_drifting{model="ct-lesion-seg",version="1.0.0"} 0.0' in client.get("/metrics").text

        audit = client.get("/audit", headers=bearer(tokens[Role.ADMIN])).json()
        entry = next(e for e in audit if e["action"] == "model_version.drift_reference")
        assert entry["actor"] == "test-model-developer" and entry["entity_id"] == "ct-lesion-seg@1.0.0"
    db.dispose()
