"""A throw-away Orthanc (Debian package ``orthanc``) started with its own configuration."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

__all__ = ["DICOMWEB_PLUGIN", "LocalOrthanc", "free_port"]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
"""Where Debian's orthanc-dicomweb installs the plugin."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalOrthanc:
    """Orthanc on loopback with storage in ``folder``; C-STORE SCP and REST API.

    ``modalities`` (name -> AE title, host, port) are the DICOM nodes Orthanc knows: they may query
    and retrieve from it (C-FIND, C-MOVE, C-GET), and be a C-MOVE destination. ``dicomweb`` loads
    the DICOMweb plugin (Debian package orthanc-dicomweb): STOW-RS, QIDO-RS and WADO-RS under
    :attr:`dicomweb_url`. ``users`` (name -> password) turns HTTP basic authentication on.
    """

    def __init__(
        self,
        folder: Path,
        *,
        aet: str = "ORTHANC",
        http_port: int | None = None,
        dicom_port: int | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        dicomweb: bool = False,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.users = dict(users or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base (``/studies`` below it), when started with ``dicomweb``."""
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(executable).exists():
            raise RuntimeError("Orthanc is not installed (Debian package orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "hounsfield-demo-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "StableAge": 2,
            "DicomModalities": {name: list(node) for name, node in self.modalities.items()},
            "Plugins": [],
        }
        if self.dicomweb:
            if not DICOMWEB_PLUGIN.is_file():
                raise RuntimeError(f"no DICOMweb plugin at {DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = self.users
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([executable, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder / 'orthanc.log'}")
            try:
                auth = next(iter(self.users.items()), None)
                if httpx.get(f"{self.url}/system", timeout=1, auth=auth).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
