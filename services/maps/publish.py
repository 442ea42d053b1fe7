"""``hounsfield map publish``: a MAP's version registered in the registry, with the image pinned by digest.

Through the registry's API, as a model developer (a token with the ``model-developer`` or ``admin``
role): ``POST /models/{name}/versions`` with the MAP's manifests, its models' digest, the content digest
(which the registry recomputes and compares), and the image as ``name@sha256:...``. A MAP image's
manifests and models are read out of the image (nothing in it runs), and its content-digest label, written
by ``hounsfield map package``, must agree with what was read. An application folder is registered with
``--image`` (the image built from it: its label must match the folder's content) or without an image.
The model must exist in the catalog; ``card`` (a model card, the fields of ``POST /models``) files it first.

The token goes only to an ``https://`` registry, or over plain http to this host's loopback.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from hounsfield import containers
from hounsfield.catalog.manifests import LoadedMap, load_map
from hounsfield.config import is_loopback_host
from hounsfield.errors import HounsfieldError, Invalid
from hounsfield.maps.package import lay_out

__all__ = ["PublishFailed", "Published", "publish"]

CONTENT_LABEL = "org.monai.deploy.map.content-digest"


class PublishFailed(HounsfieldError):
    """The registry refused the version, or could not be reached; the message is its answer."""


@dataclass(frozen=True)
class Published:
    model: str
    version: str
    image: str | None
    content_digest: str
    device_uid: str
    created: bool


def _labels(image: str) -> dict[str, str]:
    argv = [containers.engine(), "image", "inspect", "--format", "{{json .Labels}}", image]
    return json.loads(containers.run(argv, capture=True) or "{}") or {}


def _pinned(image: str) -> str:
    """``name@sha256:...`` for a local image (its own digest), or the reference itself when it is pinned."""
    if "@sha256:" in image:
        return image
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{repository}@{containers.image_digest(image)}"


def _from_image(image: str, scratch: Path) -> LoadedMap:
    if not containers.image_exists(image):
        raise Invalid("image", f"{image} is not here (`podman pull` or `podman load` it first)")
    containers.extract(image, ["/etc/holoscan/app.json", "/etc/holoscan/pkg.json"], scratch)
    loaded = load_map(scratch)
    model_root = loaded.manifests.pkg.model_root
    containers.extract(image, [model_root.rstrip("/")], scratch)
    return load_map(scratch)


def _check_label(image: str, loaded: LoadedMap) -> None:
    label = _labels(image).get(CONTENT_LABEL)
    if label is None:
        raise Invalid("image", f"{image} has no {CONTENT_LABEL} label: build it with `hounsfield map package`")
    if label != loaded.content_digest:
        raise Invalid(
            "image",
            f"{image} was built from other content ({label}) than this MAP's ({loaded.content_digest}): "
            "package it again",
        )


def _safe_url(url: str, allow_insecure_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url.rstrip("/")
    if parts.scheme != "http":
        raise Invalid("registry", f"{url} is not an http(s) URL")
    if not is_loopback_host(parts.hostname or "") and not allow_insecure_http:
        raise Invalid("registry", f"{url}: a token is sent only over https (or to this host's loopback)")
    return url.rstrip("/")


def _answer(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def publish(
    target: str,
    *,
    model: str,
    registry: str,
    token: str,
    image: str | None = None,
    card: dict[str, Any] | None = None,
    draft: bool = False,
    allow_insecure_http: bool = False,
    timeout_s: float = 60.0,
) -> Published:
    """Register ``target`` (a MAP image, or an application folder with an optional ``image``) as a version of
    ``model``; see the module docstring. :class:`PublishFailed` with the registry's answer when refused."""
    base = _safe_url(registry, allow_insecure_http)
    folder = Path(target)
    with tempfile.TemporaryDirectory(prefix="hounsfield-publish-") as scratch:
        if folder.is_dir():
            loaded = load_map(folder) if image is None else lay_out(folder, Path(scratch) / "layout")
            if image is not None:
                _check_label(image, loaded)
        else:
            if image is not None:
                raise Invalid("image", "give --image only with an application folder")
            image = target
            loaded = _from_image(image, Path(scratch))
            _check_label(image, loaded)
        pinned = _pinned(image) if image is not None else None
    manifests = loaded.manifests
    body: dict[str, Any] = {
        "version": str(manifests.pkg.version),
        "app": manifests.app_raw,
        "pkg": manifests.pkg_raw,
        "models_digest": loaded.models_digest,
        "content_digest": loaded.content_digest,
        "published": not draft,
    }
    if pinned is not None:
        body["image"] = pinned
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout_s) as client:
            found = client.get(f"/models/{model}")
            if found.status_code == 404:
                if card is None:
                    raise PublishFailed(
                        f"model {model!r} is not in the catalog: give its model card (--card) to file it first"
                    )
                created = client.post("/models", json={**card, "name": model})
                if created.status_code != 201:
                    raise PublishFailed(f"filing model {model!r}: {created.status_code} {_answer(created)}")
            elif found.status_code != 200:
                raise PublishFailed(f"reading model {model!r}: {found.status_code} {_answer(found)}")
            response = client.post(f"/models/{model}/versions", json=body)
    except httpx.HTTPError as exc:
        raise PublishFailed(f"the registry at {base} cannot be reached: {exc}") from None
    if response.status_code not in (200, 201):
        raise PublishFailed(f"{response.status_code} {_answer(response)}")
    version = response.json()
    return Published(
        model=model,
        version=version["version"],
        image=version.get("image"),
        content_digest=version["content_digest"],
        device_uid=version["device_uid"],
        created=response.status_code == 201,
    )
