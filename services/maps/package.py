"""``hounsfield map package``: an application folder built into a MAP, an OCI image with the spec's layout.

The image (MAP spec 1.0) holds:

- ``/etc/holoscan/app.json``, ``/etc/holoscan/pkg.json`` (the manifests as written), ``app.yaml`` at
  ``/var/holoscan/app.yaml`` (``HOLOSCAN_CONFIG_PATH``) and ``/etc/holoscan/app.yaml``;
- ``/opt/holoscan/app/``: the application's code (the folder without ``models/``, ``tests/`` and caches);
- ``/opt/holoscan/models/<name>/`` for each ``pkg.json#models`` entry (from ``models/<name>/``, or from
  ``models/`` itself for a single model);
- ``/opt/holoscan/docs/``: the README;
- ``/var/holoscan/{input,output,work,logs}``: where a host mounts a job's folders;
- labels: ``org.opencontainers.image.*`` (title, version, base) and ``org.monai.deploy.map.*`` (the
  manifests' versions, SDK, models, resources, and the models and content digests of the MAP as laid out
  in the image, as ``hounsfield models register`` computes them from an image's file system);
- ``app.json#environment`` as its environment, ``app.json#command`` as its entry point, a user that is
  not root (uid 10001).

The base image is an argument: by default Hounsfield's worker image (Python with the App SDK, PyTorch's CPU
build, MONAI, highdicom and the shared ``hounsfield_operators``), made by ``make images``. Any image with
``python3`` works when the application's ``requirements.txt`` names everything it needs: it is installed
over the base (into the base's ``/opt/hounsfield`` virtual environment where there is one, else a new one
at ``/opt/holoscan/venv``) with the build host's pip settings and CA bundle passed in as build secrets,
never stored in a layer (:func:`hounsfield.containers.host_build_settings`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hounsfield import __version__ as hounsfield_version
from hounsfield import containers
from hounsfield.catalog.manifests import LoadedMap, load_map
from hounsfield.errors import Invalid

__all__ = ["DEFAULT_BASE", "Packaged", "containerfile", "image_name", "lay_out", "package"]

DEFAULT_BASE = f"localhost/hounsfield-worker:{hounsfield_version}"
"""Hounsfield's worker image as ``make images`` tags it."""

_SKIPPED = {"models", "tests", "__pycache__", ".pytest_cache", ".git", ".venv", ".mypy_cache", ".ruff_cache"}
_USER = "10001:10001"

_CONTAINERFILE = """\
# A MONAI Application Package made by `hounsfield map package` (MAP spec 1.0).
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
USER 0:0
COPY requirements.txt /tmp/hounsfield-map/requirements.txt
# The build host's pip settings and CA bundle arrive as build secrets, never stored in a layer.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \\
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \\
    && if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \\
    && if [ -x /opt/hounsfield/bin/python3 ]; then python=/opt/hounsfield/bin/python3; \\
       else python3 -m venv --system-site-packages /opt/holoscan/venv && python=/opt/holoscan/venv/bin/python3; fi \\
    && if grep -q '[^[:space:]]' /tmp/hounsfield-map/requirements.txt; then \\
         "$python" -m pip install --no-cache-dir --disable-pip-version-check --no-warn-script-location \\
           -r /tmp/hounsfield-map/requirements.txt; fi \\
    && rm -rf /tmp/hounsfield-map \\
    && mkdir -p /var/holoscan/input /var/holoscan/output /var/holoscan/work /var/holoscan/logs \\
    && chmod 1777 /var/holoscan/output /var/holoscan/work /var/holoscan/logs
COPY etc/ /etc/
COPY opt/ /opt/
COPY var/ /var/
{labels}
{environment}
WORKDIR {workdir}
USER {user}
ENTRYPOINT {entrypoint}
CMD []
"""


