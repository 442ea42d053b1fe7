"""The OHIF Viewer over a PACS's DICOMweb, for the demo and the viewer tests.

OHIF's prebuilt application is published on npm (``@ohif/app``, its ``dist/``): :func:`ensure_ohif`
fetches the pinned version once into a cache folder, its sha512 checked against the integrity the
npm registry states for that version. :class:`ViewerServer` serves it on a loopback port with a
configuration that points its DICOMweb data source at the same origin, and proxies ``/dicom-web`` and
``/wado`` to the PACS (Orthanc's DICOMweb plugin), so the browser meets one origin (no CORS) and deep
links such as ``/viewer?StudyInstanceUIDs=...`` reach the single-page application.

By hand, against a running Orthanc with its DICOMweb plugin::

    python -m hounsfield.demo.viewer http://127.0.0.1:8042 --port 3000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

__all__ = ["OHIF_INTEGRITY", "OHIF_TARBALL", "OHIF_VERSION", "ViewerServer", "default_cache", "ensure_ohif"]

OHIF_VERSION = "3.13.2"
OHIF_TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{OHIF_VERSION}.tgz"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
"""The ``dist.integrity`` npm states for :data:`OHIF_VERSION` (``npm view @ohif/app@3.13.2 dist.integrity``)."""

APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  // No onboarding tour over the viewport (it would sit in screenshots).
  customizationService: { 'ohif.tours': { $set: [] } },
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'PACS',
      name: 'pacs',
      wadoUriRoot: '/wado',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
  defaultDataSourceName: 'dicomweb',
};
"""
"""OHIF's ``app-config.js``: one DICOMweb data source at the server's own origin (proxied to the PACS)."""

_PROXIED = ("/dicom-web/", "/wado")


def default_cache() -> Path:
    """Where OHIF is kept: ``$HOUNSFIELD_OHIF_CACHE``, else ``$XDG_CACHE_HOME/hounsfield/ohif`` (``~/.cache``)."""
    if os.environ.get("HOUNSFIELD_OHIF_CACHE"):
        return Path(os.environ["HOUNSFIELD_OHIF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hounsfield" / "ohif"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def ensure_ohif(cache: Path | None = None, *, timeout_s: float = 300.0) -> Path:
    """OHIF's ``dist`` folder under ``cache`` (:func:`default_cache`), fetched from npm the first time.

    The tarball must have the pinned sha512 (:data:`OHIF_INTEGRITY`), else ``RuntimeError`` and nothing
    is kept. Only ``package/dist/`` is unpacked; it is moved into place whole, so an interrupted fetch
    leaves no half folder that a later call would take for OHIF.
    """
    cache = cache or default_cache()
    home = cache / f"ohif-{OHIF_VERSION}"
    dist = home / "dist"
    if (dist / "index.html").is_file():
        return dist
    data = httpx.get(OHIF_TARBALL, timeout=timeout_s, follow_redirects=True).raise_for_status().content
    if _integrity(data) != OHIF_INTEGRITY:
        raise RuntimeError(f"{OHIF_TARBALL}: its sha512 {_integrity(data)} is not the pinned {OHIF_INTEGRITY}")
    partial = cache / f"ohif-{OHIF_VERSION}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(partial, members=members, filter="data")
        if not (partial / "package" / "dist" / "index.html").is_file():
            raise RuntimeError(f"{OHIF_TARBALL} has no package/dist/index.html")
        home.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dist, ignore_errors=True)
        (partial / "package" / "dist").rename(dist)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dist


class ViewerServer:
    """OHIF from ``dist`` on ``127.0.0.1:port`` (0: a free one), its DICOMweb proxied to ``pacs_url``.

    ``pacs_url`` is the PACS's HTTP root (Orthanc's, e.g. ``http://127.0.0.1:8042``): the viewer's
    ``/dicom-web/...`` requests go to ``{pacs_url}/dicom-web/...``. Use as a context manager, or
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, dist: Path, pacs_url: str, port: int = 0, *, proxy_timeout_s: float = 60.0) -> None:
        self.dist = dist
        self.pacs_url = pacs_url.rstrip("/")
        self.proxy_timeout_s = proxy_timeout_s
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-viewer", daemon=True)

    @property
    def url(self) -> str:
        """The viewer's origin (its study list)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def study_url(self, study_instance_uid: str) -> str:
        """The viewer opened on one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_instance_uid)}"

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _handler(self) -> type[http.server.SimpleHTTPRequestHandler]:
        dist, pacs, timeout = self.dist.resolve(), self.pacs_url, self.proxy_timeout_s

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {
                **http.server.SimpleHTTPRequestHandler.extensions_map,
                ".wasm": "application/wasm",
                ".js": "application/javascript",
                ".mjs": "application/javascript",
            }

            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(dist), **kwargs)  # type: ignore[arg-type]

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: a viewer fetches hundreds of files

            def do_GET(self) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                try:
                    if path == "/app-config.js":
                        self._send(200, APP_CONFIG.encode(), "application/javascript")
                    elif path.startswith(_PROXIED):
                        self._proxy()
                    elif self._static(path):
                        super().do_GET()
                    else:  # a route of the single-page application (/viewer, /segmentation, ...)
                        self._send(200, (dist / "index.html").read_bytes(), "text/html; charset=utf-8")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser dropped a request it no longer needs

            def _static(self, path: str) -> bool:
                target = (dist / path.lstrip("/")).resolve()
                return target.is_relative_to(dist) and target.is_file()

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _proxy(self) -> None:
                accept = self.headers.get("Accept", "*/*")
                request = urllib.request.Request(pacs + self.path, headers={"Accept": accept})
                try:
                    with urllib.request.urlopen(request, timeout=timeout) as answer:
                        body, status, content_type = answer.read(), answer.status, answer.headers.get("Content-Type")
                except urllib.error.HTTPError as exc:
                    body, status, content_type = exc.read(), exc.code, exc.headers.get("Content-Type")
                except OSError as exc:  # the PACS is down or slow
                    body, status, content_type = f"PACS unreachable: {exc}".encode(), 502, "text/plain"
                self._send(status, body, content_type or "application/octet-stream")

        return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve OHIF on a PACS until interrupted (a manual check; the tests use :class:`ViewerServer`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pacs_url", help="the PACS's HTTP root, its DICOMweb under /dicom-web")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="where OHIF is kept (default: %(default)s)")
    options = parser.parse_args(argv)
    with ViewerServer(ensure_ohif(options.cache), options.pacs_url, options.port) as server:
        print(f"OHIF {OHIF_VERSION} on {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
