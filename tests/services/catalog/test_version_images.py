"""A model version records the MAP image it was published as, pinned by digest, on SQLite and PostgreSQL.

Through the catalog's API (the same app and tokens as test_models.py): registration with and without an
image, references that are not pinned by digest refused with 422, the image kept by an immutable
published version (another image is a conflict, like other content), audited; and the read model's
deployments running their version's image when they name none of their own.
"""

from __future__ import annotations

from typing import Any

import pytest

from hounsfield.access import Role
from hounsfield.catalog.read_model import get_spec
from hounsfield.db.deployments import Deployment, RoutingRule, Stage
from tests.services.catalog.test_models import Api, _audit, _model, _version
from tests.services.catalog.test_models import api as api  # the fixture

IMAGE = "registry.example.org:5000/maps/ct-lesion-seg@sha256:" + "ab" * 32
OTHER = "registry.example.org:5000/maps/ct-lesion-seg@sha256:" + "cd" * 32


def _register(api: Api, version: str = "1.0.0", **extra: Any) -> Any:
    return api.post("/models/head-ct-bleed/versions", _version(version, **extra), role=Role.MODEL_DEVELOPER)


def test_a_version_is_registered_with_its_image_and_without(api: Api) -> None:
    api.post("/models", _model())
    with_image = _register(api, "1.0.0", image=IMAGE)
    assert with_image.status_code == 201, with_image.text
    assert with_image.json()["image"] == IMAGE
    assert api.get("/models/head-ct-bleed/versions/1.0.0").json()["image"] == IMAGE
    without = _register(api, "1.1.0")
    assert without.status_code == 201 and without.json()["image"] is None
    (created, _) = _audit(api.db, "model_version.create")
    assert created.after is not None and created.after["image"] == IMAGE
    # The image is not part of the content digest: the same manifests give the same digest either way.
    assert with_image.json()["content_digest"] == without.json()["content_digest"]


@pytest.mark.parametrize(
    "image",
    [
        "localhost/maps/ct-lesion-seg",  # not pinned
        "localhost/maps/ct-lesion-seg:1.0.0",  # a tag moves
        "localhost/maps/ct-lesion-seg@sha256:" + "ab" * 31,  # 62 hex digits
        "localhost/maps/ct-lesion-seg@sha256:" + "AB" * 32,  # upper case
        "localhost/maps/ct-lesion-seg@md5:" + "ab" * 16,
        "localhost/Maps/ct-lesion-seg@sha256:" + "ab" * 32,  # upper case in the repository
        "@sha256:" + "ab" * 32,
        "localhost/maps ct@sha256:" + "ab" * 32,
        "",
    ],
)
def test_an_image_not_pinned_by_digest_is_422_naming_the_field(api: Api, image: str) -> None:
    api.post("/models", _model())
    answer = _register(api, image=image)
    assert answer.status_code == 422, answer.text
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == ["body", "image"]
    assert api.get("/models/head-ct-bleed/versions").json() == []


@pytest.mark.parametrize(
    "image",
    [
        "ct-lesion-seg@sha256:" + "0" * 64,
        "localhost/hounsfield-map-ct-lesion-seg@sha256:" + "0" * 64,
        "registry.example.org/a/b/c:1.0.0-rc.1@sha256:" + "0" * 64,  # a tag beside the digest documents it
        "my-registry.local:5000/x__y.z-w@sha256:" + "0" * 64,
    ],
)
def test_references_pinned_by_digest_are_accepted(api: Api, image: str) -> None:
    api.post("/models", _model())
    answer = _register(api, image=image)
    assert answer.status_code == 201, answer.text
    assert answer.json()["image"] == image


def test_a_published_version_keeps_its_image(api: Api) -> None:
    api.post("/models", _model())
    first = _register(api, image=IMAGE).json()
    same = _register(api, image=IMAGE)
    assert same.status_code == 200 and same.json() == first
    for image in (OTHER, None):  # another image, or none where there was one
        changed = _register(api, **({"image": image} if image else {}))
        assert changed.status_code == 409, changed.text
        assert "immutable" in changed.json()["detail"] and IMAGE in changed.json()["detail"]
    assert api.get("/models/head-ct-bleed/versions/1.0.0").json() == first
    _register(api, "2.0.0")
    added = _register(api, "2.0.0", image=IMAGE)  # one where there was none
    assert added.status_code == 409 and "(none)" in added.json()["detail"]
    assert len(_audit(api.db, "model_version.create")) == 2 and _audit(api.db, "model_version.replace") == []


def test_a_draft_takes_a_new_image_audited_then_keeps_it_once_published(api: Api) -> None:
    api.post("/models", _model())
    draft = _register(api, image=IMAGE, published=False).json()
    replaced = _register(api, image=OTHER, published=False)
    assert replaced.status_code == 200 and replaced.json()["image"] == OTHER
    assert replaced.json()["device_uid"] == draft["device_uid"]  # the same content: the same device
    (replace,) = _audit(api.db, "model_version.replace")
    assert replace.before is not None and replace.before["image"] == IMAGE
    assert replace.after is not None and replace.after["image"] == OTHER
    published = _register(api, image=OTHER)
    assert published.status_code == 200 and published.json()["published"] is True
    assert _register(api, image=IMAGE).status_code == 409


def _deployment(api: Api, name: str, version: str, image: str | None) -> None:
    version_id = api.get(f"/models/head-ct-bleed/versions/{version}").json()["id"]
    with api.db.session() as session:
        if session.get(RoutingRule, "ct") is None:
            session.add(RoutingRule(name="ct", definition={"kind": "modality", "in": ["CT"]}))
            session.flush()
        session.add(
            Deployment(
                name=name, model_name="head-ct-bleed", model_version=version, model_version_id=version_id,
                rule_name="ct", app="mypkg.app:App", model_path="/opt/holoscan/models", stage=Stage.DRAFT,
                image=image,
            )
        )  # fmt: skip


def test_a_deployment_naming_no_image_runs_its_versions_image(api: Api) -> None:
    api.post("/models", _model())
    _register(api, "1.0.0", image=IMAGE)
    _register(api, "1.1.0")
    own = "localhost/hounsfield-map-head-ct@sha256:" + "ef" * 32
    _deployment(api, "falls-back", "1.0.0", None)
    _deployment(api, "names-its-own", "1.0.0", own)
    _deployment(api, "neither", "1.1.0", None)
    with api.db.session() as session:
        images = {name: spec.image for name in ("falls-back", "names-its-own", "neither")
                  if (spec := get_spec(session, name)) is not None}  # fmt: skip
    assert images == {"falls-back": IMAGE, "names-its-own": own, "neither": None}