@dataclass(frozen=True)
class Packaged:
    """A MAP image built: its name, its digest, the reference pinned by digest, and where it was saved."""

    image: str
    digest: str
    build_s: float
    archive: Path | None = None

    @property
    def reference(self) -> str:
        """``name@sha256:...``: the image pinned by its digest (what the registry records)."""
        return f"{self.image.rsplit(':', 1)[0] if ':' in self.image.rsplit('/', 1)[-1] else self.image}@{self.digest}"


def image_name(loaded: LoadedMap, folder: Path) -> str:
    """``localhost/<name>:<version>``: the folder's name in the form image names take, and pkg.json's version."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-._") or "map"
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", str(loaded.manifests.pkg.version))
    return f"localhost/{name}:{version}"


def _code(folder: Path, target: Path) -> None:
    for item in sorted(folder.iterdir()):
        if item.name in _SKIPPED or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif item.is_file() and item.suffix != ".pyc":
            shutil.copy2(item, target / item.name)


def _models(loaded: LoadedMap, folder: Path, context: Path) -> None:
    """Each pkg.json model to its declared path: ``models/<name>/``, or ``models/`` itself for a single model."""
    models = loaded.manifests.pkg.models
    source_root = folder / "models"
    model_root = loaded.manifests.pkg.model_root
    for entry in models:
        # pkg.json's path: absolute, or relative to modelRoot; none means modelRoot/<name>.
        declared = entry.path or entry.name
        destination = context / (declared if declared.startswith("/") else f"{model_root}/{declared}").lstrip("/")
        own = source_root / entry.name
        if own.is_dir():
            shutil.copytree(own, destination)
        elif len(models) == 1 and source_root.is_dir():
            shutil.copytree(source_root, destination)
        else:
            raise Invalid(
                "models", f"pkg.json names model {entry.name!r}: put its files in models/{entry.name}/ in {folder}"
            )
        if not any(path.is_file() for path in destination.rglob("*")):
            raise Invalid("models", f"model {entry.name!r} has no files (models/{entry.name}/ in {folder})")


def _labels(loaded: LoadedMap, base: str, title: str) -> dict[str, str]:
    manifests = loaded.manifests
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.version": str(manifests.pkg.version),
        "org.opencontainers.image.base.name": base,
        "org.monai.deploy.map.api-version": str(manifests.app.api_version),
        "org.monai.deploy.map.sdk": manifests.app.sdk or "",
        "org.monai.deploy.map.sdk-version": manifests.app.sdk_version or "",
        "org.monai.deploy.map.models": ",".join(entry.name for entry in manifests.pkg.models),
        "org.monai.deploy.map.resources": json.dumps(manifests.pkg.resources.summary(), sort_keys=True),
        "org.monai.deploy.map.models-digest": loaded.models_digest,
        "org.monai.deploy.map.content-digest": loaded.content_digest,
        "org.monai.deploy.map.packager": f"hounsfield {hounsfield_version}",
    }


def _title(folder: Path, default: str) -> str:
    config = folder / "app.yaml"
    if config.is_file():
        import yaml

        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise Invalid("app.yaml", f"{config} is not valid YAML: {exc}") from None
        title = (data.get("application") or {}).get("title") if isinstance(data, dict) else None
        if isinstance(title, str) and title.strip():
            return title.strip()
    return default


def containerfile(loaded: LoadedMap, base: str, title: str) -> str:
    """The Containerfile of a MAP (its context made by :func:`package`)."""
    app = loaded.manifests.app
    labels = " \\\n      ".join(f"{key}={json.dumps(value)}" for key, value in _labels(loaded, base, title).items())
    environment = {str(key): str(value) for key, value in app.environment.items()}
    environment.setdefault("HOLOSCAN_CONFIG_PATH", "/var/holoscan/app.yaml")
    environment.setdefault("HOME", "/tmp")  # a user without a home of its own; /tmp is writable in every runtime
    env_text = " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in environment.items())
    return _CONTAINERFILE.format(
        labels=f"LABEL {labels}",
        environment=f"ENV {env_text}" if env_text else "",
        workdir=app.working_directory,
        user=_USER,
        entrypoint=json.dumps(app.argv),
    )


def lay_out(folder: Path, context: Path) -> LoadedMap:
    """Lay ``folder`` out in ``context`` as the image holds it (``etc/``, ``opt/``, ``var/``, ``requirements.txt``);
    the MAP as read from that layout, whose digests the image's labels carry and ``map publish`` checks."""
    loaded = load_map(folder)
    (context / "etc" / "holoscan").mkdir(parents=True)
    (context / "opt" / "holoscan" / "app").mkdir(parents=True)
    (context / "opt" / "holoscan" / "docs").mkdir(parents=True)
    (context / "var" / "holoscan").mkdir(parents=True)
    for manifest in ("app.json", "pkg.json"):
        shutil.copy2(folder / manifest, context / "etc" / "holoscan" / manifest)
    if (folder / "app.yaml").is_file():
        shutil.copy2(folder / "app.yaml", context / "etc" / "holoscan" / "app.yaml")
        shutil.copy2(folder / "app.yaml", context / "var" / "holoscan" / "app.yaml")
    _code(folder, context / "opt" / "holoscan" / "app")
    _models(loaded, folder, context)
    for readme in folder.glob("README*"):
        shutil.copy2(readme, context / "opt" / "holoscan" / "docs" / readme.name)
    requirements = folder / "requirements.txt"
    (context / "requirements.txt").write_text(
        requirements.read_text(encoding="utf-8") if requirements.is_file() else "", encoding="utf-8"
    )
    return load_map(context)


