"""docs/radiologists.md says what the code does: its rejection reasons are the registry's, its limit the
setting's default, its routes the API's (its picture is held by the documents' image test)."""

from __future__ import annotations

import re

from hounsfield.config import FeedbackSettings
from hounsfield.feedback import REJECTION_REASONS
from tests.support import REPO

GUIDE = REPO / "docs" / "radiologists.md"


def test_the_reasons_table_is_the_registrys() -> None:
    rows = re.findall(r"^\| `([a-z-]+)` \| (.+) \|$", GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert rows, "the reasons table is gone"
    assert dict(rows) == REJECTION_REASONS and [name for name, _ in rows] == list(REJECTION_REASONS)


def test_the_limits_and_routes_it_names_exist() -> None:
    from hounsfield.cli.feedback import feedback
    from hounsfield.registry.feedback_api import router

    text = GUIDE.read_text(encoding="utf-8")
    assert f"`feedback.max_comment_chars`, {FeedbackSettings().max_comment_chars} characters by default" in text
    routes = {(method, route.path) for route in router.routes for method in getattr(route, "methods", ())}
    assert ("POST", "/results/{reference}/feedback") in routes and "/results/1.2.826" in text
    assert ("GET", "/feedback/summary") in routes and ("GET", "/feedback") in routes
    assert {c.name for c in feedback.registered_commands} >= {"summary", "give"}
