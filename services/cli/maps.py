"""``hounsfield map``: scaffold, validate, run, package and publish a MONAI Application Package.

Each command is a thin face over :mod:`hounsfield.maps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hounsfield.cli._common import ConfigOption, err, load_yaml, settings_or_exit

__all__ = ["maps"]

maps = typer.Typer(help="MAPs for model developers: new, validate, run, package, publish.", no_args_is_help=True)


@maps.command("new")
def map_new(
    name: Annotated[str, typer.Argument(help="The application's name and folder (lower-case letters, digits, _).")],
    kind: Annotated[str, typer.Option("--kind", help="segmentation or classification.")] = "segmentation",
    model: Annotated[Path | None, typer.Option("--model", help="A TorchScript model (model.ts).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="A MONAI bundle folder (instead of --model).")] = None,
    dest: Annotated[Path, typer.Option("--dest", help="Where the folder NAME is made.")] = Path("."),
) -> None:
    """Make an App SDK application from templates, with its manifests, model, README and a test."""
    from hounsfield.errors import Refused
    from hounsfield.maps.scaffold import new_application

    try:
        folder = new_application(name, kind, dest, model=model, bundle=bundle)
    except Refused as exc:
        err.print(f"[red]map new: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(f"made {folder}")


@maps.command("validate")
def map_validate(
    target: Annotated[str, typer.Argument(help="An application folder, or a MAP image (name:tag or name@digest).")],
) -> None:
    """Check an application folder or a MAP image against the MAP spec; each problem says where and how to fix it."""
    from hounsfield.maps.validate import validate

    problems = validate(target)
    for problem in problems:
        typer.echo(str(problem))
    if any(problem.severity == "error" for problem in problems):
        raise typer.Exit(1)
    typer.echo(f"{target}: a valid MAP")


@maps.command("run")
def map_run(
    target: Annotated[str, typer.Argument(help="An application folder, or a MAP image.")],
    input_dir: Annotated[Path, typer.Option("--input", "-i", help="A folder of DICOM files: one study.")],
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Where the results go (made; must be empty).")],
    timeout: Annotated[float | None, typer.Option(help="Seconds (default: app.json's timeout, else 600).")] = None,
    mode: Annotated[str, typer.Option(help="How results are labelled: shadow, research or clinical.")] = "research",
    network: Annotated[bool, typer.Option(help="Give an image a network (it has none otherwise).")] = False,
    config: ConfigOption = None,
) -> None:
    """Run an application folder or MAP image on a study as a worker would; every result through the validation gate."""
    from hounsfield.errors import HounsfieldError
    from hounsfield.maps.running import run_map

    settings = settings_or_exit(config, "map")
    try:
        report = run_map(
            target, input_dir, output_dir, settings=settings, timeout_s=timeout, mode=mode, network=network,
            echo=typer.echo,
        )  # fmt: skip
    except HounsfieldError as exc:
        err.print(f"[red]map run: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    for result in report.results:
        warnings = f", {len(result.warnings)} validator warning(s)" if result.warnings else ""
        typer.echo(f"passed the gate: {result.path} ({result.kind}{warnings})")
    total = sum(report.timings.values())
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in report.timings.items())
    typer.echo(f"{len(report.results)} result(s) in {total:.1f} s ({stages}); the application's log: {report.log}")


@maps.command("package")
def map_package(
    folder: Annotated[Path, typer.Argument(help="The application folder (manifests, code, models/).")],
    base: Annotated[str | None, typer.Option(help="The base image (default: Hounsfield's worker image).")] = None,
    tag: Annotated[str | None, typer.Option(help="name:tag (default: localhost/<folder>:<version>).")] = None,
    oci_archive: Annotated[
        Path | None, typer.Option("--oci-archive", help="Also save the image to this OCI archive (air-gapped sites).")
    ] = None,
    no_cache: Annotated[bool, typer.Option(help="Build every layer afresh.")] = False,
) -> None:
    """Build the application into a MAP: an OCI image with the spec's layout and labels; prints its digest."""
    from hounsfield.errors import HounsfieldError
    from hounsfield.maps.package import DEFAULT_BASE, package
    from hounsfield.maps.validate import validate_folder

    problems = [problem for problem in validate_folder(folder) if problem.severity == "error"]
    if problems:
        for problem in problems:
            err.print(f"[red]{problem}[/red]", highlight=False)
        err.print("[red]map package: fix these first (`hounsfield map validate` lists them)[/red]", highlight=False)
        raise typer.Exit(1)
    try:
        packaged = package(folder, base=base or DEFAULT_BASE, tag=tag, archive=oci_archive, no_cache=no_cache)
    except HounsfieldError as exc:
        err.print(f"[red]map package: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(f"built {packaged.image} in {packaged.build_s:.0f} s")
    if packaged.archive is not None:
        typer.echo(f"saved {packaged.archive} (load it with `podman load -i {packaged.archive.name}`)")
    typer.echo(f"digest {packaged.digest}")
    typer.echo(packaged.reference)


@maps.command("publish")
def map_publish(
    target: Annotated[str, typer.Argument(help="A MAP image, or an application folder.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The catalog model it is a version of.")],
    registry: Annotated[
        str, typer.Option(envvar="HOUNSFIELD_REGISTRY_URL", help="The registry's URL.")
    ] = "http://127.0.0.1:8470",
    token_env: Annotated[
        str, typer.Option(help="The environment variable holding your API token (model-developer role).")
    ] = "HOUNSFIELD_TOKEN",
    image: Annotated[str | None, typer.Option(help="With a folder: the image built from it.")] = None,
    card: Annotated[
        Path | None, typer.Option(help="A model card (YAML: the fields of POST /models) to file a new model.")
    ] = None,
    draft: Annotated[bool, typer.Option(help="Register unpublished (a draft may be replaced).")] = False,
    allow_insecure_http: Annotated[bool, typer.Option(help="Send the token over plain http to another host.")] = False,
) -> None:
    """Register the MAP's version in the registry, its image pinned by digest."""
    import os

    from hounsfield.errors import HounsfieldError
    from hounsfield.maps.publish import publish

    token = os.environ.get(token_env)
    if not token:
        err.print(f"[red]map publish: set {token_env} to your API token[/red]", highlight=False)
        raise typer.Exit(2)
    model_card = load_yaml(card) if card is not None else None
    if model_card is not None and not isinstance(model_card, dict):
        err.print(f"[red]map publish: {card} must hold a mapping (the fields of POST /models)[/red]", highlight=False)
        raise typer.Exit(2)
    try:
        done = publish(
            target, model=model, registry=registry, token=token, image=image, card=model_card, draft=draft,
            allow_insecure_http=allow_insecure_http,
        )  # fmt: skip
    except HounsfieldError as exc:
        err.print(f"[red]map publish: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    what = "registered" if done.created else "already registered, unchanged:"
    typer.echo(f"{what} {done.model} {done.version} (device UID {done.device_uid})")
    typer.echo(f"image {done.image or '(none)'}")
    typer.echo(f"content {done.content_digest}")


@maps.command("study")
def map_study(
    out: Annotated[Path, typer.Argument(help="The folder the DICOM files are written to (made).")],
    kind: Annotated[str, typer.Option(help="abdomen-ct (liver lesions) or head-ct (with or without a bleed).")] = (
        "abdomen-ct"
    ),
    seed: Annotated[int, typer.Option(help="The phantom's seed: the same seed, the same study.")] = 20261127,
    findings: Annotated[
        int | None, typer.Option(help="abdomen-ct: lesions (0-3; default from the seed); head-ct: 1 bleed, 0 none.")
    ] = None,
) -> None:
    """Write a synthetic CT study (a phantom with known truth) to try an application on."""
    if out.exists() and any(out.iterdir()):
        err.print(f"[red]map study: {out} is not empty[/red]", highlight=False)
        raise typer.Exit(2)
    if kind == "abdomen-ct":
        from hounsfield_operators.ct_lesion_seg.phantom import make_phantom, write_dicom_series

        files = write_dicom_series(make_phantom(seed, n_lesions=findings), out, uid_seed=f"map-study-{seed}")
    elif kind == "head-ct":
        from hounsfield_operators.ct_ich_triage.phantom import make_head_phantom
        from hounsfield_operators.ct_ich_triage.phantom import write_dicom_series as write_head_series

        bleed = None if findings is None else bool(findings)
        files = write_head_series(make_head_phantom(seed, bleed=bleed), out, uid_seed=f"map-study-{seed}")
    else:
        err.print(f"[red]map study: --kind is abdomen-ct or head-ct, not {kind!r}[/red]", highlight=False)
        raise typer.Exit(2)
    typer.echo(f"wrote {len(files)} CT instances to {out}")
