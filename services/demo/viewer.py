"""The OHIF Viewer over a PACS's DICOMweb, for the demo and the viewer tests.

OHIF's prebuilt application is published on npm (``@ohif/app``, its ``dist/``): :func:`ensure_ohif`
fetches the pinned version once (its sha512 checked against the registry's integrity) into a cache
folder. :class:`ViewerServer` serves it on a loopback port with a configuration that points its
DICOMweb data source at the same origin, and proxies ``/dicom-web`` to the PACS (Orthanc's DICOMweb
plugin), so the browser meets one origin (no CORS) and deep links such as
``/viewer?StudyInstanceUIDs=...`` reach the single-page application.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import httpx

__all__ = ["OHIF_VERSION", "ViewerServer", "ensure_ohif"]

OHIF_VERSION = "3.13.2"
_TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{OHIF_VERSION}.tgz"
_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
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


def ensure_ohif(cache: Path) -> Path:
    """OHIF's ``dist`` folder under ``cache``, fetched from npm the first time."""
    dist = cache / f"ohif-{OHIF_VERSION}" / "dist"
    if (dist / "index.html").is_file():
        return dist
    data = httpx.get(_TARBALL, timeout=300, follow_redirects=True).raise_for_status().content
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != _INTEGRITY:
        raise RuntimeError(f"{_TARBALL}: sha512 {digest} is not the pinned {_INTEGRITY}")
    partial = cache / f"ohif-{OHIF_VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
        archive.extractall(partial, members=members, filter="data")
    (cache / f"ohif-{OHIF_VERSION}").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dist, ignore_errors=True)
    (partial / "package" / "dist").rename(dist)
    shutil.rmtree(partial, ignore_errors=True)
    return dist


class ViewerServer:
    """OHIF from ``dist`` on ``127.0.0.1:port``, its DICOMweb proxied to ``pacs_url`` (e.g. Orthanc's root)."""

    def __init__(self, dist: Path, pacs_url: str, port: int = 0) -> None:
        self.dist = dist
        self.pacs_url = pacs_url.rstrip("/")
        handler = self._handler()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def study_url(self, study_instance_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

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

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        dist, pacs = self.dist, self.pacs_url

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(dist), **kwargs)  # type: ignore[arg-type]

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/app-config.js":
                    self._send(200, _CONFIG.encode(), "application/javascript")
                elif path.startswith(("/dicom-web/", "/wado")):
                    self._proxy()
                elif (dist / path.lstrip("/")).is_file():
                    super().do_GET()
                else:  # a route of the single-page application
                    self._send(200, (dist / "index.html").read_bytes(), "text/html")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _proxy(self) -> None:
                request = urllib.request.Request(pacs + self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        body, status, headers = answer.read(), answer.status, answer.headers
                except urllib.error.HTTPError as exc:
                    body, status, headers = exc.read(), exc.code, exc.headers
                self.send_response(status)
                for name in ("Content-Type",):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


if __name__ == "__main__":  # manual: python viewer.py CACHE PACS_URL
    import sys

    server = ViewerServer(ensure_ohif(Path(sys.argv[1])), sys.argv[2], port=int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print(json.dumps({"url": server.url}))
    server.start()
    threading.Event().wait()
