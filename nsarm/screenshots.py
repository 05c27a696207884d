"""Headless-browser screenshots of the embedded stack's three UIs: the Prefect deployments and flow-runs pages, the
MLflow registry page of model `nsarm` and the Ray dashboard's Jobs page — as PNGs plus the text each page showed.

    nsarm screenshots --out DIR         # the stack of $NSARM_STATE_DIR and the default ports (or --state-dir, --*-port)

The browser is Chromium from the distribution (`apt-get install chromium`), driven by Playwright's Python driver
(PyPI `playwright`; its browser downloads are never used: we launch the system binary). Each page is loaded, then we
wait until the single-page app has rendered the data we expect (texts, an element), never a fixed sleep; a page that
does not get there within the timeout is still captured, and its missing texts are reported.
Only HTTP here: the pages are what a person would see, with no Prefect or MLflow client involved.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nsarm import stack

VIEWPORT = (1280, 800)  # (width, height) of the PNGs: a laptop-sized window (Page.height overrides the height)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEPLOYMENTS = ("build-dataset", "train-nsarm")
INSTALL_HINT = "install it with `sudo apt-get install -y chromium` (Debian/Ubuntu), or set NSARM_CHROMIUM=/path/to/it"


class ScreenshotError(RuntimeError):
    """Chromium or its driver is missing, a UI did not answer, or a page never showed what it should."""


class BrowserMissing(ScreenshotError):
    """No Chromium binary or no `playwright` package: nothing can be captured on this machine."""


@dataclass(frozen=True)
class Page:
    name: str  # file stem of the PNG / text
    url: str
    expect: tuple[str, ...] = ()  # visible texts (case-sensitive) that mean the app has rendered its data
    selector: str | None = None  # and elements that must exist (e.g. table rows), if given …
    min_count: int = 1  # … at least this many of them
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request of this page only
    height: int = VIEWPORT[1]  # a taller window for a list that should show all its rows
    local_storage: dict[str, str] = field(default_factory=dict)  # set before the app starts (its UI preferences)


@dataclass(frozen=True)
class Shot:
    page: Page
    png: Path
    text: str  # document.body.innerText when captured
    html: str  # the DOM (document.documentElement.outerHTML) when captured
    missing: tuple[str, ...]  # expected texts (or the selector) that never showed up; () when complete


def find_chromium() -> str:
    """The Chromium binary: $NSARM_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("NSARM_CHROMIUM")
    if explicit:
        if not Path(explicit).is_file():
            raise BrowserMissing(f"NSARM_CHROMIUM={explicit} is not a file; {INSTALL_HINT}")
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserMissing(f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)}); {INSTALL_HINT}")


def stack_pages(cfg: stack.StackConfig, model: str = "nsarm", aliases: tuple[str, ...] = ("champion", "stage2"),
                deployments: tuple[str, ...] = DEPLOYMENTS) -> list[Page]:
    """The four pages that show a finished demo: both deployments, their completed runs, the registered model with
    its aliases, and Ray's jobs (the dashboard needs the stack's bearer token: Ray token authentication)."""
    ray_headers = {}
    if cfg.ray_token_path.exists() and not cfg.ray_address:
        ray_headers = {"Authorization": f"Bearer {cfg.ray_token_path.read_text().strip()}"}
    # Prefect's UI signs in with the stack's auth string, kept (base64) in the browser's local storage
    auth = cfg.prefect_auth()
    prefect_login = {"prefect-password": base64.b64encode(auth.encode()).decode()} if auth else {}
    ui = cfg.prefect_ui
    return [
        # The activity sparkline of each deployment row gets its run bars from a later request than the names.
        Page("prefect-deployments", f"{ui}/deployments", expect=deployments,
             selector=".flow-runs-bar-chart__bar-flow-run", min_count=len(deployments), local_storage=prefect_login),
        # The run list starts below a filter bar and a chart: 1200 px show the first four runs.
        Page("prefect-flow-runs", f"{ui}/runs", expect=(*deployments, "Completed"), height=1200,
             local_storage=prefect_login),
        # MLflow 3 opens its "Assistant" side panel on a browser's first visit, over half the versions table:
        # mark it as already shown and closed, as a returning user has it.
        Page("mlflow-model", f"{cfg.mlflow_url}/#/models/{model}", expect=(model, "Version", *aliases),
             local_storage={"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
                            "mlflow.assistant.panelOpen_v1": "false"}),
        # A job row of the table: the drivers of the flows' Ray tasks and of Ray Train show up as jobs.
        Page("ray-jobs", f"{cfg.ray_dashboard}/#/jobs", expect=("Job List",), selector="tbody tr", headers=ray_headers),
    ]


def _missing(pw_page, page: Page) -> tuple[str, ...]:
    """The expected texts not in the page's visible text now (and the selector, if it matches too few)."""
    body = pw_page.inner_text("body")
    missing = tuple(t for t in page.expect if t not in body)
    if page.selector and len(pw_page.query_selector_all(page.selector)) < page.min_count:
        missing += (f"{page.min_count} x element {page.selector!r}",)
    return missing


