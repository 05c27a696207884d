"""Hostile inputs for tests and benchmarks: generated broken/odd image files and a misbehaving HTTP server.

    files = hostile_files(real_photo_path)              # {name: bytes}: zero-byte, truncated, CMYK, 16-bit, bomb…
    with HostileServer(files) as srv: srv.url("files/cmyk.jpg"), srv.url("hang"), srv.hits["status/500"]

Endpoints: files/<name> (content type from the extension), as-image/<name> (claims image/jpeg), slow/<name>,
noai/<name> (X-Robots-Tag), status/<code>, hang, trickle, huge, redirect-loop, redirect?to=<url>.

Everything is derived from a real photograph (so the "good but unusual" files decode to real content) and is
deterministic. The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

# The outcome the shard stage must record for each file (status, reason); None reason = success.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "zero.jpg": ("failed_to_process", "empty"),
    "truncated.jpg": ("failed_to_process", "decode_error"),
    "random.jpg": ("failed_to_process", "not_an_image"),
    "page.html": ("failed_to_process", "not_an_image"),  # served as image/jpeg: caught by the magic bytes
    "plain.jpg": ("success", None),  # the reference the converted variants are compared with
    "cmyk.jpg": ("success", None),
    "gray16.png": ("success", None),
    "rgba.png": ("success", None),
    "la.png": ("success", None),
    "palette.gif": ("success", None),
    "exif6.jpg": ("success", None),
    "one.png": ("failed_to_process", "too_small"),
    "bomb.png": ("failed_to_process", "decompression_bomb"),
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header claims width×height 1-bit pixels, a few KB on disk: the first rows are real zlib data,
    which is all a decoder would see before committing width*height/8 bytes of memory."""
    raw_row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(raw_row * 64, 9)  # 64 valid rows; the rest is missing (a bomb is rejected before that)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def hostile_files(photo: str | Path, size: int = 320) -> dict[str, bytes]:
    """Hostile and unusual encodings of one real photo (resized so its short side is `size`)."""
    with Image.open(photo) as im0:
        im = im0.convert("RGB")
    w, h = im.size
    im = im.resize((max(size, round(w * size / min(w, h))), max(size, round(h * size / min(w, h)))))
    rgb = np.asarray(im)
    jpeg = _encode(im, "JPEG", quality=90)
    rng = np.random.default_rng(0)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[: rgb.shape[0] // 2, :, 3] = 0  # top half fully transparent → must become white
    gray16 = (np.asarray(im.convert("L")).astype(np.uint16) * 257)
    la = np.dstack([np.asarray(im.convert("L")), np.full(rgb.shape[:2], 128, np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    return {
        "zero.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "page.html": b"<!doctype html><html><body><h1>Not found</h1></body></html>",
        "plain.jpg": jpeg,
        "cmyk.jpg": _encode(im.convert("CMYK"), "JPEG", quality=90),
        "gray16.png": _encode(Image.fromarray(gray16), "PNG"),
        "rgba.png": _encode(Image.fromarray(rgba), "PNG"),
        "la.png": _encode(Image.frombytes("LA", im.size, la.tobytes()), "PNG"),
        "palette.gif": _encode(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF"),
        "exif6.jpg": _encode(im, "JPEG", quality=90, exif=exif.tobytes()),
        "one.png": _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        "bomb.png": bomb_png(),
    }


_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".html": "text/html"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - base class signature
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server naming
        parts = urlsplit(self.path)
        path = parts.path.lstrip("/")
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
        head, _, name = path.partition("/")
        files = self.server.files
        if head == "files" and name in files:  # honest content type from the extension
            return self._send(200, files[name], _TYPES.get(Path(name).suffix, "application/octet-stream"))
        if head == "slow" and name in files:  # an honest but slow server (kill-and-resume tests)
            self.server.stop.wait(self.server.delay)
            return self._send(200, files[name], _TYPES.get(Path(name).suffix, "application/octet-stream"))
        if head == "as-image" and name in files:  # anything, claimed to be a JPEG
            return self._send(200, files[name], "image/jpeg")
        if head == "noai" and name in files:
            return self._send(200, files[name], "image/jpeg", {"X-Robots-Tag": "noindex, noai"})
        if head == "status":
            return self._send(int(name), b"error page", "text/html")
        if path == "hang":  # accept, read the request, never answer
            self.server.stop.wait(60)
            return None
        if path == "trickle":  # headers at once, then one byte every 0.2 s: defeats a per-read timeout
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(100000):
                if self.server.stop.is_set():
                    return None
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.2)
            return None
        if path == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            return None
        if path == "redirect-loop":
            return self._send(302, b"", "text/html", {"Location": "/redirect-loop"})
        if path == "redirect":
            return self._send(302, b"", "text/html", {"Location": parse_qs(parts.query)["to"][0]})
        return self._send(404, b"not here", "text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    hits: dict[str, int]
    lock: threading.Lock
    stop: threading.Event
    delay: float


class HostileServer:
    """HTTP server on 127.0.0.1 with misbehaving endpoints; `hits[path]` counts requests per path."""

    def __init__(self, files: dict[str, bytes], delay: float = 0.3):
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.delay = delay  # seconds before /slow/<name> answers
        self.httpd.files, self.httpd.hits = dict(files), {}
        self.httpd.lock, self.httpd.stop = threading.Lock(), threading.Event()
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hostile-server", daemon=True)

    @property
    def hits(self) -> dict[str, int]:
        return self.httpd.hits

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.stop.set()  # releases /hang and /trickle handlers
        self.httpd.shutdown()
        self.httpd.server_close()
