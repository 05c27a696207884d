"""Serve a folder of images over HTTP on 127.0.0.1 (threaded, query strings ignored), for tests and the demo.

    nsarm serve-photos DIR [--port 8800]    # exports the bundled photos into DIR/photos, writes DIR/photos.tsv, serves

`PhotoServer` is also used in-process by tests: `with PhotoServer(folder) as srv: srv.url("a.jpg")`.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        # Unsplash-style URLs carry size parameters (?w=1024); a static folder ignores them.
        return super().translate_path(path.split("?", 1)[0])

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class PhotoServer:
    """A static file server on 127.0.0.1 in a background thread. Port 0 picks a free port."""

    def __init__(self, folder: str | Path, port: int = 0, host: str = "127.0.0.1"):
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"cannot serve {folder}: not a directory")
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="photo-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def start(self) -> PhotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> PhotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_sample_photos(root: str | Path, port: int = 8800) -> tuple[PhotoServer, Path]:
    """Export the bundled photos to `root/photos`, start a server on `port`, write `root/photos.tsv` for it."""
    from dataset.samples import export_sample_photos, write_unsplash_tsv

    root = Path(root)
    photos = export_sample_photos(root / "photos")
    server = PhotoServer(root / "photos", port=port).start()
    tsv = write_unsplash_tsv(photos, server.base_url, root / "photos.tsv")
    return server, tsv