def _wait_rendered(pw_page, page: Page, timeout_ms: float) -> tuple[str, ...]:
    """Wait until every expected text is in the page's visible text (and the selector matches); the missing ones
    on timeout. The app keeps fetching after `load`, so polling the DOM is the only honest 'ready' signal."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    script = """([texts, sel, n]) => {
        const body = document.body ? document.body.innerText : "";
        return texts.every(t => body.includes(t)) && (!sel || document.querySelectorAll(sel).length >= n);
    }"""
    try:
        pw_page.wait_for_function(script, arg=[list(page.expect), page.selector, page.min_count],
                                  timeout=max(timeout_ms, 1), polling=250)
        return ()
    except PlaywrightTimeout:
        return _missing(pw_page, page)


def capture(pages: list[Page], out_dir: str | Path, timeout_s: float = 60.0, echo=print) -> list[Shot]:
    """Load each page in headless Chromium (fresh context each: its own headers and cookies), wait for its
    content, save `<out_dir>/<name>.png` (VIEWPORT-sized) and `<name>.txt` (the visible text).

    Raises:
        ScreenshotError: no Chromium / no Playwright, or a page's URL did not answer (connection refused, HTTP
            error) — the message names the URL. Content that never rendered is not an error here: see Shot.missing.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise BrowserMissing("the Python package `playwright` is missing: `.venv/bin/pip install -e '.[dev]'` "
                              "(never `playwright install`: we drive the system Chromium)") from e
    chromium = find_chromium()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as pw:
        try:
            # --no-sandbox: Chromium refuses to sandbox as root (containers, CI); the pages are our own local UIs.
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        except PlaywrightError as e:
            raise ScreenshotError(f"could not start Chromium at {chromium}: {e}; {INSTALL_HINT}") from e
        try:
            for page in pages:
                shots.append(_capture_one(browser, page, out, timeout_s, echo))
        finally:
            browser.close()
    return shots


def _capture_one(browser, page: Page, out: Path, timeout_s: float, echo) -> Shot:
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport={"width": VIEWPORT[0], "height": page.height},
                                  extra_http_headers=page.headers or None)
    try:
        if page.local_storage:
            context.add_init_script(f"for (const [k, v] of Object.entries({json.dumps(page.local_storage)})) "
                                    "window.localStorage.setItem(k, v);")
        pw_page = context.new_page()
        try:
            response = pw_page.goto(page.url, wait_until="load", timeout=timeout_s * 1000)
        except PlaywrightError as e:
            raise ScreenshotError(f"{page.name}: {page.url} did not answer ({str(e).splitlines()[0]}); is the "
                                  f"stack up? (`nsarm stack status`)") from e
        if response is not None and response.status >= 400:
            raise ScreenshotError(f"{page.name}: {page.url} answered HTTP {response.status}")
        png = out / f"{page.name}.png"
        deadline = time.monotonic() + timeout_s
        while True:
            missing = _wait_rendered(pw_page, page, (deadline - time.monotonic()) * 1000)
            pw_page.screenshot(path=str(png))
            text, html = pw_page.inner_text("body"), pw_page.content()
            if missing:
                break
            # The apps re-render their lists on a refresh timer: keep the capture only if the content was still
            # there right after the screenshot, else wait for it again.
            missing = _missing(pw_page, page)
            if not missing or time.monotonic() > deadline:
                break
        (out / f"{page.name}.txt").write_text(text)
    finally:
        context.close()
    echo(f"{page.name:20s} {png}" + (f"   (never showed: {', '.join(missing)})" if missing else ""))
    return Shot(page, png, text, html, missing)


def capture_stack(cfg: stack.StackConfig, out_dir: str | Path, timeout_s: float = 60.0, echo=print) -> list[Shot]:
    """The four stack_pages(cfg) captured into `out_dir`; raises ScreenshotError listing every page that never
    showed its expected content (after saving all of them, so the PNGs can be looked at)."""
    shots = capture(stack_pages(cfg), out_dir, timeout_s, echo)
    incomplete = [f"{s.page.url} never showed {', '.join(s.missing)} (see {s.png})" for s in shots if s.missing]
    if incomplete:
        raise ScreenshotError("incomplete screenshots:\n  " + "\n  ".join(incomplete))
    return shots


# --------------------------------------------------------------------------------------------------------------
# CLI


def register(sub) -> None:
    p = sub.add_parser("screenshots", help="PNG screenshots of the stack's Prefect, MLflow and Ray UIs (Chromium)")
    p.add_argument("--out", required=True, help="folder for <page>.png and <page>.txt")
    p.add_argument("--state-dir", help="the stack's state dir (default $NSARM_STATE_DIR or ./.nsarm)")
    p.add_argument("--prefect-port", type=int)
    p.add_argument("--mlflow-port", type=int)
    p.add_argument("--ray-dashboard-port", type=int)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per page to load and render (default 60)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    cfg = stack.StackConfig.from_env(state_dir=args.state_dir, prefect_port=args.prefect_port,
                                     mlflow_port=args.mlflow_port, ray_dashboard_port=args.ray_dashboard_port)
    try:
        capture_stack(cfg, args.out, args.timeout)
    except ScreenshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
