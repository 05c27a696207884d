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


NODE_RESOURCE = "sim_node_2"  # the custom resource of the multi-node simulation's second node
