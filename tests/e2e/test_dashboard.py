"""The dashboard in a browser: Debian's Chromium driven by Playwright, on a real registry.

A synthetic CT study goes through ``hounsfield up`` (listener, router, worker with the CT lesion
application, exporter to the test Orthanc); the registry it runs serves the dashboard. The test signs
in with the admin token the registry made at its start, clicks from the studies list into the study's
path (its completeness state, events, the job's per-stage timings and the results' links into the PACS
viewer), looks at the retention view and the models page's input-drift badge, then opens the
deployment, promotes it (research -> shadow) and sees the deployment page and the audit log show it.

Screenshots go to a temporary folder; ``UPDATE_DOCS_IMAGES=1`` also writes those docs/dashboard.md shows
(docs/images/dashboard-*.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from hounsfield.access import DEV_TOKEN_FILE
from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import HounsfieldStack
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack

REPO = Path(__file__).resolve().parents[2]
DOCS_IMAGES = REPO / "docs" / "images"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 30_000

if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is not installed ({CHROMIUM}; Debian package chromium, `make system-deps` installs it)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - after the skip: no Chromium, no need

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest
) -> Iterator[HounsfieldStack]:
    viewer = f"{pacs.url}/ui/app/#/filtered-studies?StudyInstanceUID={{study_uid}}"
    dashboard = {"pacs_viewer_url": viewer}
    # Marks this machine's disk cannot pass: what the retention view plans must not depend on how full it is.
    retention = {"retention": {"high_water_percent": 100, "low_water_percent": 99, "floor_margin_mb": 0}}
    with running_stack(tmp_path_factory, pacs, request, dashboard=dashboard, overrides=retention) as running:
        yield running


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        yield context.new_page()
        context.close()
        browser.close()


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        shutil.copyfile(path, DOCS_IMAGES / name)


def test_from_the_studies_list_to_a_study_path_then_a_promotion_in_the_audit_log(
    stack: HounsfieldStack, page: Page, tmp_path: Path
) -> None:
    phantom = make_phantom(515151, n_lesions=2)
    files = write_dicom_series(phantom, tmp_path / "ct", uid_seed="dashboard-515151")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    stack.send(files)
    (job,) = stack.wait_for_study(study_uid)["jobs"]
    assert job["state"] == "done", job["error"]
    token = (Path(stack.config["data_dir"]) / DEV_TOKEN_FILE).read_text(encoding="utf-8").strip()
    page.set_default_timeout(WAIT_MS)

    # sign in: the dashboard sends an unknown visitor to the form
    page.goto(f"{stack.api}/dashboard/studies")
    expect(page).to_have_url(f"{stack.api}/dashboard/sign-in")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    _screenshot(page, tmp_path, "dashboard-overview.png")

    # the studies list, then the study's path
    page.click("nav >> text=Studies")
    page.click(f"a.study >> text={study_uid}")
    expect(page.locator("#completeness")).to_contain_text("routed by association-release")
    events = page.locator("#events li .kind").all_inner_texts()
    assert events[0] == "study-complete" and "job-queued" in events and events[-1] == "job-done", events
    section = page.locator(f"#job-{job['id']}")
    expect(section).to_contain_text("done")
    for stage in ("completeness", "queue_wait", "load", "inference", "validate", "export"):
        expect(section.locator("dl.timings")).to_contain_text(stage)
    links = section.locator("a.pacs")
    assert links.count() == 2, "one PACS link per result (SEG, SR)"
    assert f"StudyInstanceUID={study_uid}" in (links.first.get_attribute("href") or "")
    expect(section.locator("table.results")).to_contain_text("pacs")  # where each result was sent
    _screenshot(page, tmp_path, "dashboard-study.png")

    # the retention view: the study is within its keep (retention is off by default), nothing to purge
    page.click("nav >> text=Retention")
    expect(page.locator("#policy")).to_contain_text("off")
    expect(page.locator("#policy")).to_contain_text("kept 30 days after their last job ended")
    expect(page.locator("#plan")).to_contain_text("Nothing.")
    assert 0 < float(page.locator("meter#used").get_attribute("value") or "nan") <= 100
    _screenshot(page, tmp_path, "dashboard-retention.png")

    # models and deployments by use case, each version with its input-drift badge (one job: too few)
    page.click("nav >> text=Models")
    expect(page.locator("span.drift")).to_have_text("too few jobs")
    _screenshot(page, tmp_path, "dashboard-models.png")
    page.click("a.deployment >> text=ct-lesion-seg")
    expect(page.locator("#stage")).to_have_text("research")
    form = page.locator("form.action", has=page.locator("button[value=shadow]"))
    form.locator("input[name=reason]").fill("second look in shadow before the audit")
    form.locator("button[value=shadow]").click()
    expect(page.locator("#stage")).to_have_text("shadow")
    expect(page.locator("#transitions tr").nth(1)).to_contain_text("second look in shadow before the audit")
    _screenshot(page, tmp_path, "dashboard-deployment.png")

    page.click("nav >> text=Audit log")
    first = page.locator("#audit tr").nth(1)
    expect(first.locator("td.action")).to_have_text("deployment.promote")
    expect(first).to_contain_text("development-admin")
    expect(first).to_contain_text('"stage": "shadow"')
    _screenshot(page, tmp_path, "dashboard-audit.png")
