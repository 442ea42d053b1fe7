"""Build Hounsfield's container images: `make images` (and `make base-image`, `make lock`).

    python deploy/images.py images [--base auto|pull|debian] [--tag TAG] [--report FILE]
    python deploy/images.py base-image
    python deploy/images.py lock

The engine is podman where it is installed (docker otherwise). Each image is built from
deploy/Dockerfile with the build host's own package settings passed in, never baked into a layer:

* pip's configuration as the host has it (`pip config list`: index, extra indexes, find-links,
  constraints) as the build secret ``pip.conf``, and every local folder or file it names (a
  ``file://`` index, a wheel folder) as a read-only volume of the build (podman only);
* the CA bundle pip trusts (``PIP_CERT``, pip's ``cert``, or ``SSL_CERT_FILE``) as the build secret
  ``ca.crt``: a TLS-inspecting proxy's CA reaches pip, not the image.

The base is Debian bookworm. ``--base auto`` pulls ``docker.io/library/debian:bookworm-slim`` and
falls back to ``base-image``: mmdebstrap makes a minimal Debian (python3, python3-venv,
ca-certificates) from the mirrors apt already uses, imported as ``localhost/hounsfield-base:bookworm``
(an air-gapped build host with a Debian mirror needs nothing else).

The engine and the host's package settings are :mod:`hounsfield.containers`' (podman with runc and
ulimits this host allows).

After each build the image's SBOM (CycloneDX, written in the image at
/opt/hounsfield/share/sbom/python.cdx.json) is copied to build/sbom/, with the Debian packages the
image holds; the sizes and build times go to the report (build/images.json by default).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from hounsfield.containers import (
    BuildSettings,
    ContainerCommandFailed,
    engine,
    engine_environment,
    host_build_settings,
    run,
)

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
LOCKS = REPO / "deploy" / "locks"
PUBLIC_BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/hounsfield-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
TARGETS = {"services": "hounsfield", "worker": "hounsfield-worker"}
"""Dockerfile target -> image name."""


BuildFailed = ContainerCommandFailed
"""A step of the build failed; the message says which and why."""


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


# --- the base image -------------------------------------------------------------------------------------------------


def apt_sources() -> list[str]:
    """The host's apt sources as one-line entries (``deb URI SUITE COMPONENTS``), deb822 or legacy."""
    lines: list[str] = []
    folder = Path("/etc/apt/sources.list.d")
    for path in sorted(folder.glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8").split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.MULTILINE))
            if fields.get("Enabled", "yes").lower() == "no" or "deb" not in fields.get("Types", "").split():
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    lines.append(f"deb {uri} {suite} {fields.get('Components', 'main')}")
    for path in [Path("/etc/apt/sources.list"), *sorted(folder.glob("*.list"))]:
        if path.is_file():
            lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("deb ")]
    if not lines:
        raise BuildFailed("no apt source found in /etc/apt: mmdebstrap needs a Debian mirror")
    return lines


