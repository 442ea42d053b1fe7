"""docs/model-developers.md's tutorial, run as written: from a model file to a result in the demo PACS.

Every ``sh`` block of the document runs, in order, in one bash session from the repository's root
(``set -euo pipefail``: the first command that fails fails the test). Then what each step promised is
checked: the application folder, the results of the folder and of the image, the image's layout, and
the demo's SEG and SR in the PACS. ``text`` blocks are examples that need a hospital's registry or a
bundle of your own; their commands are held by tests/deploy/test_maps.py and tests/services/maps/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from hounsfield import containers

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "model-developers.md"
WORK = REPO / "build" / "tutorial"
IMAGE = "localhost/liver_lesions:0.1.0"

if shutil.which("podman") is None:
    pytest.skip("podman is not installed here (`make system-deps` installs it; CI does)", allow_module_level=True)

pytestmark = pytest.mark.containers


def commands() -> list[str]:
    """The document's ``sh`` blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_the_tutorial_runs_as_written() -> None:
    blocks = commands()
    assert len(blocks) >= 6, "the tutorial's steps are sh blocks"
    shutil.rmtree(WORK, ignore_errors=True)
    if containers.image_exists(IMAGE):
        subprocess.run(["podman", "rmi", "--force", IMAGE], env=containers.engine_environment(), check=False)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=3000, check=False,
        env={key: value for key, value in containers.engine_environment().items() if not key.startswith("HOUNSFIELD_")},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    app = WORK / "liver_lesions"
    assert (app / "models" / "liver_lesions" / "model.ts").read_bytes() == (
        REPO / "operators" / "ct_lesion_seg" / "models" / "model.ts"
    ).read_bytes(), "step 1: the model in the application"
    assert "a valid MAP" in proc.stdout, "step 2: validate"
    for out in ("out-folder", "out-image"):  # steps 3 and 5: the folder and the image, the same application
        seg = pydicom.dcmread(WORK / out / "seg.dcm")
        assert seg.Modality == "SEG" and "liver_lesions v0.1.0" in seg.SeriesDescription
        assert pydicom.dcmread(WORK / out / "sr.dcm").Modality == "SR"
    folder_seg = pydicom.dcmread(WORK / "out-folder" / "seg.dcm")
    image_seg = pydicom.dcmread(WORK / "out-image" / "seg.dcm")
    assert folder_seg.pixel_array.tobytes() == image_seg.pixel_array.tobytes(), "the image segments as the folder"
    assert "subprocess runtime" in proc.stdout and "container runtime" in proc.stdout
    labels = json.loads(
        containers.run(["podman", "image", "inspect", "--format", "{{json .Labels}}", IMAGE], capture=True)
    )
    assert labels["org.opencontainers.image.version"] == "0.1.0", "step 4: the image"
    demo = proc.stdout[proc.stdout.rindex("liver_lesions 0.1.0 (") :]  # step 6: the demo's summary
    assert ": done" in demo.splitlines()[0], demo[:2000]
    assert re.search(r"SEG\s+'SEG liver_lesions v0\.1\.0 NOT FOR DIAGNOSTIC USE'", demo), demo[:2000]
    assert re.search(r"SR\s+'SR liver_lesions v0\.1\.0 NOT FOR DIAGNOSTIC USE'", demo), demo[:2000]
    shutil.rmtree(WORK, ignore_errors=True)
