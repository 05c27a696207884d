"""HTTP download against a real local server: status codes, retries, hangs, trickles, redirects, schemes,
content types, opt-outs and size limits — each ends in a reason code, never an exception or a hang."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from dataset.download import Fetcher, fetch_url, imap_ordered, robots_opt_out

pytestmark = pytest.mark.integration


def test_good_image(hostile_server, hostile_files_, fast_cfg):
    got = fetch_url(hostile_server.url("files/plain.jpg"), fast_cfg)
    assert got.error is None and got.data == hostile_files_["plain.jpg"] and got.http_status == 200


def test_404_is_final_and_500_is_retried(hostile_server, fast_cfg):
    before = dict(hostile_server.hits)  # the server is shared by the session: count this test's requests
    got = fetch_url(hostile_server.url("status/404"), fast_cfg)
    assert (got.error, got.attempts, got.data) == ("http_404", 1, None)
    assert hostile_server.hits["status/404"] - before.get("status/404", 0) == 1
    got = fetch_url(hostile_server.url("status/500"), fast_cfg)
    assert (got.error, got.attempts) == ("http_500", 2)  # retries=1
    assert hostile_server.hits["status/500"] - before.get("status/500", 0) == 2


@pytest.mark.parametrize("path", ["hang", "trickle"])
def test_a_server_that_never_finishes_times_out(hostile_server, fast_cfg, path):
    cfg = fast_cfg.override(retries=0)
    t0 = time.monotonic()
    got = fetch_url(hostile_server.url(path), cfg)
    elapsed = time.monotonic() - t0
    assert got.error == "timeout", got
    assert elapsed < cfg.total_timeout + 1.5  # the deadline, not the server, ends the request


def test_redirect_loop_and_redirect_to_file_scheme(hostile_server, fast_cfg):
    before = hostile_server.hits.get("redirect-loop", 0)
    got = fetch_url(hostile_server.url("redirect-loop"), fast_cfg)
    assert got.error == "too_many_redirects" and got.attempts == 1
    assert hostile_server.hits["redirect-loop"] - before == fast_cfg.max_redirects + 1
    got = fetch_url(hostile_server.url("redirect?to=file:///etc/passwd"), fast_cfg)
    assert got.error == "unsupported_scheme" and got.data is None
    ok = fetch_url(hostile_server.url(f"redirect?to={hostile_server.url('files/plain.jpg')}"), fast_cfg)
    assert ok.error is None and ok.data


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:image/png;base64,AAAA",
                                 "gopher://127.0.0.1/", "/etc/passwd", "javascript:alert(1)"])
def test_non_http_schemes_are_never_fetched(url, fast_cfg):
    got = Fetcher(fast_cfg)(url, "url")
    assert got.error == "unsupported_scheme" and got.data is None and got.attempts == 1


def test_html_content_type_is_refused(hostile_server, fast_cfg):
    got = fetch_url(hostile_server.url("files/page.html"), fast_cfg)
    assert got.error == "bad_content_type" and "text/html" in got.detail


def test_x_robots_tag_opt_out(hostile_server, fast_cfg):
    got = fetch_url(hostile_server.url("noai/plain.jpg"), fast_cfg)
    assert got.error == "robots_opt_out" and "noai" in got.detail
    got = fetch_url(hostile_server.url("noai/plain.jpg"), fast_cfg.override(respect_robots=False))
    assert got.error is None and got.data
    assert robots_opt_out("otherbot: noimageai") == "noimageai" and robots_opt_out("noindex, nofollow") is None


def test_body_size_limits(hostile_server, fast_cfg, hostile_files_):
    got = fetch_url(hostile_server.url("huge"), fast_cfg)
    assert got.error == "too_large"
    small = fast_cfg.override(max_body_bytes=1000)  # the real file is larger than the limit while reading
    assert fetch_url(hostile_server.url("as-image/plain.jpg"), small).error == "too_large"


def test_connection_refused_is_retried_then_recorded(fast_cfg):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = fetch_url(f"http://127.0.0.1:{port}/x.jpg", fast_cfg)
    assert got.error == "connection_error" and got.attempts == 2


def test_imap_ordered_keeps_order_and_bounds_in_flight():
    lock, state = threading.Lock(), {"done": 0, "backlog": 0}

    def work(i):
        time.sleep(0.002 * (i % 3))
        with lock:
            state["done"] += 1
        return i * i

    out = []
    for r in imap_ordered(work, range(60), threads=4, window=6):
        out.append(r)
        time.sleep(0.01)  # a slow consumer: finished results must not pile up beyond the window
        with lock:
            state["backlog"] = max(state["backlog"], state["done"] - len(out))
    assert out == [i * i for i in range(60)] and state["backlog"] <= 6


def test_imap_ordered_watchdog_abandons_a_stuck_item():
    release = threading.Event()

    def work(i):
        if i == 2:
            release.wait(30)  # e.g. getaddrinfo stuck: no socket timeout applies
        return i

    t0 = time.monotonic()
    out = list(imap_ordered(work, range(5), threads=2, timeout=0.5, on_timeout=lambda i: -i))
    release.set()
    assert out == [0, 1, -2, 3, 4] and time.monotonic() - t0 < 5
