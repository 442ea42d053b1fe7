"""The dashboard's routes (TestClient): sign-in and sessions, roles as the API's, CSRF, escaping, 4xx pages,
paging, PACS links, and the actions (promote, rollback, retry) audited as the API's are."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydicom.uid import SegmentationStorage

from hounsfield.access import Principal, Role, revoke_token
from hounsfield.catalog import prepare_database
from hounsfield.catalog.models import create_model
from hounsfield.catalog.schemas import ModelCreate
from hounsfield.config import RetentionSettings, Settings
from hounsfield.contracts import StudyComplete
from hounsfield.db import Database, Job, JobState
from hounsfield.db.access import list_audit, token_by_name
from hounsfield.db.catalog import RegulatoryStatus
from hounsfield.db.jobs import finish_job, record_result
from hounsfield.feedback import give_feedback
from hounsfield.logs import study_correlation_id
from hounsfield.registry.app import create_app
from hounsfield.registry.dashboard.sessions import COOKIE
from hounsfield.registry.read_log import READS_LOGGER
from hounsfield.retention import Purger
from hounsfield.router.routing import Router
from hounsfield.store import StudyStore
from tests.conftest import TEST_PRINCIPAL
from tests.services.drift.profiled import SMALL_WINDOWS, ProfiledJobs
from tests.services.registry.test_auth import AUDIENCE, ISSUER, _jwt, provider
from tests.support import bearer, index_series

__all__ = ["provider"]  # the OIDC provider's keys (a fixture)

STUDY = "1.2.826.0.1.3680043.10.1392.77"
HOSTILE = "<script>alert('x')</script>"


def _routed_study(settings: Settings, *, error: str | None = None) -> Job:
    """A study indexed and routed as the listener and router do it; its job failed with ``error`` if given."""
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)  # the configuration's deployment, as the registry's start writes it
    index_series(db, STUDY, f"{STUDY}.1", 10, description="axial")
    (job,) = Router(settings, db, lambda job: None).on_study_complete(
        StudyComplete(study_instance_uid=STUDY, trigger="association-release")
    )
    if error is not None:
        with db.session() as session:
            finish_job(session, job.id, JobState.FAILED, {"load": 0.25}, error=error)
    db.dispose()
    return job


def _app(settings: Settings, **dashboard: object) -> tuple[TestClient, list[Job]]:
    if dashboard:
        registry = settings.registry.model_copy(
            update={"dashboard": settings.registry.dashboard.model_copy(update=dashboard)}
        )
        settings = settings.model_copy(update={"registry": registry})
    queued: list[Job] = []
    return TestClient(create_app(settings, enqueue=queued.append), follow_redirects=False), queued


def _sign_in(client: TestClient, token: str) -> None:
    form = client.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = client.post("/dashboard/sign-in", data={"token": token, "csrf": csrf.group(1)})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/dashboard"


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def _audit_actions(settings: Settings) -> list[str]:
    db = Database(settings.sqlalchemy_url)
    with db.session() as session:
        actions = [entry.action for entry in list_audit(session, limit=500)]
    db.dispose()
    return actions


def test_pages_need_a_sign_in_and_a_token_gives_a_strict_session_cookie(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    client, _ = _app(settings)
    assert client.get("/dashboard/studies").headers["location"] == "/dashboard/sign-in"
    assert "content-security-policy" in client.get("/dashboard/studies").headers, "the gate's redirect too"
    huge = {"content-length": str(64 * 2**20), "content-type": "application/x-www-form-urlencoded"}
    unread = client.post("/dashboard/jobs/0000/retry", headers=huge, content=b"csrf=x")
    assert unread.status_code == 401, "refused before a body is read (a 413 would mean it was weighed first)"
    style = client.get("/dashboard/static/dashboard.css")
    assert "content-security-policy" in style.headers
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css"), "open, like the form"
    form_cookie = client.get("/dashboard/sign-in").headers["set-cookie"].lower()
    assert "max-age=600" in form_cookie and "httponly" in form_cookie and "samesite=strict" in form_cookie
    assert client.post("/dashboard/sign-out", data={"csrf": "x"}).status_code == 401
    _sign_in(client, tokens[Role.VIEWER])
    cookie = client.cookies.get(COOKIE)
    assert cookie and tokens[Role.VIEWER] not in cookie, "the session keeps the token's digest, never the token"
    page = client.get("/dashboard")
    assert page.status_code == 200 and "test-viewer" in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"

    secure, _ = _app(settings)
    secure.base_url = secure.base_url.copy_with(scheme="https")
    form = secure.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = secure.post("/dashboard/sign-in", data={"token": tokens[Role.VIEWER], "csrf": csrf.group(1)})
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "secure" in set_cookie
    assert f"max-age={settings.registry.dashboard.session_max_age_s}" in set_cookie
    assert "path=/dashboard" in set_cookie

    plain, _ = _app(settings)
    form = plain.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = plain.post("/dashboard/sign-in", data={"token": tokens[Role.VIEWER], "csrf": csrf.group(1)})
    assert "secure" not in answer.headers["set-cookie"].lower().replace("samesite", ""), "no TLS, no Secure"


def test_a_wrong_token_a_forged_cookie_and_a_foreign_sign_in_form_are_refused(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    client, _ = _app(settings)
    form = client.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    wrong = client.post("/dashboard/sign-in", data={"token": "hf_not-a-token", "csrf": csrf.group(1)})
    assert wrong.status_code == 401 and "unknown or revoked API token" in wrong.text
    assert COOKIE not in client.cookies
    other, _ = _app(settings)  # a form posted from elsewhere: no sign-in cookie of its own
    foreign = other.post("/dashboard/sign-in", data={"token": tokens[Role.VIEWER], "csrf": csrf.group(1)})
    assert foreign.status_code == 403

    _sign_in(client, tokens[Role.VIEWER])
    cookie = client.cookies[COOKIE]
    digest, rest = cookie.split(".", 1)
    forged = ("0" if digest[0] != "0" else "1") + digest[1:] + "." + rest
    client.cookies.clear()
    client.cookies.set(COOKIE, forged)
    assert client.get("/dashboard").status_code == 303
    client.cookies.clear()
    client.cookies.set(COOKIE, cookie)
    assert client.get("/dashboard").status_code == 200, "the cookie as signed is taken"


def test_a_revoked_token_and_an_expired_session_sign_the_user_out(settings: Settings, tokens: dict[Role, str]) -> None:
    client, _ = _app(settings)
    _sign_in(client, tokens[Role.RADIOLOGIST])
    assert client.get("/dashboard").status_code == 200
    sessions = client.app.state.dashboard_sessions  # type: ignore[attr-defined]
    now = time.time()
    sessions._clock = lambda: now + settings.registry.dashboard.session_max_age_s + 1
    assert client.get("/dashboard").status_code == 303, "expired"
    sessions._clock = time.time
    assert client.get("/dashboard").status_code == 200
    db = Database(settings.sqlalchemy_url)
    with db.session() as session:
        row = token_by_name(session, "test-radiologist")
        assert row is not None
        assert revoke_token(session, TEST_PRINCIPAL, row.id)
    db.dispose()
    assert client.get("/dashboard").headers["location"] == "/dashboard/sign-in"


def test_sign_out_needs_the_session_csrf_token_and_clears_the_cookie(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    client, _ = _app(settings)
    _sign_in(client, tokens[Role.VIEWER])
    assert client.post("/dashboard/sign-out", data={"csrf": "0" * 64}).status_code == 403
    csrf = _csrf(client, "/dashboard")
    answer = client.post("/dashboard/sign-out", data={"csrf": csrf})
    assert answer.status_code == 303 and COOKIE not in client.cookies
    assert client.get("/dashboard").status_code == 303


def test_every_page_needs_the_role_of_its_api_route(settings: Settings, tokens: dict[Role, str]) -> None:
    job = _routed_study(settings)
    pages = [
        "/dashboard", "/dashboard/studies", f"/dashboard/studies/{STUDY}", "/dashboard/jobs",
        f"/dashboard/jobs/{job.id}", "/dashboard/results", "/dashboard/models",
        "/dashboard/deployments/ct-lesion-seg", "/dashboard/feedback",
    ]  # fmt: skip
    client, _ = _app(settings)
    for role in (Role.VIEWER, Role.RADIOLOGIST, Role.MODEL_DEVELOPER, Role.ADMIN):
        for path in pages:
            answer = client.get(path, headers=bearer(tokens[role]))
            assert answer.status_code == 200, (role, path, answer.text)
        audit = client.get("/dashboard/audit", headers=bearer(tokens[role])).status_code
        assert audit == (200 if role is Role.ADMIN else 403), role
    sender = client.get("/dashboard/studies", headers=bearer(tokens[Role.SENDER]))
    assert sender.status_code == 403 and "text/html" in sender.headers["content-type"]
    assert "the sender role may not see or do this" in sender.text
    nav = client.get("/dashboard", headers=bearer(tokens[Role.VIEWER])).text
    assert 'href="/dashboard/audit"' not in nav, "the navigation shows only what the role may open"
    assert client.get("/dashboard", headers=bearer("hf_unknown")).status_code == 401


def test_study_page_shows_completeness_path_jobs_and_pacs_links_and_no_patient_id(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    job = _routed_study(settings)
    client, _ = _app(settings, pacs_viewer_url="https://pacs.example.org/viewer?StudyInstanceUIDs={study_uid}")
    page = client.get(f"/dashboard/studies/{STUDY}", headers=bearer(tokens[Role.VIEWER])).text
    assert "routed" in page and "association-release" in page
    assert "study-complete" in page and "job-queued" in page
    assert f'href="/dashboard/jobs/{job.id}"' in page
    assert f'href="https://pacs.example.org/viewer?StudyInstanceUIDs={STUDY}"' in page
    assert ">P<" not in page and "Patient" not in page, "no patient ID is shown"
    correlation = study_correlation_id(STUDY, settings.log_correlation_key)
    assert f'<code id="correlation">{correlation}</code>' in page, "the id its log lines carry"
    plain, _ = _app(settings)
    assert "pacs.example.org" not in plain.get(f"/dashboard/studies/{STUDY}", headers=bearer(tokens[Role.VIEWER])).text


def test_what_the_database_holds_is_escaped(settings: Settings, tokens: dict[Role, str]) -> None:
    job = _routed_study(settings, error=HOSTILE)
    client, _ = _app(settings)
    for path in (f"/dashboard/jobs/{job.id}", "/dashboard/jobs", "/dashboard", f"/dashboard/studies/{STUDY}"):
        page = client.get(path, headers=bearer(tokens[Role.ADMIN])).text
        assert HOSTILE not in page, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page, path


def test_bad_input_gets_a_clear_4xx_page(settings: Settings, tokens: dict[Role, str]) -> None:
    client, _ = _app(settings)
    viewer = bearer(tokens[Role.VIEWER])
    cases = {
        "/dashboard/studies/not-a-uid": 422,
        "/dashboard/studies/1.2.3": 404,
        "/dashboard/jobs/0000": 404,
        "/dashboard/jobs/XYZ": 422,
        "/dashboard/studies?page=0": 422,
        "/dashboard/studies?size=100000": 422,
        "/dashboard/jobs?state=sleeping": 422,
        "/dashboard/deployments/NOPE": 422,
        "/dashboard/deployments/nope": 404,
        "/dashboard/no-such-page": 404,
    }
    for path, status in cases.items():
        answer = client.get(path, headers=viewer)
        assert answer.status_code == status, (path, answer.text)
        assert "text/html" in answer.headers["content-type"], path
        assert f"<h1>{status}</h1>" in answer.text, path
        assert "content-security-policy" in answer.headers
    assert "sleeping" not in client.get("/dashboard/jobs?state=sleeping", headers=viewer).text, "input not echoed"
    assert client.get("/studies/1.2.3", headers=viewer).headers["content-type"] == "application/json", "API unchanged"


def test_lists_are_paged_within_the_bounds(settings: Settings, tokens: dict[Role, str]) -> None:
    db = Database(settings.sqlalchemy_url)
    for i in range(5):
        index_series(db, f"{STUDY}.{i}", f"{STUDY}.{i}.1", 1)
    db.dispose()
    client, _ = _app(settings, page_size=2, max_page_size=3)
    viewer = bearer(tokens[Role.VIEWER])

    def shown(query: str) -> int:
        return client.get(f"/dashboard/studies{query}", headers=viewer).text.count('class="study"')

    assert shown("") == 2
    assert shown("?size=50") == 3, "a size beyond max_page_size is capped"
    assert shown("?page=2&size=3") == 2
    assert 'page=2&amp;size=2">Next' in client.get("/dashboard/studies", headers=viewer).text


def test_promote_and_rollback_need_the_api_roles_and_a_csrf_token_and_are_audited(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    client, _ = _app(settings)
    _sign_in(client, tokens[Role.VIEWER])
    csrf = _csrf(client, "/dashboard/deployments/ct-lesion-seg")
    promote = {"csrf": csrf, "reason": "tested", "to": "shadow"}
    assert client.post("/dashboard/deployments/ct-lesion-seg/promote", data=promote).status_code == 403  # viewer

    developer, _ = _app(settings)
    _sign_in(developer, tokens[Role.MODEL_DEVELOPER])
    page = developer.get("/dashboard/deployments/ct-lesion-seg").text
    assert "Promote to shadow" in page and "Roll back" not in page
    csrf = _csrf(developer, "/dashboard/deployments/ct-lesion-seg")
    before = _audit_actions(settings)
    for wrong in ("", "0" * 64, _csrf(client, "/dashboard")):  # none, made up, another session's
        answer = developer.post("/dashboard/deployments/ct-lesion-seg/promote", data={**promote, "csrf": wrong})
        assert answer.status_code in (403, 422), wrong
    assert _audit_actions(settings) == before, "a refused form changes nothing"
    answer = developer.post("/dashboard/deployments/ct-lesion-seg/promote", data={**promote, "csrf": csrf})
    assert answer.status_code == 303, answer.text
    page = developer.get("/dashboard/deployments/ct-lesion-seg").text
    assert 'id="stage"><span class="state state-shadow">shadow' in page
    clinical = {"csrf": csrf, "reason": "tested", "to": "clinical"}
    refused = developer.post("/dashboard/deployments/ct-lesion-seg/promote", data=clinical)
    assert refused.status_code == 403 and "needs the admin role" in refused.text
    assert developer.post("/dashboard/deployments/ct-lesion-seg/rollback", data=clinical).status_code == 403
    assert _audit_actions(settings)[0] == "deployment.promote"

    admin, _ = _app(settings)
    _sign_in(admin, tokens[Role.ADMIN])
    csrf = _csrf(admin, "/dashboard/deployments/ct-lesion-seg")
    answer = admin.post("/dashboard/deployments/ct-lesion-seg/rollback", data={"csrf": csrf, "reason": "undo"})
    assert answer.status_code == 303
    audit = admin.get("/dashboard/audit").text
    assert "deployment.rollback" in audit and "deployment.promote" in audit and "test-model-developer" in audit
    conflict = admin.post(
        "/dashboard/deployments/ct-lesion-seg/promote", data={"csrf": csrf, "reason": "x", "to": "clinical"}
    )
    assert conflict.status_code == 409 and "<h1>409</h1>" in conflict.text


def test_a_failed_job_is_retried_by_an_admin_and_audited(settings: Settings, tokens: dict[Role, str]) -> None:
    job = _routed_study(settings, error="pre-flight: no pixel data")
    client, queued = _app(settings)
    assert client.post(f"/jobs/{job.id}/retry", headers=bearer(tokens[Role.RADIOLOGIST])).status_code == 403
    radiologist, _ = _app(settings)
    _sign_in(radiologist, tokens[Role.RADIOLOGIST])
    assert "Retry this job" not in radiologist.get(f"/dashboard/jobs/{job.id}").text
    csrf = _csrf(radiologist, f"/dashboard/jobs/{job.id}")
    assert radiologist.post(f"/dashboard/jobs/{job.id}/retry", data={"csrf": csrf}).status_code == 403

    _sign_in(client, tokens[Role.ADMIN])
    page = client.get(f"/dashboard/jobs/{job.id}").text
    assert "Retry this job" in page and "pre-flight: no pixel data" in page and "0.250 s" in page
    csrf = _csrf(client, f"/dashboard/jobs/{job.id}")
    assert client.post(f"/dashboard/jobs/{job.id}/retry", data={"csrf": csrf}).status_code == 303
    assert [j.id for j in queued] == [job.id]
    assert client.get(f"/jobs/{job.id}", headers=bearer(tokens[Role.ADMIN])).json()["state"] == "queued"
    assert _audit_actions(settings)[0] == "job.retry"
    assert "job-retried" in client.get(f"/dashboard/studies/{STUDY}").text
    again = client.post(f"/dashboard/jobs/{job.id}/retry", data={"csrf": csrf})
    assert again.status_code == 409 and "(this one: queued)" in again.text
    assert client.post(f"/jobs/{job.id}/retry", headers=bearer(tokens[Role.ADMIN])).status_code == 409


def test_the_dashboard_can_be_switched_off(settings: Settings, tokens: dict[Role, str]) -> None:
    client, _ = _app(settings, enabled=False)
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard", headers=bearer(tokens[Role.ADMIN])).status_code == 404


def test_a_named_session_key_must_be_set(
    settings: Settings, tokens: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hounsfield.access import SignInImpossible

    with pytest.raises(SignInImpossible, match="HF_DASHBOARD_KEY is not set"):
        _app(settings, session_key_env="HF_DASHBOARD_KEY")
    monkeypatch.setenv("HF_DASHBOARD_KEY", "k" * 31)
    with pytest.raises(SignInImpossible, match="HF_DASHBOARD_KEY holds fewer than 32 characters"):
        _app(settings, session_key_env="HF_DASHBOARD_KEY")
    monkeypatch.setenv("HF_DASHBOARD_KEY", "k" * 32)
    first, _ = _app(settings, session_key_env="HF_DASHBOARD_KEY")
    _sign_in(first, tokens[Role.VIEWER])
    replica, _ = _app(settings, session_key_env="HF_DASHBOARD_KEY")
    replica.cookies.set(COOKIE, first.cookies[COOKIE])
    assert replica.get("/dashboard").status_code == 200, "replicas with one key share sessions"
    restarted, _ = _app(settings)  # a random key of its own
    restarted.cookies.set(COOKIE, first.cookies[COOKIE])
    assert restarted.get("/dashboard").status_code == 303, "another key: signed out"


def test_an_oidc_bearer_jwt_from_a_proxy_is_honoured_as_the_api_does(
    settings: Settings, provider: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    key, jwks = provider
    roles = {"rad": "radiologist", "ops": "admin"}
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": jwks, "roles": roles}
    configured = settings.model_validate(settings.model_dump() | {"registry": {"oidc": oidc}})
    client, _ = _app(configured)
    radiologist = bearer(_jwt(key, roles=["rad"]))
    page = client.get("/dashboard", headers=radiologist)
    assert page.status_code == 200 and "dr.who (radiologist)" in page.text
    assert client.get("/dashboard/audit", headers=radiologist).status_code == 403
    expired = bearer(_jwt(key, roles=["rad"], exp=int(time.time()) - 60))
    assert client.get("/dashboard", headers=expired).status_code == 401
    assert client.get("/dashboard", headers=bearer(_jwt(key, roles=["nurse"]))).status_code == 403

    admin = bearer(_jwt(key, sub="ops.lead", roles=["ops"]))
    form = {"csrf": _csrf_of(client, "/dashboard", radiologist), "reason": "tested", "to": "shadow"}
    refused = client.post("/dashboard/deployments/ct-lesion-seg/promote", data=form, headers=admin)
    assert refused.status_code == 403, "another subject's CSRF token"
    form["csrf"] = _csrf_of(client, "/dashboard", admin)
    answer = client.post("/dashboard/deployments/ct-lesion-seg/promote", data=form, headers=admin)
    assert answer.status_code == 303
    db = Database(configured.sqlalchemy_url)
    with db.session() as session:
        entry = list_audit(session, limit=1)[0]
        assert (entry.action, entry.actor, entry.via) == ("deployment.promote", "ops.lead", "oidc")
    db.dispose()


def _csrf_of(client: TestClient, path: str, headers: dict[str, str]) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path, headers=headers).text)
    assert found is not None
    return found.group(1)


def test_reads_are_logged_as_the_api_logs_them(
    settings: Settings, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    _routed_study(settings)
    client, _ = _app(settings)
    with caplog.at_level(logging.INFO, logger=READS_LOGGER):
        assert client.get(f"/dashboard/studies/{STUDY}", headers=bearer(tokens[Role.VIEWER])).status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if r.name == READS_LOGGER]
    assert line == "GET /dashboard/studies/{study_uid} read by test-viewer (viewer): 1 item(s)"


def test_dashboard_settings_refuse_a_bad_viewer_url_and_page_sizes() -> None:
    from pydantic import ValidationError

    from hounsfield.config import DashboardSettings

    with pytest.raises(ValidationError, match="http"):
        DashboardSettings(pacs_viewer_url="javascript:alert(1)//{study_uid}")
    with pytest.raises(ValidationError, match="unknown placeholder"):
        DashboardSettings(pacs_viewer_url="https://pacs/viewer?patient={patient_id}")
    with pytest.raises(ValidationError, match="must not exceed max_page_size"):
        DashboardSettings(page_size=150, max_page_size=100)
    with pytest.raises(ValidationError):
        DashboardSettings(max_page_size=501)
    url = "https://pacs/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"
    assert DashboardSettings(pacs_viewer_url=url).pacs_viewer_url == url


def test_results_feedback_and_models_pages_show_what_the_api_holds(settings: Settings, tokens: dict[Role, str]) -> None:
    declared = settings.deployments[0].model_copy(update={"model_name": "ct-lesion-seg"})
    settings = settings.model_copy(update={"deployments": [declared]})
    job = _routed_study(settings)
    db = Database(settings.sqlalchemy_url)
    seg_uid = f"{settings.uid_root}55.1"
    with db.session() as session:  # as the worker records a result and finishes its job
        record_result(
            session, job_id=job.id, kind="SEG", sop_class_uid=str(SegmentationStorage), sop_instance_uid=seg_uid,
            series_instance_uid=f"{settings.uid_root}55", path="/nonexistent/seg.dcm", summary={}, exported_to=["pacs"],
        )  # fmt: skip
        finish_job(session, job.id, JobState.DONE, {"inference": 1.5, "export": 0.25})
        filed = ModelCreate(
            name="ct-lesion-seg", display_name="CT lesions", intended_use="tests", use_cases=["scheduled"],
            modality="CT", regulatory_status=RegulatoryStatus.RESEARCH_ONLY, owner="tests",
        )  # fmt: skip
        create_model(session, TEST_PRINCIPAL, filed)
    radiologist = Principal("dr-one", Role.RADIOLOGIST, "token")
    give_feedback(settings, db, seg_uid, verdict="reject", reason="boundary", comment=HOSTILE, principal=radiologist)
    db.dispose()
    client, _ = _app(settings, pacs_viewer_url="https://pacs.example.org/v?s={study_uid}&i={sop_uid}")
    viewer = bearer(tokens[Role.VIEWER])

    results = client.get("/dashboard/results", headers=viewer).text
    assert seg_uid in results and f'href="https://pacs.example.org/v?s={STUDY}&amp;i={seg_uid}"' in results
    job_page = client.get(f"/dashboard/jobs/{job.id}", headers=viewer).text
    assert seg_uid in job_page and "1.500 s" in job_page and "Retry this job" not in job_page
    feedback = client.get("/dashboard/feedback", headers=viewer).text
    assert "<td>scheduled</td><td>ct-lesion-seg</td><td>1.0.0</td>" in feedback
    assert "boundary: 1" in feedback and ">0%<" in feedback and "dr-one" in feedback
    assert HOSTILE not in feedback and "&lt;script&gt;" in feedback
    models = client.get("/dashboard/models", headers=viewer).text
    assert "CT lesions" in models and 'href="/dashboard/deployments/ct-lesion-seg"' in models


def test_models_page_badges_each_deployed_versions_input_drift(settings: Settings, tokens: dict[Role, str]) -> None:
    declared = settings.deployments[0].model_copy(update={"model_name": "ct-lesion-seg", "model_version": "1.0.0"})
    settings = settings.model_copy(update={"deployments": [declared], "drift": SMALL_WINDOWS})
    db = Database(settings.sqlalchemy_url)
    prepare_database(db, settings)
    jobs = ProfiledJobs(settings, db, "ct-lesion-seg", "1.0.0")
    client, _ = _app(settings)
    viewer = bearer(tokens[Role.VIEWER])

    def badge() -> str:
        page = client.get("/dashboard/models", headers=viewer)
        assert page.status_code == 200, page.text
        found = re.search(r'<span class="drift drift-(\w+)"[^>]*>([^<]+)</span>( <small>([^<]*)</small>)?', page.text)
        assert found is not None, page.text
        return f"{found.group(1)}: {found.group(2)}" + (f" ({found.group(4)})" if found.group(4) else "")

    assert badge() == "not_enough_data: too few jobs"
    jobs.run(SMALL_WINDOWS.reference_jobs + SMALL_WINDOWS.window_jobs)
    assert badge() == "ok: no drift"
    jobs.run(SMALL_WINDOWS.window_jobs, slice_thickness_mm=(5.0,))
    assert badge() == "drifting: input drift (slice_thickness_mm)"
    db.dispose()


def test_retention_view_shows_the_disk_the_policy_what_a_purge_would_take_and_the_purges(
    settings: Settings, tokens: dict[Role, str]
) -> None:
    # Marks this machine's disk cannot pass (what the plan takes must not depend on how full it is).
    marks = {"high_water_percent": 100, "low_water_percent": 99, "floor_margin_mb": 0}
    retention = RetentionSettings(keep_days=1e-6, sources={"OTHER": 90}, **marks)
    settings = settings.model_copy(update={"retention": retention})
    job = _routed_study(settings)
    client, _ = _app(settings)
    assert client.get("/dashboard/retention").headers["location"] == "/dashboard/sign-in"
    viewer = bearer(tokens[Role.VIEWER])

    page = client.get("/dashboard/retention", headers=viewer)
    assert page.status_code == 200, page.text
    assert re.search(r'<meter id="used" min="0" max="100" low="99" high="100"', page.text)
    assert "<strong>off</strong>" in page.text and "<dt>source OTHER</dt><dd>90 days</dd>" in page.text
    assert "job active 1" in page.text, "a study with a queued job is never purged"
    assert f"/dashboard/studies/{STUDY}" not in page.text

    db = Database(settings.sqlalchemy_url)
    with db.session() as session:
        finish_job(session, job.id, JobState.DONE, {"inference": 1.0})
    time.sleep(0.2)  # its keep (1e-6 days: 86 ms) over
    page = client.get("/dashboard/retention", headers=viewer).text
    plan = page[page.index('id="plan"') : page.index('id="purges"')]
    assert f"/dashboard/studies/{STUDY}" in plan and "<td>expired</td>" in plan and "1e-06 (default)" in plan
    assert "None yet." in page, "a dry run deletes nothing"

    store = StudyStore(settings.data_dir)
    store.studies.mkdir(parents=True, exist_ok=True)  # the store is there (its rows here name no files)
    report = Purger(settings, db, store).purge()
    db.dispose()
    assert report.studies == {"expired": 1} and report.failures == 0
    page = client.get("/dashboard/retention", headers=viewer).text
    purges = page[page.index('id="purges"') :]
    assert f"/dashboard/studies/{STUDY}" in purges and "<td>expired</td>" in purges and "None yet." not in purges
    assert "Nothing." in page[page.index('id="plan"') : page.index('id="purges"')]