def package(
    folder: Path,
    *,
    base: str = DEFAULT_BASE,
    tag: str | None = None,
    archive: Path | None = None,
    no_cache: bool = False,
) -> Packaged:
    """Build ``folder`` (an application folder: manifests, code, ``models/``) into a MAP image.

    Refuses (:class:`~hounsfield.errors.Invalid`) a folder whose manifests are invalid or whose models are
    missing; :class:`~hounsfield.containers.ContainerCommandFailed` with the build's own words when the
    engine fails. ``archive``: also save the image as an OCI archive (``podman save --format oci-archive``;
    docker writes its own archive format), for an air-gapped site's ``podman load``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise Invalid("folder", f"{folder} is not a folder")
    loaded = load_map(folder)
    name = tag or image_name(loaded, folder)
    if not containers.image_exists(base):
        raise Invalid(
            "base",
            f"the base image {base} is not here: `make images` builds Hounsfield's worker image, or give --base",
        )
    title = _title(folder, loaded.manifests.pkg.models[0].name if loaded.manifests.pkg.models else folder.name)
    engine = containers.engine()
    with tempfile.TemporaryDirectory(prefix="hounsfield-map-") as scratch:
        context = Path(scratch) / "context"
        laid_out = lay_out(folder, context)
        (context / "Containerfile").write_text(containerfile(laid_out, base, title), encoding="utf-8")
        argv = [engine, "build", "--file", str(context / "Containerfile"), "--tag", name]
        argv += ["--build-arg", f"BASE_IMAGE={base}", "--network", "host", *(["--no-cache"] if no_cache else [])]
        if engine == "podman":
            argv += ["--format", "oci"]
        argv += containers.host_build_settings().build_arguments(Path(scratch))
        started = time.monotonic()
        containers.run([*argv, str(context)])
        took = time.monotonic() - started
    saved = None
    if archive is not None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.unlink(missing_ok=True)
        save = [engine, "save", "--output", str(archive)]
        if engine == "podman":
            save += ["--format", "oci-archive"]
        containers.run([*save, name])
        saved = archive
    return Packaged(image=name, digest=containers.image_digest(name), build_s=round(took, 1), archive=saved)
