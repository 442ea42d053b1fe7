"""A real viewer on a job's results: OHIF 3.13.2 in Chromium, over the test Orthanc's DICOMweb.

A synthetic CT study goes through ``hounsfield up`` (the CT lesion application); its SEG and SR reach
Orthanc, and the CT itself is stored there as the modality would. OHIF's prebuilt ``dist`` (npm, sha512
pinned; :mod:`hounsfield.demo.viewer`) is served on one origin with Orthanc's DICOMweb, and Playwright
drives Debian's Chromium (WebGL through SwiftShader; no GPU). The tests open the study as a radiologist
would (double-clicking the series in the study browser) and check in the page:

* the SEG: its segments listed in the segmentation panel with the SEG's labels, in the SEG's colours,
  and drawn: each segment's colour is on the canvas at its centre slice and goes when it is hidden;
* the SR: one measurement per lesion, each long axis with the SR's value, drawn where the SR says: the
  line on the screen, mapped back through the viewer's geometry, has the SR's length and end points.

Screenshots go to a temporary folder (printed). ``UPDATE_DOCS_IMAGES=1`` also writes the one that
docs/ shows (docs/images/ohif-lesion-result.png).
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from hounsfield.demo.findings import lesion_findings
from hounsfield.demo.orthanc import DICOMWEB_PLUGIN, LocalOrthanc
from hounsfield.demo.run import DEMO_SEED
from hounsfield.demo.viewer import ViewerServer, ensure_ohif
from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series
from tests.e2e.conftest import running_stack

REPO = Path(__file__).resolve().parents[2]
DOCS_IMAGE = REPO / "docs" / "images" / "ohif-lesion-result.png"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
WAIT_MS = 60_000
SEGMENTATION_PANEL = "@ohif/extension-cornerstone.panelModule.panelSegmentation"

if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is not installed ({CHROMIUM}; Debian package chromium, `make system-deps` installs it)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402 - after the skip: no Chromium, no need
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402

pytestmark = pytest.mark.e2e


@dataclass
class Results:
    """A finished job's study in the PACS: what the viewer should show."""

    study_uid: str
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    findings: list[dict[str, Any]]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail(f"no Orthanc DICOMweb plugin at {DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="TESTPACS", dicomweb=True)
    orthanc.start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest) -> Results:
    """One CT study through ``hounsfield up``; the CT stored in the PACS too, as the modality would."""
    phantom = make_phantom(DEMO_SEED, n_lesions=2)  # the demo's study: docs/ shows its picture
    files = write_dicom_series(phantom, tmp_path_factory.mktemp("ct"), uid_seed="viewer-test")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with running_stack(tmp_path_factory, pacs, request) as stack:
        stack.send(files)
        study = stack.wait_for_study(study_uid)
    (job,) = study["jobs"]
    assert job["state"] == "done", job["error"]
    with httpx.Client(base_url=pacs.url, timeout=30) as orthanc:
        for path in files:
            orthanc.post("/instances", content=path.read_bytes()).raise_for_status()
        objects = {}
        for result in job["results"]:
            (found,) = orthanc.post("/tools/lookup", content=result["sop_instance_uid"]).raise_for_status().json()
            data = orthanc.get(f"/instances/{found['ID']}/file").raise_for_status().content
            objects[result["kind"]] = pydicom.dcmread(io.BytesIO(data))
    sr = objects["SR"]
    return Results(study_uid, objects["SEG"], sr, lesion_findings(sr))


@pytest.fixture(scope="module")
def viewer(pacs: LocalOrthanc) -> Iterator[ViewerServer]:
    with ViewerServer(ensure_ohif(), pacs.url) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ohif-screenshots")
    print(f"\nOHIF screenshots: {folder}")
    return folder


