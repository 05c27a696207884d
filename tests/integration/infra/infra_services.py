"""Process helpers for the infra integration tests (a plain module: `import conftest` is ambiguous in this tree)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group we started (servers spawn workers), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
    try:  # children still in the group after the parent went
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if the server process died."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


# ------------------------------------------------------------------------------------------ the simulated cluster
TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def submit_deployment(cfg, name: str, params: dict) -> str:
    """`prefect deployment run NAME -p k=v …` against the stack `cfg` without waiting; returns the flow run id."""
    import json
    import re
    import sys

    args = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", name]
    for k, v in params.items():
        args += ["-p", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    out = subprocess.run(args, env={**os.environ, **cfg.client_env()}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout).group(1)


def flow_run(cfg, run_id: str) -> dict:
    import requests

    return requests.get(f"{cfg.prefect_url}/flow_runs/{run_id}", timeout=10).json()


def wait_flow_run(cfg, run_id: str, timeout: float) -> dict:
    """Poll the Prefect API until the flow run is terminal; returns its JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = flow_run(cfg, run_id)
        if run["state"]["type"] in TERMINAL_STATES:
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not terminal after {timeout:.0f} s")


def ray_state(cfg, kind: str, **filters: str) -> list[dict]:
    """Ray's state API (`/api/v0/{kind}`: nodes, actors, tasks, workers) over the stack dashboard's REST endpoint with
    the stack's token, so the test process never joins the cluster. `filters` are equality filters."""
    import urllib.parse

    import requests

    query = [("limit", "10000"), ("detail", "true")]
    for key, value in filters.items():
        query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    token = cfg.ray_token_path.read_text().strip()
    r = requests.get(f"{cfg.ray_dashboard}/api/v0/{kind}?{urllib.parse.urlencode(query)}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]["result"]
