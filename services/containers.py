"""The container engine (podman, or docker where it is the engine present), as Hounsfield drives it.

Used by ``make images`` (deploy/images.py), ``hounsfield map package|run|validate|publish`` and the
worker's container runtime. podman runs with ``runtime = "runc"`` and default ulimits no higher than
this host's (a containers.conf written in a folder of Hounsfield's and selected with ``CONTAINERS_CONF``),
which podman needs on hosts where crun cannot run or its default limits cannot be set; a
``CONTAINERS_CONF`` already set is left alone.

Builds get the host's package settings passed in, never baked into a layer
(:func:`host_build_settings`): pip's configuration (index, extra indexes, find-links, constraints) as
the build secret ``pip.conf`` with every local folder it names as a read-only volume, and the CA
bundle pip trusts as the build secret ``ca.crt``.
"""

from __future__ import annotations

import configparser
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hounsfield.errors import HounsfieldError

__all__ = [
    "BuildSettings",
    "ContainerCommandFailed",
    "ContainerEngineMissing",
    "engine",
    "engine_environment",
    "extract",
    "host_build_settings",
    "image_digest",
    "image_exists",
    "run",
]

_PIP_KEYS = ("index-url", "extra-index-url", "find-links", "constraint", "trusted-host", "no-index", "timeout")
_NOISE = re.compile(r"WARNING: Location '.*' is ignored")
"""pip's line for each project a local index lacks: hundreds of them, and never the reason for a failure."""


class ContainerEngineMissing(HounsfieldError):
    """Neither podman nor docker is installed."""


class ContainerCommandFailed(HounsfieldError, RuntimeError):
    """A command of the container engine failed; the message has the end of what it printed."""


def engine() -> str:
    """``podman`` where it is installed, else ``docker``; :class:`ContainerEngineMissing` without either."""
    for name in ("podman", "docker"):
        if shutil.which(name):
            return name
    raise ContainerEngineMissing("neither podman nor docker is installed (`apt-get install podman` on Debian)")


def _conf_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hounsfield" / "podman"


def engine_environment(conf_dir: Path | None = None) -> dict[str, str]:
    """The environment for the engine: for podman, a containers.conf with runc and ulimits this host allows."""
    env = dict(os.environ)
    if engine() != "podman" or "CONTAINERS_CONF" in os.environ:
        return env
    # Never above this host's soft limits, and modest: on some hosts runc may not raise them at all
    # (nproc 8192 fails where 4096 works on this project's machines).
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 16384)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
    conf = (conf_dir or _conf_dir()) / "containers.conf"
    runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
    text = f'[engine]\n{runtime}[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    if not conf.is_file() or conf.read_text(encoding="utf-8") != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        partial = conf.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(conf)  # atomic: concurrent callers never read half a file
    env["CONTAINERS_CONF"] = str(conf)
    return env


def run(argv: list[str], *, capture: bool = False, timeout: float | None = None) -> str:
    """Run ``argv`` (the engine) with :func:`engine_environment`; :class:`ContainerCommandFailed` with the
    tail of its output when it fails. Returns its standard output when ``capture``."""
    proc = subprocess.run(argv, env=engine_environment(), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if not _NOISE.search(line)]
        tail = "\n".join(lines[-40:])
        raise ContainerCommandFailed(f"{' '.join(argv[:3])} ... exited {proc.returncode}:\n{tail}")
    return proc.stdout if capture else ""


def image_exists(reference: str) -> bool:
    """Whether the engine has the image locally."""
    argv = [engine(), "image", "inspect", "--format", "{{.Id}}", reference]
    return subprocess.run(argv, env=engine_environment(), capture_output=True, check=False).returncode == 0


def image_digest(reference: str) -> str:
    """The image's content digest (``sha256:<hex>``): its manifest digest, or its ID where the engine
    has no manifest digest for a local image."""
    text = run([engine(), "image", "inspect", "--format", "{{.Digest}}|{{.Id}}", reference], capture=True).strip()
    digest, _, image_id = text.partition("|")
    if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return digest
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def extract(reference: str, paths: list[str], dest: Path) -> Path:
    """Copy ``paths`` (absolute, in the image) to the same paths under ``dest``; a missing path is skipped.
    Nothing in the image runs: a container is created, copied from and removed."""
    container = run([engine(), "create", "--quiet", reference, "true"], capture=True).strip()
    try:
        for path in paths:
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                [engine(), "cp", f"{container}:{path}", str(target)],
                env=engine_environment(), capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0 and "no such file" not in (proc.stderr + proc.stdout).lower():
                raise ContainerCommandFailed(f"copying {path} out of {reference}: {proc.stderr.strip()[-500:]}")
    finally:
        subprocess.run([engine(), "rm", "--force", container], env=engine_environment(), capture_output=True)
    return dest


# --- the host's package settings ------------------------------------------------------------------------------------


@dataclass
class BuildSettings:
    """What a build needs from the host: pip's configuration, the folders it names, the CA bundle."""

    pip_conf: str = ""
    volumes: list[str] = field(default_factory=list)
    ca_bundle: str | None = None

    def build_arguments(self, folder: Path) -> list[str]:
        """``build`` arguments passing these settings in (the pip.conf written into ``folder``)."""
        pip_conf = folder / "pip.conf"
        pip_conf.write_text(self.pip_conf, encoding="utf-8")
        argv = ["--secret", f"id=pip.conf,src={pip_conf}"]
        if self.ca_bundle:
            argv += ["--secret", f"id=ca.crt,src={self.ca_bundle}"]
        if engine() == "podman":
            for volume in self.volumes:
                argv += ["--volume", volume]
        return argv


def _local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        return Path(unquote(urlsplit(value).path))
    if value.startswith("/"):
        return Path(value)
    return None


def host_build_settings(python: str = sys.executable) -> BuildSettings:
    """pip's effective configuration here (``pip config list``, files and environment), as a pip.conf."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^(?:[\w.-]*:)?(?:global|install|:env:)\.([\w-]+)='(.*)'$", line)
        if match:
            values[match[1]] = match[2]  # later lines (the environment) win, as in pip
    settings = BuildSettings()
    parser = configparser.ConfigParser()
    parser["global"] = {key: value for key, value in values.items() if key in _PIP_KEYS}
    with tempfile.TemporaryFile("w+") as handle:
        parser.write(handle)
        handle.seek(0)
        settings.pip_conf = handle.read()
    mounts: set[Path] = set()
    for key in ("index-url", "extra-index-url", "find-links", "constraint"):
        for item in values.get(key, "").split():
            path = _local_path(item)
            if path is not None and path.exists():
                # A PEP 503 index's pages link to its files beside it (../../files/...): mount the whole tree.
                mounts.add(path.parent if path.name == "simple" else path)
    settings.volumes = [f"{path}:{path}:ro" for path in sorted(mounts)]
    for candidate in (os.environ.get("PIP_CERT"), values.get("cert"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            settings.ca_bundle = candidate
            break
    return settings
