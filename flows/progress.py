"""Long work made visible: the libraries' progress lines go into the flow run's Prefect log, and `follow()` prints a
flow run's log as it grows (what `make demo` shows instead of minutes of silence).

Libraries log through the standard `logging` module (dataset/progress.py formats the lines); a flow calls
`forward_library_logs()` first, which attaches Prefect's API log handler to those loggers. Records emitted in a
task's thread (or in a thread started with a copy of its context, nsarm/train/progress.py) carry the run's id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests

LIBRARY_LOGGERS = ("dataset", "degradation", "captioning", "nsarm")
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def forward_library_logs(level: int = logging.INFO) -> None:
    """Send the libraries' records at `level` and above to the current flow run's log (idempotent)."""
    from prefect.logging.handlers import APILogHandler

    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            logger.addHandler(APILogHandler())


def name_ray_job(title: str) -> None:
    """Join Ray now, so the Ray job of this flow run is named `title (flow run <name>)` in the dashboard rather
    than by the process's command line (`python -m prefect.engine`); no-op when Ray is already joined."""
    from prefect.runtime import flow_run

    from dataset.distributed import connect

    connect(job_name=f"{title} (flow run {flow_run.name})")


def read_logs(api_url: str, flow_run_id: str, offset: int = 0, limit: int = 200, session=None) -> list[dict]:
    """The flow run's log records (its tasks' included) from the Prefect API, oldest first, from `offset`.

    `session`: a requests.Session carrying the API's credentials (nsarm.stack.prefect_session for the embedded
    stack, whose Prefect refuses unauthenticated calls); plain `requests` when None."""
    body = {"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "TIMESTAMP_ASC", "offset": offset,
            "limit": limit}
    resp = (session or requests).post(f"{api_url.rstrip('/')}/logs/filter", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def follow(api_url: str, flow_run_id: str, echo: Callable[[str], None] = print, poll_s: float = 2.0,
           timeout_s: float = 3600, session=None) -> dict:
    """Echo each new log message of the flow run until it is terminal; returns the flow run's final JSON.
    `session` as in read_logs.

    Raises:
        TimeoutError: not terminal after `timeout_s` (the run keeps going on the server).
    """
    seen, deadline = 0, time.monotonic() + timeout_s

    def drain(seen: int) -> int:
        while batch := read_logs(api_url, flow_run_id, offset=seen, session=session):
            for record in batch:
                echo(record["message"])
            seen += len(batch)
        return seen

    while True:
        run = (session or requests).get(f"{api_url.rstrip('/')}/flow_runs/{flow_run_id}", timeout=30).json()
        seen = drain(seen)
        if run["state"]["type"] in TERMINAL:
            time.sleep(poll_s)  # the run's last records are sent in batches, after its final state
            drain(seen)
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
