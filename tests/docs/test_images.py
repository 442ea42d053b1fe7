"""The documents' pictures: every image a document shows exists, and every picture in docs/images is shown.

docs/images/ohif-lesion-result.png is OHIF showing the demo study's SEG and SR; tests/viewer/test_ohif.py
makes it (``UPDATE_DOCS_IMAGES=1`` writes it here) and docs/radiologists.md shows it; the dashboard's pages
(docs/images/dashboard-*.png) come from tests/e2e/test_dashboard.py the same way, and docs/dashboard.md shows them.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "images"
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)


def _documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _shown() -> dict[Path, list[Path]]:
    """Each local image a document shows (resolved from the document's folder) -> the documents."""
    shown: dict[Path, list[Path]] = {}
    for document in _documents():
        text = document.read_text(encoding="utf-8")
        for target in _MARKDOWN_IMAGE.findall(text) + _HTML_IMAGE.findall(text):
            if re.match(r"^[a-z]+:", target):  # https:, data:
                continue
            path = (document.parent / target.split("#", 1)[0]).resolve()
            shown.setdefault(path, []).append(document)
    return shown


def test_every_image_a_document_shows_exists() -> None:
    missing = {str(path.relative_to(REPO)): [str(d.relative_to(REPO)) for d in docs] for path, docs in _shown().items()}
    missing = {path: docs for path, docs in missing.items() if not (REPO / path).is_file()}
    assert missing == {}


def test_every_picture_in_docs_images_is_shown() -> None:
    pictures = sorted(p.resolve() for p in IMAGES.iterdir() if p.is_file()) if IMAGES.is_dir() else []
    assert pictures, "docs/images has no pictures"
    assert [str(p.relative_to(REPO)) for p in pictures if p not in _shown()] == []


def test_the_viewer_picture_is_small() -> None:
    picture = IMAGES / "ohif-lesion-result.png"
    assert picture.is_file()
    assert picture.stat().st_size < 300_000


def test_the_dashboard_pictures_are_there_and_small() -> None:
    pictures = sorted(IMAGES.glob("dashboard-*.png"))
    assert [p.name for p in pictures] == [
        "dashboard-audit.png", "dashboard-deployment.png", "dashboard-models.png", "dashboard-overview.png",
        "dashboard-retention.png", "dashboard-study.png",
    ]  # fmt: skip
    assert all(p.stat().st_size < 300_000 for p in pictures)
