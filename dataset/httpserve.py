"""Serve a folder of images over HTTP on 127.0.0.1 (threaded), for tests and the demo.

    nsarm serve-photos DIR [--port 8800]    # exports the bundled photos into DIR/photos, writes DIR/photos.tsv, serves

`PhotoServer` serves the files as they are (query strings ignored): `with PhotoServer(folder) as srv: srv.url("a.jpg")`.
`ImgixServer` renders them the way the imgix CDN behind images.unsplash.com does (docs.imgix.com, Rendering API),
so the Unsplash path meets the CDN's defaults in tests and the demo:
    w, h     target box; with only one of them the other follows the aspect ratio
    fit      clip (imgix's default): scale to the box, ENLARGING a smaller photo; max: the same but never enlarge
    fm       png (lossless), jpg/pjpg, webp; absent: the source's own format
    q        quality of the lossy formats, default 75 (imgix's default)
A request without parameters gets the original bytes. Every request is recorded (`srv.requests`: path and
query dict) so tests can check what a builder asked for. Other fit modes and fm values answer 400.
"""

from __future__ import annotations

import functools
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from PIL import Image

IMGIX_DEFAULT_QUALITY = 75  # imgix's `q` default for lossy output
_FIT_MODES = ("clip", "max")
_FORMATS = {"png": "PNG", "jpg": "JPEG", "pjpg": "JPEG", "webp": "WEBP"}
_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class _QuietHandler(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        # Unsplash-style URLs carry size parameters (?w=1024); a static folder ignores them.
        return super().translate_path(path.split("?", 1)[0])

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def imgix_size(src: tuple[int, int], w: int | None, h: int | None, fit: str) -> tuple[int, int]:
    """Output size of imgix's `clip`/`max` fit for a `src` (width, height) photo and a w/h box."""
    sw, sh = src
    scales = [s for s in (w / sw if w else None, h / sh if h else None) if s is not None]
    scale = min(scales) if scales else 1.0
    if fit == "max":
        scale = min(scale, 1.0)
    return max(1, round(sw * scale)), max(1, round(sh * scale))


def imgix_render(data: bytes, query: dict[str, str]) -> tuple[bytes, str]:
    """Render image bytes as imgix would for `query` (w, h, fit, fm, q). Returns (bytes, content type).

    Raises:
        ValueError: a parameter value this fake does not implement or a malformed number.
    """
    fit = query.get("fit", "clip")
    if fit not in _FIT_MODES:
        raise ValueError(f"fit={fit!r} not implemented (only {_FIT_MODES})")
    w, h = (int(query[k]) if query.get(k) else None for k in ("w", "h"))
    quality = int(query.get("q", IMGIX_DEFAULT_QUALITY))
    with Image.open(io.BytesIO(data)) as im:
        fmt = _FORMATS.get(query["fm"]) if "fm" in query else im.format
        if fmt not in _CONTENT_TYPES:
            raise ValueError(f"fm={query.get('fm', im.format)!r} not implemented (only {sorted(_FORMATS)})")
        im.load()
        out = im.convert("RGB") if fmt == "JPEG" or im.mode not in ("RGB", "RGBA", "L", "LA") else im
        size = imgix_size(im.size, w, h, fit)
        if size != im.size:
            out = out.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, fmt, **({} if fmt == "PNG" else {"quality": quality}))
    return buf.getvalue(), _CONTENT_TYPES[fmt]


class _ImgixHandler(_QuietHandler):
    def do_GET(self):  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self.server.lock:
            self.server.requests.append((unquote(parts.path).lstrip("/"), query))
        if not query:
            return super().do_GET()
        path = Path(self.translate_path(parts.path))
        if not path.is_file():
            return self.send_error(404)
        try:
            body, ctype = imgix_render(path.read_bytes(), query)
        except ValueError as e:
            return self.send_error(400, str(e))
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PhotoServer:
    """A static file server on 127.0.0.1 in a background thread. Port 0 picks a free port."""

    handler = _QuietHandler

    def __init__(self, folder: str | Path, port: int = 0, host: str = "127.0.0.1"):
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"cannot serve {folder}: not a directory")
        handler = functools.partial(self.handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests, self.httpd.lock = [], threading.Lock()
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


class ImgixServer(PhotoServer):
    """A `PhotoServer` that renders `?w=&h=&fit=&fm=&q=` like imgix; `requests` lists (path, query) received."""

    handler = _ImgixHandler

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        with self.httpd.lock:
            return list(self.httpd.requests)


def serve_sample_photos(root: str | Path, port: int = 8800) -> tuple[PhotoServer, Path]:
    """Export the bundled photos to `root/photos`, serve them like imgix on `port`, write `root/photos.tsv`."""
    from dataset.samples import export_sample_photos, write_unsplash_tsv

    root = Path(root)
    photos = export_sample_photos(root / "photos")
    server = ImgixServer(root / "photos", port=port).start()
    tsv = write_unsplash_tsv(photos, server.base_url, root / "photos.tsv")
    return server, tsv
