"""Fetch image bytes: HTTP(S) with hard time limits, bounded retries, opt-out and size checks; local/s3 files.

No request can hang a shard: the connect and read timeouts bound each socket wait, and a per-attempt deadline
(`total_timeout`) is checked between body reads, which return after every `recv` (urllib3 `read1`), so a server
trickling one byte a second is cut off too. Redirects are followed by hand so that every hop is scheme-checked
(`file:`, `ftp:`, `data:`… are rejected, never fetched) and counted (`too_many_redirects` on loops).
Failures come back as a reason code (`Fetched.error`) for the shard's error histogram; nothing here raises.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import fsspec
import requests

from dataset.config import ShardConfig

_ALLOWED_SCHEMES = ("http", "https")
_OK_CONTENT_TYPES = ("application/octet-stream", "binary/octet-stream", "")  # servers that do not know
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # the body, or None on failure
    error: str | None = None  # reason code: http_404, timeout, too_many_redirects, unsupported_scheme, …
    detail: str = ""  # human-readable message for the parquet
    http_status: int | None = None
    attempts: int = 0
    seconds: float = 0.0


class _Fail(Exception):
    def __init__(self, reason: str, detail: str = "", status: int | None = None, final: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status, self.final = reason, detail, status, final


def robots_opt_out(header: str | None) -> str | None:
    """The `noai`/`noimageai` directive in an X-Robots-Tag value, or None.

    Directives may be scoped to a user agent (`somebot: noai`); we honour every scoped opt-out as well, since
    the site owner's intent is plain and a false positive only costs one image.
    """
    if not header:
        return None
    tokens = set(re.split(r"[\s,:]+", header.lower()))
    for directive in ("noai", "noimageai"):
        if directive in tokens:
            return directive
    return None


def _session(cfg: ShardConfig) -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = cfg.user_agent
    # trust_env stays on: clusters often reach the internet only through HTTP(S)_PROXY
    return s


def _one_attempt(url: str, cfg: ShardConfig, session: requests.Session) -> tuple[bytes, int]:
    deadline = time.monotonic() + cfg.total_timeout
    for _hop in range(cfg.max_redirects + 1):
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _ALLOWED_SCHEMES:
            raise _Fail("unsupported_scheme", f"{scheme or 'no'} scheme in {url[:200]!r}", final=True)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Fail("timeout", f"total deadline {cfg.total_timeout}s")
        resp = session.get(url, stream=True, allow_redirects=False,
                           timeout=(min(cfg.connect_timeout, remaining), min(cfg.read_timeout, remaining)))
        try:
            if resp.is_redirect:
                url = urljoin(url, resp.headers["location"])
                continue
            status = resp.status_code
            if status >= 400:
                raise _Fail(f"http_{status}", resp.reason or "", status, final=status not in _RETRY_STATUS)
            if cfg.respect_robots and (directive := robots_opt_out(resp.headers.get("X-Robots-Tag"))):
                raise _Fail("robots_opt_out", f"X-Robots-Tag: {directive}", status, final=True)
            ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if not ctype.startswith("image/") and ctype not in _OK_CONTENT_TYPES:
                raise _Fail("bad_content_type", ctype, status, final=True)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_body_bytes:
                raise _Fail("too_large", f"Content-Length {length} > {cfg.max_body_bytes}", status, final=True)
            return _read_body(resp, cfg, deadline), status
        finally:
            resp.close()
    raise _Fail("too_many_redirects", f"more than {cfg.max_redirects} redirects", final=True)


def _read_body(resp: requests.Response, cfg: ShardConfig, deadline: float) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = resp.raw.read1(1 << 16, decode_content=True)  # returns after one recv: the deadline stays live
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cfg.max_body_bytes:
            raise _Fail("too_large", f"body exceeds {cfg.max_body_bytes} bytes", resp.status_code, final=True)
        if time.monotonic() > deadline:
            raise _Fail("timeout", f"body not complete after {cfg.total_timeout}s", resp.status_code)
        chunks.append(chunk)


def _classify(e: Exception) -> _Fail:
    name = type(e).__name__
    if isinstance(e, _Fail):
        return e
    if isinstance(e, (requests.Timeout, socket.timeout, TimeoutError)) or "Timeout" in name:
        return _Fail("timeout", f"{name}: {e}"[:300])
    if isinstance(e, requests.exceptions.InvalidSchema):
        return _Fail("unsupported_scheme", str(e)[:300], final=True)
    if isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, ValueError)):
        return _Fail("invalid_url", f"{name}: {e}"[:300], final=True)
    if isinstance(e, (requests.ConnectionError, ConnectionError)) or "Protocol" in name:
        return _Fail("connection_error", f"{name}: {e}"[:300])
    return _Fail("download_error", f"{name}: {e}"[:300])


def fetch_url(url: str, cfg: ShardConfig, session: requests.Session | None = None) -> Fetched:
    """GET an image URL with retries (exponential backoff) on timeouts, connection errors, 429 and 5xx."""
    session = session or _session(cfg)
    t0, last = time.monotonic(), _Fail("download_error", "no attempt")
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff * 2 ** (attempt - 1))
        try:
            data, status = _one_attempt(url, cfg, session)
            return Fetched(data, None, "", status, attempt + 1, time.monotonic() - t0)
        except Exception as e:  # every failure becomes a reason; the shard goes on
            last = _classify(e)
            if last.final:
                break
    return Fetched(None, last.reason, last.detail, last.status, attempt + 1, time.monotonic() - t0)


def read_file(path: str, cfg: ShardConfig) -> Fetched:
    """Read a local or s3:// image file (folder sources), with the same size limit as downloads."""
    t0 = time.monotonic()
    try:
        fs, p = fsspec.core.url_to_fs(path)
        size = fs.size(p)
        if size is not None and size > cfg.max_body_bytes:
            return Fetched(None, "too_large", f"{size} bytes > {cfg.max_body_bytes}", None, 1, time.monotonic() - t0)
        with fs.open(p, "rb") as f:
            data = f.read(cfg.max_body_bytes + 1)
        if len(data) > cfg.max_body_bytes:
            return Fetched(None, "too_large", f"> {cfg.max_body_bytes} bytes", None, 1, time.monotonic() - t0)
        return Fetched(data, None, "", None, 1, time.monotonic() - t0)
    except FileNotFoundError as e:
        return Fetched(None, "not_found", str(e)[:300], None, 1, time.monotonic() - t0)
    except Exception as e:
        return Fetched(None, "read_error", f"{type(e).__name__}: {e}"[:300], None, 1, time.monotonic() - t0)