def base_image() -> str:
    """Make the base image with mmdebstrap from the host's Debian mirrors; returns its name."""
    if not shutil.which("mmdebstrap"):
        raise BuildFailed("mmdebstrap is not installed (`apt-get install mmdebstrap`)")
    with tempfile.TemporaryDirectory(prefix="hounsfield-base-") as folder:
        tar = Path(folder) / "base.tar"
        argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(tar)]
        proc = subprocess.run([*argv, *apt_sources()], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildFailed(f"mmdebstrap failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        run([engine(), "import", "--quiet", str(tar), LOCAL_BASE])
    return LOCAL_BASE


def choose_base(how: str) -> str:
    if how in ("auto", "pull"):
        try:
            run([engine(), "pull", "--quiet", PUBLIC_BASE], timeout=300)
            return PUBLIC_BASE
        except (BuildFailed, subprocess.TimeoutExpired) as exc:
            if how == "pull":
                raise BuildFailed(f"{PUBLIC_BASE} cannot be pulled: {exc}") from exc
            if (
                how == "auto"
                and subprocess.run(
                    [engine(), "image", "exists", LOCAL_BASE], env=engine_environment(), check=False
                ).returncode
                == 0
            ):
                print(
                    f"{PUBLIC_BASE} cannot be pulled; using {LOCAL_BASE} (`make base-image` remakes it)",
                    file=sys.stderr,
                )
                return LOCAL_BASE
            print(f"{PUBLIC_BASE} cannot be pulled; making the base from Debian packages", file=sys.stderr)
    return base_image()


# --- building -------------------------------------------------------------------------------------------------------


@dataclass
class Built:
    image: str
    target: str
    size_bytes: int
    build_s: float
    sbom: str
    debian_packages: str


def build(
    target: str, tag: str, base: str, settings: BuildSettings, *, prefix: str = "", no_cache: bool = False
) -> Built:
    name = f"{prefix}{TARGETS[target]}:{tag}"
    argv = [engine(), "build", "--file", str(DOCKERFILE), "--target", target, "--tag", name]
    if engine() == "podman":
        argv += ["--format", "docker"]  # OCI images have no SHELL: RUN lines would lose pipefail
    argv += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VERSION={version()}"]
    argv += ["--network", "host", *(["--no-cache"] if no_cache else [])]
    with tempfile.TemporaryDirectory(prefix="hounsfield-build-") as folder:
        argv += settings.build_arguments(Path(folder))
        started = time.monotonic()
        run([*argv, str(REPO)])
        took = time.monotonic() - started
    sbom_dir = BUILD / "sbom"
    sbom_dir.mkdir(parents=True, exist_ok=True)
    sbom = sbom_dir / f"{TARGETS[target]}-{tag}.cdx.json"  # one file per image name and tag
    sbom.write_text(
        run(
            [engine(), "run", "--rm", "--entrypoint", "cat", name, "/opt/hounsfield/share/sbom/python.cdx.json"],
            capture=True,
        ),
        encoding="utf-8",
    )
    debian = sbom_dir / f"{TARGETS[target]}-{tag}.debian-packages.txt"
    query = ["dpkg-query", "--show", "--showformat", "${Package} ${Version} ${Architecture}\\n"]
    debian.write_text(run([engine(), "run", "--rm", "--entrypoint", query[0], name, *query[1:]], capture=True))
    size = int(run([engine(), "image", "inspect", "--format", "{{.Size}}", name], capture=True).strip())
    return Built(name, target, size, round(took, 1), str(sbom.relative_to(REPO)), str(debian.relative_to(REPO)))


def images(
    base_how: str,
    tag: str,
    report: Path,
    targets: list[str],
    *,
    prefix: str = "",
    no_cache: bool = False,
    docs: Path | None = None,
) -> list[Built]:
    started = time.monotonic()
    base = choose_base(base_how)
    base_s = time.monotonic() - started
    settings = host_build_settings()
    built = [build(target, tag, base, settings, prefix=prefix, no_cache=no_cache) for target in targets]
    report.parent.mkdir(parents=True, exist_ok=True)
    summary = {"base": base, "base_s": round(base_s, 1), "engine": engine(), "images": [asdict(b) for b in built]}
    report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for item in built:
        print(f"{item.image}: {item.size_bytes / 2**20:.0f} MiB, built in {item.build_s:.0f} s, SBOM {item.sbom}")
    if docs is not None:
        write_docs(docs, base, round(base_s, 1), built, no_cache=no_cache)
    return built


def write_docs(path: Path, base: str, base_s: float, built: list[Built], *, no_cache: bool) -> None:
    """The images' section of docs/benchmarks.md: sizes, build times, what each holds."""
    sys.path.insert(0, str(REPO))
    from benchmarks.report import write_section

    rows = []
    for item in built:
        sbom = json.loads((REPO / item.sbom).read_text(encoding="utf-8"))
        debian = len((REPO / item.debian_packages).read_text(encoding="utf-8").splitlines())
        rows.append(
            f"| `{item.image}` | {item.target} | {item.size_bytes / 2**20:.0f} MiB | {item.build_s:.0f} s "
            f"| {len(sbom.get('components', []))} | {debian} |"
        )
    how = "every layer built afresh (`--no-cache`)" if no_cache else "with the engine's layer cache"
    text = "\n".join(
        [
            "## Images",
            "",
            f"Generated by `deploy/images.py images --docs` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
            f"with {engine()}, {how}; base `{base}` ready in {base_s:.0f} s. Do not edit by hand: rerun it.",
            "",
            "| Image | Target | Size | Build time | Python packages (SBOM) | Debian packages |",
            "|---|---|---:|---:|---:|---:|",
            *rows,
            "",
            "The SBOMs (CycloneDX JSON) and the Debian package lists are written to `build/sbom/` by each build.",
        ]
    )
    write_section(path, "images", text)


# --- the lock files -------------------------------------------------------------------------------------------------


def lock(base_how: str = "auto") -> None:
    """deploy/locks/worker.txt (the worker extra, PyTorch's CPU build) and services.txt (within it), with hashes.

    Resolved by the images' own Python, in the base image: a lock made by another patch release can
    miss a dependency behind a marker (redis needs async-timeout below Python 3.11.3).
    """
    base = choose_base(base_how)
    settings = host_build_settings()
    compile_ = (
        "pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links"
    )
    script = " && ".join(
        (
            "python3 -m venv /tmp/locker",
            f"/tmp/locker/bin/pip install --quiet --disable-pip-version-check pip-tools=={_PIP_TOOLS}",
            "cd /src",
            f"/tmp/locker/bin/{compile_} --extra worker --constraint deploy/locks/torch-cpu.txt"
            " --output-file deploy/locks/worker.txt pyproject.toml",
            f"/tmp/locker/bin/{compile_} --constraint deploy/locks/worker.txt"
            " --output-file deploy/locks/services.txt pyproject.toml",
        )
    )
    with tempfile.TemporaryDirectory(prefix="hounsfield-lock-") as folder:
        pip_conf = Path(folder) / "pip.conf"
        pip_conf.write_text(settings.pip_conf, encoding="utf-8")
        argv = [engine(), "run", "--rm", "--network", "host", "--volume", f"{REPO}:/src"]
        argv += ["--volume", f"{pip_conf}:/etc/pip.conf:ro", "--env", "PIP_CONFIG_FILE=/etc/pip.conf"]
        if settings.ca_bundle:
            argv += ["--volume", f"{settings.ca_bundle}:/etc/hounsfield-build-ca.crt:ro"]
            argv += ["--env", "PIP_CERT=/etc/hounsfield-build-ca.crt"]
        for volume in settings.volumes:
            argv += ["--volume", volume]
        run([*argv, base, "sh", "-c", script])


_PIP_TOOLS = "7.6.2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    built = commands.add_parser("images", help="build the services and worker images")
    built.add_argument("--base", choices=("auto", "pull", "debian"), default="auto")
    built.add_argument("--tag", default=version())
    built.add_argument("--report", type=Path, default=BUILD / "images.json")
    built.add_argument("--target", action="append", choices=sorted(TARGETS), help="one target (repeatable)")
    built.add_argument("--prefix", default="", help="before each image's name: a registry and folder, ending in /")
    built.add_argument("--no-cache", action="store_true", help="build every layer afresh (for build times)")
    built.add_argument("--docs", nargs="?", const=REPO / "docs" / "benchmarks.md", type=Path, default=None,
                       help="write the images' section of docs/benchmarks.md (or FILE)")  # fmt: skip
    commands.add_parser("base-image", help="make the Debian base image with mmdebstrap")
    locking = commands.add_parser("lock", help="regenerate deploy/locks/*.txt (in the base image)")
    locking.add_argument("--base", choices=("auto", "pull", "debian"), default="auto")
    args = parser.parse_args(argv)
    try:
        if args.command == "images":
            images(
                args.base,
                args.tag,
                args.report,
                args.target or list(TARGETS),
                prefix=args.prefix,
                no_cache=args.no_cache,
                docs=args.docs,
            )
        elif args.command == "base-image":
            print(base_image())
        else:
            lock(args.base)
    except BuildFailed as exc:
        print(f"make {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
