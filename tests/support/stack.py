"""The embedded stack as the tests drive it: its processes, and its deployments run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

NODE_RESOURCE = "sim_node_2"  # the custom resource of the multi-node simulation's second node
TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def stack_processes(cfg) -> set[int]:
    """PIDs of every process in the process groups of the stack's recorded services and extra Ray nodes."""
    from nsarm import processes, stack

    names = [svc.name for svc in stack.services(cfg)] + [processes.node_file_name(n)
                                                          for n in processes.node_names(cfg)]
    groups = {pid for name in names if (pid := processes.read_pid(cfg, name))}
    return set().union(*(processes.group_members(g) for g in groups))


def submit_deployment(cfg, name: str, params: dict | None = None) -> str:
    """`prefect deployment run NAME -p k=v …` as a user types it, from another process, against the stack `cfg`,
    without waiting; returns the flow run id."""
    args = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", name]
    for k, v in (params or {}).items():
        args += ["-p", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    out = subprocess.run(args, env={**os.environ, **cfg.client_env()}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout).group(1)


def prefect_api(cfg):
    """A requests.Session for the stack's Prefect REST API with its auth header and CSRF token."""
    from nsarm import stack

    return stack.prefect_session(cfg)


def flow_run(cfg, run_id: str) -> dict:
    return prefect_api(cfg).get(f"{cfg.prefect_url}/flow_runs/{run_id}", timeout=10).json()


def wait_flow_run(cfg, run_id: str, timeout: float) -> dict:
    """Poll the Prefect API until the flow run is terminal; returns its JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = flow_run(cfg, run_id)
        if run["state"]["type"] in TERMINAL_STATES:
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not terminal after {timeout:.0f} s")


def run_deployment_cli(cfg, name: str, params: dict | None = None, timeout: float = 900) -> dict:
    """submit_deployment, then wait until the flow run is terminal. Returns the flow run JSON."""
    return wait_flow_run(cfg, submit_deployment(cfg, name, params), timeout)