class Fetcher:
    """Per-thread `requests.Session`s (a Session is not thread-safe) in front of `fetch_url` / `read_file`."""

    def __init__(self, cfg: ShardConfig):
        self.cfg = cfg
        self._local = threading.local()

    def __call__(self, source: str, origin: str = "url") -> Fetched:
        if origin == "file":
            return read_file(source, self.cfg)
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _session(self.cfg)
        return fetch_url(source, self.cfg, session)


T = TypeVar("T")
R = TypeVar("R")


def imap_ordered(fn: Callable[[T], R], items: Iterable[T], threads: int, window: int | None = None,
                 timeout: float | None = None, on_timeout: Callable[[T], R] | None = None) -> Iterator[R]:
    """`map(fn, items)` on a thread pool, results in input order, at most `window` in flight.

    The bounded window keeps memory flat however long the shard is (ThreadPoolExecutor.map would submit
    everything at once and hold every finished result until it is consumed). `timeout` is a watchdog for what
    the socket timeouts cannot bound (a DNS lookup stuck in getaddrinfo, a wedged decoder): an item without a
    result `timeout` seconds after we start waiting for it yields `on_timeout(item)` and is abandoned (its
    thread is left to finish on its own; the pool is not joined).
    """
    window = window or 2 * threads
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
    pending: deque = deque()

    def result(fut, item):
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            if on_timeout is None:
                raise
            fut.cancel()
            return on_timeout(item)

    try:
        for item in items:
            pending.append((pool.submit(fn, item), item))
            if len(pending) >= window:
                yield result(*pending.popleft())
        while pending:
            yield result(*pending.popleft())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
