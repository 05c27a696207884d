"""Process bookkeeping of the embedded stack: PID and log files under the state directory, starting a service in its
own session, reading a PID back safely, and stopping whole process groups. Used by nsarm/stack.py (the services)
and nsarm/stack_nodes.py (extra Ray nodes); it knows nothing of either.

    pid = start(cfg, Service("node-n2", ["ray", "start", ...], None, ()))     # pids/node-n2.pid, logs/node-n2.log
    read_pid(cfg, "node-n2")                       # the PID while that command still runs under it, else None
    stop_groups({"node-n2": pid}, grace_s=10)      # SIGTERM the group, SIGKILL what is left: {"node-n2": "stopped"}

`cfg` is anything with a `state_dir` (a StackConfig). Every socket is on HOST, 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

HOST = "127.0.0.1"
NODE_PREFIX = "node-"  # PID/log file prefix of extra Ray nodes, keeps them apart from the services' files


class HasStateDir(Protocol):
    state_dir: Path  # logs/, pids/


class StackError(RuntimeError):
    """A service could not be started (port taken, health timeout, crashed on start)."""

@dataclass
class Service:
    name: str
    cmd: list[str]
    health_url: str | None  # GET answering < 500 means healthy
    ports: tuple[int, ...]  # must be free before start
    env: dict[str, str] = field(default_factory=dict)
    external: str | None = None  # address of an external instance: not managed here
    token_file: Path | None = None  # health checks send this bearer token (Ray dashboard with token auth)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pid_file(cfg: HasStateDir, name: str) -> Path:
    return cfg.state_dir / "pids" / f"{name}.pid"


def log_file(cfg: HasStateDir, name: str) -> Path:
    return cfg.state_dir / "logs" / f"{name}.log"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_pid(cfg: HasStateDir, name: str) -> int | None:
    """The PID we recorded for `name`, if that process still runs with the command line we started."""
    path = pid_file(cfg, name)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
    except (ValueError, KeyError, json.JSONDecodeError):
        return None
    if not alive(pid):
        return None
    try:  # guard against PID reuse: the recorded command must still be what runs under that PID
        # (a console script shows up as "python /path/to/script …", so look at the first few arguments)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:3]
        if args[0] and Path(record["cmd0"]).name not in {Path(a).name for a in args}:
            return None
    except OSError:
        pass
    return pid


def port_owner(port: int) -> str | None:
    """Describe who listens on 127.0.0.1:`port` ('pid 123 (prefect)'), 'unknown process' if taken by someone we
    cannot see, or None when the port is free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return None
        except OSError:
            pass
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:  # psutil missing or access denied: still a clear error without the owner
        pass
    return "unknown process"

def log_tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"

def start(cfg: HasStateDir, svc: Service) -> int:
    for port in svc.ports:
        owner = port_owner(port)
        if owner is not None:
            raise StackError(f"cannot start {svc.name}: port {HOST}:{port} is already in use by {owner}. "
                             f"Stop it, or choose another port (see `nsarm stack up --help`).")
    log = log_file(cfg, svc.name)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_file(cfg, svc.name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, **svc.env}
    # Our own external settings must not leak into local servers (e.g. a Prefect server with PREFECT_API_URL set).
    if svc.name != "deployments":
        for k in ("PREFECT_API_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN"):
            env.pop(k, None)
    with open(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
        # umask 077: the servers' databases, artifacts and Ray's session files are the user's alone. Not for the
        # deployments server: its flows write the user's datasets and checkpoints, wherever the user chose.
        proc = subprocess.Popen(svc.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(Path.cwd()), start_new_session=True,
                                umask=-1 if svc.name == "deployments" else 0o077)
    pid_file(cfg, svc.name).write_text(json.dumps({"pid": proc.pid, "cmd0": svc.cmd[0], "started": time.time()}))
    pid_file(cfg, svc.name).chmod(0o600)
    return proc.pid

def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (services start in their own session), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def group_members(pgid: int) -> set[int]:
    """PIDs of the live processes in process group `pgid` (a service and everything it spawned)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    members.add(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def _group_running(pid: int) -> bool:
    return _group_alive(pid) or alive(pid)


def stop_groups(pids: dict[str, int | None], grace_s: float) -> dict[str, str]:
    """Stop process groups by their leader PID: SIGTERM to all at once, wait up to `grace_s` for them to go (0: no
    SIGTERM, a crash), SIGKILL whatever is left and wait for it. {name: "stopped" | "killed" | "not running"}."""
    running = {name: pid for name, pid in pids.items() if pid is not None}
    if grace_s > 0:
        for pid in running.values():
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(map(_group_running, running.values())):
            time.sleep(0.2)
    result = {name: "not running" for name, pid in pids.items() if pid is None}
    for name, pid in running.items():
        result[name] = "stopped"
        if _group_running(pid):
            signal_group(pid, signal.SIGKILL)
            result[name] = "killed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_group_running(running[n]) for n, r in result.items() if r == "killed"):
        time.sleep(0.1)
    return result


def node_file_name(name: str) -> str:
    """The PID/log file name of extra node `name`."""
    return f"{NODE_PREFIX}{name}"


def node_names(cfg: HasStateDir) -> list[str]:
    """Names of the extra nodes with a PID file (running or not), in creation order."""
    pids = cfg.state_dir / "pids"
    if not pids.exists():
        return []
    files = sorted(pids.glob(f"{NODE_PREFIX}*.pid"), key=lambda p: p.stat().st_mtime)
    return [p.stem.removeprefix(NODE_PREFIX) for p in files]


def stop_nodes(cfg: HasStateDir, grace_s: float = 35.0, echo=print) -> dict[str, str]:
    """Stop every extra node of this stack at once (SIGTERM all, one shared grace period, SIGKILL the rest)."""
    result = stop_groups({n: read_pid(cfg, node_file_name(n)) for n in node_names(cfg)}, grace_s)
    for name in result:
        pid_file(cfg, node_file_name(name)).unlink(missing_ok=True)
        echo(f"node {name:7s} {result[name]}")
    return result
