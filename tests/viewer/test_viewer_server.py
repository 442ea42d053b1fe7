"""hounsfield.demo.viewer without a browser: the pinned download, the served configuration, the proxy."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hounsfield.demo import viewer
from hounsfield.demo.viewer import APP_CONFIG, ViewerServer, ensure_ohif


def _tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _serve(monkeypatch: pytest.MonkeyPatch, data: bytes) -> list[str]:
    fetched: list[str] = []

    def get(url: str, **_: object) -> httpx.Response:
        fetched.append(url)
        return httpx.Response(200, content=data, request=httpx.Request("GET", url))

    monkeypatch.setattr(viewer.httpx, "get", get)
    return fetched


def test_ohif_is_unpacked_once_when_its_sha512_is_the_pinned_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tarball({"package/dist/index.html": b"<html>", "package/dist/app.js": b"1", "package/README.md": b"x"})
    monkeypatch.setattr(viewer, "OHIF_INTEGRITY", viewer._integrity(data))
    fetched = _serve(monkeypatch, data)
    dist = ensure_ohif(tmp_path)
    assert sorted(p.name for p in dist.iterdir()) == ["app.js", "index.html"]
    assert ensure_ohif(tmp_path) == dist and fetched == [viewer.OHIF_TARBALL]  # the second call: the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ohif-{viewer.OHIF_VERSION}"]


def test_a_tarball_with_another_sha512_is_refused_and_nothing_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, _tarball({"package/dist/index.html": b"<html>tampered"}))
    with pytest.raises(RuntimeError, match="is not the pinned"):
        ensure_ohif(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_pinned_integrity_is_npm_s_for_the_version() -> None:
    assert viewer.OHIF_TARBALL == "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"
    assert viewer.OHIF_INTEGRITY.startswith("sha512-") and len(viewer.OHIF_INTEGRITY) == 7 + 88


@pytest.fixture
def fake_pacs() -> Iterator[str]:
    class Pacs(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            body = f"{self.path} {self.headers.get('Accept')}".encode()
            self.send_response(404 if "missing" in self.path else 200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_viewer_serves_ohif_its_config_and_the_pacs_on_one_origin(tmp_path: Path, fake_pacs: str) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside dist")
    with ViewerServer(dist, fake_pacs + "/") as server, httpx.Client(base_url=server.url) as client:
        config = client.get("/app-config.js")
        assert config.text == APP_CONFIG and "qidoRoot: '/dicom-web'" in config.text
        assert client.get("/app.wasm").headers["content-type"] == "application/wasm"
        # Routes of the single-page application, and paths outside dist, get index.html.
        for route in ("/viewer?StudyInstanceUIDs=1.2.3", "/segmentation", "/../secret.txt"):
            assert client.get(route).text == "<html>ohif</html>", route
        # DICOMweb goes to the PACS with its query and Accept; the PACS's status and type come back.
        answer = client.get("/dicom-web/studies?PatientID=X", headers={"Accept": "application/dicom+json"})
        assert answer.status_code == 200 and answer.text == "/dicom-web/studies?PatientID=X application/dicom+json"
        assert answer.headers["content-type"] == "application/dicom+json"
        assert client.get("/dicom-web/missing").status_code == 404
        assert server.study_url("1.2.3") == f"{server.url}/viewer?StudyInstanceUIDs=1.2.3"


def test_a_pacs_that_is_down_is_a_bad_gateway(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html>")
    with ViewerServer(tmp_path, "http://127.0.0.1:9", proxy_timeout_s=2) as server:
        answer = httpx.get(f"{server.url}/dicom-web/studies")
    assert answer.status_code == 502 and "PACS unreachable" in answer.text