@pytest.fixture
def page(browser: Browser, viewer: ViewerServer, results: Results) -> Iterator[Page]:
    """OHIF opened on the study (its own tab: each test starts from the study's first view)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(viewer.study_url(results.study_uid), wait_until="domcontentloaded")
    tab.wait_for_function(
        """() => { const s = window.services; if (!s) return false;
             const modalities = s.displaySetService.getActiveDisplaySets().map(d => d.Modality);
             return ['CT', 'SEG', 'SR'].every(m => modalities.includes(m)); }""",
        timeout=WAIT_MS,
    )
    yield tab
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def _open_series(page: Page, modality: str) -> None:
    """Double-click the series in the study browser, as a reader would."""
    page.locator('[data-cy="study-browser-thumbnail-no-image"]', has_text=modality).first.dblclick()


def _open_segmentation(page: Page) -> None:
    if page.evaluate("() => window.services.segmentationService.getSegmentations().length") == 0:
        _open_series(page, "SEG")
        page.get_by_role("button", name="Yes").click(timeout=WAIT_MS)  # "Do you want to open this Segmentation?"
        page.wait_for_function(
            "() => window.services.segmentationService.getSegmentations().length === 1", timeout=WAIT_MS
        )
    # The segmentation panel, opened (its button would toggle it; a slow render could read as closed).
    page.evaluate("(id) => window.services.panelService.activatePanel(id, true)", SEGMENTATION_PANEL)
    page.locator('[data-cy="data-row-title"]').first.wait_for(timeout=WAIT_MS)


def _open_report(page: Page) -> None:
    _open_series(page, "SR")
    page.wait_for_function(
        """() => { const sr = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR');
             return sr && sr.isLoaded && sr.measurements.length > 0; }""",
        timeout=WAIT_MS,
    )


def _viewport_pixels(page: Page, path: Path) -> np.ndarray:
    """The viewport as RGB pixels (CSS pixel coordinates of its canvas), the pointer moved off it first."""
    page.mouse.move(2, 898)
    time.sleep(1.0)  # a render frame or two after the last change (SwiftShader)
    data = page.locator(".cornerstone-canvas").first.screenshot(path=str(path))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _near(pixels: np.ndarray, rgb: tuple[int, int, int] | list[int], tolerance: int = 60) -> np.ndarray:
    return np.abs(pixels - np.array(rgb[:3])).sum(axis=-1) < tolerance


def _seg_segments(seg: pydicom.Dataset) -> list[tuple[int, str, tuple[int, int, int]]]:
    return sorted(
        (
            int(item.SegmentNumber),
            str(item.SegmentLabel),
            hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb(clip=True),
        )
        for item in seg.SegmentSequence
    )


def test_the_seg_segments_are_listed_and_drawn(page: Page, results: Results, screenshots: Path) -> None:
    expected = _seg_segments(results.seg)
    _open_segmentation(page)

    # Listed: the segmentation panel's rows are the SEG's segment labels, in segment-number order.
    assert page.locator('[data-cy="data-row-title"]').all_inner_texts() == [label for _, label, _ in expected]
    shown = page.evaluate(
        """() => { const s = window.services.segmentationService; const g = s.getSegmentations()[0];
             const rep = s.getSegmentationRepresentations('default')[0];
             return Object.values(g.segments).filter(Boolean).map(x => ({
               index: x.segmentIndex, label: x.label, color: rep.segments[x.segmentIndex].color })); }"""
    )
    assert [(x["index"], x["label"]) for x in shown] == [(number, label) for number, label, _ in expected]
    # In the SEG's recommended display colours.
    for item, (_, label, rgb) in zip(shown, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(item["color"][:3], rgb, strict=True)) <= 3, (label, item["color"], rgb)
    volumes = {f["segment_number"]: f["measurements"][_name(f, "volume")]["value"] for f in results.findings}

    # Drawn: at each segment's centre (a click on its row jumps there), the segment's colour is on the
    # canvas where hiding the segmentation changes the picture, and none of it is once it is hidden.
    for (number, label, _), item in zip(expected, shown, strict=True):
        page.locator('[data-cy="data-row-title"]', has_text=re.compile(f"^{re.escape(label)}$")).click()
        # The viewer's own statistics of the segment's voxels: the SR's volume (inferred from the segment).
        volume_mm3 = page.wait_for_function(
            """(index) => { const g = window.services.segmentationService.getSegmentations()[0];
                 return g.segments[index].cachedStats?.namedStats?.volume?.value; }""",
            arg=number,
            timeout=WAIT_MS,
        ).json_value()
        assert volume_mm3 / 1000 == pytest.approx(volumes[number], rel=0.01), label
        visible = _viewport_pixels(page, screenshots / f"seg-{number}-visible.png")
        _set_segmentation_visible(page, False)
        hidden = _viewport_pixels(page, screenshots / f"seg-{number}-hidden.png")
        _set_segmentation_visible(page, True)
        changed = np.abs(visible - hidden).sum(axis=-1) > 30
        coloured = int((changed & _near(visible, item["color"])).sum())
        print(f"{label}: {coloured} pixels of its colour drawn at its centre")
        assert coloured >= 50, f"{label}: {coloured} pixels of its colour {item['color']} drawn"
        assert int((changed & _near(hidden, item["color"])).sum()) == 0, f"{label} still drawn when hidden"


def _set_segmentation_visible(page: Page, visible: bool) -> None:
    page.evaluate(
        """(visible) => { const s = window.services.segmentationService; const g = s.getSegmentations()[0];
             for (const x of Object.values(g.segments).filter(Boolean))
               s.setSegmentVisibility('default', g.segmentationId, x.segmentIndex, visible); }""",
        visible,
    )


def _name(finding: dict[str, Any], word: str) -> str:
    (name,) = [n for n in finding["measurements"] if word in n.lower()]
    return name


def _long_axes(sr: pydicom.Dataset) -> dict[str, tuple[float, str | None]]:
    """Tracking UID -> (the long axis in mm, the SOP Instance UID of the image its SCOORD is on, if any)."""
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    axes = {}
    for group in measurements.ContentSequence:  # TID 1501: one per lesion
        items = group.ContentSequence
        (uid,) = [str(i.UID) for i in items if i.ValueType == "UIDREF"]  # Tracking Unique Identifier
        for num in [i for i in items if i.ValueType == "NUM"]:
            if num.ConceptNameCodeSequence[0].CodeMeaning != "Long axis":
                continue
            scoords = [i for i in num.get("ContentSequence", []) if i.ValueType == "SCOORD"]
            images = [i for s in scoords for i in s.ContentSequence if i.ValueType == "IMAGE"]
            sop = str(images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if images else None
            axes[uid] = (float(num.MeasuredValueSequence[0].NumericValue), sop)
    return axes


_DRAWN_MEASUREMENT = """() => {
  const svg = document.querySelector('svg.svg-layer');
  const line = svg.querySelector('line[stroke-dasharray="4,4"]');  // the SR's line (its label's leader: 2,3)
  const label = svg.querySelector('g[data-annotation-uid]');
  const uid = label.getAttribute('data-annotation-uid');  // OHIF: the SR's Tracking Unique Identifier
  const viewport = window.cornerstone.getEnabledElements()[0].viewport;
  const ends = [[line.x1.baseVal.value, line.y1.baseVal.value], [line.x2.baseVal.value, line.y2.baseVal.value]];
  const points = window.cornerstoneTools.annotation.state.getAnnotation(uid).data.handles.points;
  return {
    uid, text: label.textContent, stroke: line.getAttribute('stroke'), ends,
    world: ends.map(p => viewport.canvasToWorld(p)), annotation: points,
    annotationOnCanvas: points.map(p => viewport.worldToCanvas(p)), imageId: viewport.getCurrentImageId(),
  };
}"""
"""The measurement the SR viewport shows: its line on the screen, its label, its points, the image."""


def test_the_sr_measurements_are_listed_and_drawn(page: Page, results: Results, screenshots: Path) -> None:
    axes = _long_axes(results.sr)
    assert len(axes) == len(results.findings) >= 1
    _open_report(page)

    # Listed: OHIF's reading of the SR has one measurement per lesion, each its long axis with the SR's value.
    listed = page.evaluate(
        """() => window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR')
             .measurements.map(m => ({uid: m.TrackingUniqueIdentifier, name: m.TrackingIdentifier,
                                     labels: m.labels, sop: m.ReferencedSOPInstanceUID}))"""
    )
    assert sorted(m["uid"] for m in listed) == sorted(axes)
    assert sorted(m["name"] for m in listed) == sorted(f["tracking_identifier"] for f in results.findings)
    for item in listed:
        value, sop = axes[item["uid"]]
        labels = {x["label"]: x["value"] for x in item["labels"]}
        assert "Long axis" in labels, f"{item['name']}: OHIF lists {item['labels']}"
        assert float(labels["Long axis"].removesuffix(" mm")) == pytest.approx(value, abs=0.006), item["name"]
        assert item["sop"] == sop

    # Drawn: the viewport steps through the measurements (its arrows); each is shown on the SR's image with
    # its value, and the line on the screen, mapped back through the viewer's geometry, is the SR's line.
    seen = set()
    for step in range(len(axes)):
        if step:
            page.locator('[data-cy="viewport-action-arrows-right"]').click()
        try:
            page.wait_for_function(
                "() => document.querySelectorAll('svg.svg-layer line[stroke-dasharray=\"4,4\"]').length === 1",
                timeout=WAIT_MS // 2,
            )
        except PlaywrightTimeoutError:
            _viewport_pixels(page, screenshots / f"sr-{step + 1}.png")
            pytest.fail(f"measurement {step + 1} of {len(axes)}: the SR viewport draws no line")
        pixels = _viewport_pixels(page, screenshots / f"sr-{step + 1}.png")
        drawn = page.evaluate(_DRAWN_MEASUREMENT)
        value, sop = axes[drawn["uid"]]
        seen.add(drawn["uid"])
        assert drawn["text"] == f"Long axis: {value:.2f} mm"
        assert f"/instances/{sop}/" in drawn["imageId"], "not on the SR's image"
        assert math.dist(*drawn["annotation"]) == pytest.approx(value, abs=0.01)
        for end, expected_end in zip(drawn["ends"], drawn["annotationOnCanvas"], strict=True):
            assert math.dist(end, expected_end) < 1.0
        assert math.dist(*drawn["world"]) == pytest.approx(value, abs=0.1)
        stroke = [int(v) for v in re.findall(r"\d+", drawn["stroke"])]
        on_line = _samples_on(pixels, drawn["ends"], stroke)
        print(f"{drawn['text']}: {on_line:.0%} of the points along the line have its colour")
        assert on_line >= 0.3, f"{drawn['text']}: {on_line:.0%} of the line's points have its colour {stroke}"
    assert seen == set(axes)


def _samples_on(pixels: np.ndarray, ends: list[list[float]], rgb: list[int]) -> float:
    """The share of points along the segment (dashed: about half drawn) with a pixel of ``rgb`` within 1 px."""
    (x1, y1), (x2, y2) = ends
    n = max(int(math.dist((x1, y1), (x2, y2))), 2)
    mask = _near(pixels, rgb, 90)
    hits = 0
    for t in np.linspace(0.05, 0.95, n):
        x, y = round(x1 + t * (x2 - x1)), round(y1 + t * (y2 - y1))
        hits += bool(mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any())
    return hits / n


def test_a_screenshot_shows_segments_and_long_axis(page: Page, results: Results, screenshots: Path) -> None:
    """The picture docs/ shows: the SR's first lesion with its long axis, the segments over the CT, the list."""
    _open_segmentation(page)
    _open_report(page)
    page.locator("svg.svg-layer text").first.wait_for(timeout=WAIT_MS)  # the SR's viewport is up
    page.evaluate(
        """() => { const s = window.services.segmentationService; const g = s.getSegmentations()[0];
             s.addSegmentationRepresentation('default', { segmentationId: g.segmentationId }); }"""
    )
    _open_segmentation(page)  # the panel again (the SR's viewport replaced the CT's)
    page.mouse.move(2, 898)
    time.sleep(1.5)
    picture = screenshots / "ohif-lesion-result.png"
    full = np.asarray(Image.open(io.BytesIO(page.screenshot(path=picture))).convert("RGB")).astype(int)
    for rgb in [x[2] for x in _seg_segments(results.seg)] + [(0, 255, 0)]:  # the segments, the long axis
        assert int(_near(full, rgb).sum()) >= 30, f"{rgb} is not in the picture"
    assert (page.locator("svg.svg-layer text").first.text_content() or "").startswith("Long axis: ")
    assert picture.stat().st_size < 300_000
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, DOCS_IMAGE)
