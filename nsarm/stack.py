"""The embedded local stack: Prefect server, MLflow tracking server, Ray head (+ dashboard) and the process that
serves the two Prefect deployments — all on 127.0.0.1, all under one state directory with logs and PID files.

    nsarm stack up        # start what is not running, wait for every health endpoint, print the URLs
    nsarm stack status    # one line per service
    nsarm stack down      # stop (only) the processes this stack started, by PID / process group
    nsarm stack add-node [--name N] [--num-cpus C] [--resources JSON] | remove-node N   (nsarm/stack_nodes.py)
    (the `nsarm stack` command: nsarm/stack_cli.py; PID files, process groups: nsarm/processes.py)

Configuration (env vars; CLI flags override): NSARM_STATE_DIR (default ./.nsarm), NSARM_PREFECT_PORT (4200),
NSARM_MLFLOW_PORT (5000), NSARM_RAY_PORT (6379), NSARM_RAY_DASHBOARD_PORT (8265), NSARM_RAY_CLIENT_PORT (10001),
NSARM_RAY_MIN_WORKER_PORT / NSARM_RAY_MAX_WORKER_PORT (10002-19999), NSARM_RAY_CPUS (all cores).
A service that already lives elsewhere is not started locally: PREFECT_API_URL, MLFLOW_TRACKING_URI, RAY_ADDRESS.

Security (README "Security"): every socket on 127.0.0.1; the Prefect API needs the auth string in
`prefect_auth` (basic auth) plus a CSRF token for writes, and answers CORS for its own UI only; Ray needs the token in
`ray_auth_token`; MLflow refuses foreign Origin/Host headers; the state directory is 0700, its files 0600.

Each service runs in its own session (process group); `down` sends SIGTERM to that group, waits, then SIGKILL.
Ray runs as `ray start --head --block`, so its whole process tree is one group owned by one PID (never `ray stop`,
which would kill every Ray process on the host, including other users').
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nsarm.processes import (
    HOST,
    Service,
    StackError,
    free_port,
    log_file,
    log_tail,
    pid_file,
    read_pid,
    start,
    stop_groups,
    stop_nodes,
)

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch: "0" = one machine, node IP stays 127.0.0.1


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path  # logs/, pids/, prefect/, mlflow.db, mlartifacts/, ray/
    prefect_port: int = 4200
    mlflow_port: int = 5000
    ray_port: int = 6379
    ray_dashboard_port: int = 8265
    ray_client_port: int = 10001
    # Ray's worker processes take their gRPC ports from this range (Ray's defaults); no other stack port may lie in it
    ray_min_worker_port: int = 10002
    ray_max_worker_port: int = 19999
    ray_cpus: int | None = None  # None: all cores
    # External services (then nothing local is started for them)
    prefect_api_url: str | None = None
    mlflow_tracking_uri: str | None = None
    ray_address: str | None = None
    health_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, **overrides) -> StackConfig:
        env = os.environ
        values = dict(
            state_dir=Path(env.get("NSARM_STATE_DIR", Path.cwd() / ".nsarm")).resolve(),
            prefect_port=int(env.get("NSARM_PREFECT_PORT", 4200)),
            mlflow_port=int(env.get("NSARM_MLFLOW_PORT", 5000)),
            ray_port=int(env.get("NSARM_RAY_PORT", 6379)),
            ray_dashboard_port=int(env.get("NSARM_RAY_DASHBOARD_PORT", 8265)),
            ray_client_port=int(env.get("NSARM_RAY_CLIENT_PORT", 10001)),
            ray_min_worker_port=int(env.get("NSARM_RAY_MIN_WORKER_PORT", 10002)),
            ray_max_worker_port=int(env.get("NSARM_RAY_MAX_WORKER_PORT", 19999)),
            ray_cpus=int(env["NSARM_RAY_CPUS"]) if env.get("NSARM_RAY_CPUS") else None,
            prefect_api_url=env.get("PREFECT_API_URL") or None,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            ray_address=env.get("RAY_ADDRESS") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["state_dir"] = Path(values["state_dir"]).resolve()
        return cls(**values)

    # The addresses clients use, local or external.
    @property
    def prefect_url(self) -> str:
        return self.prefect_api_url or f"http://{HOST}:{self.prefect_port}/api"

    @property
    def prefect_ui(self) -> str:
        return self.prefect_url.removesuffix("/api")

    @property
    def mlflow_url(self) -> str:
        return self.mlflow_tracking_uri or f"http://{HOST}:{self.mlflow_port}"

    @property
    def ray_url(self) -> str:
        return self.ray_address or f"{HOST}:{self.ray_port}"

    @property
    def ray_dashboard(self) -> str:
        return f"http://{HOST}:{self.ray_dashboard_port}"

    @property
    def ray_token_path(self) -> Path:
        return self.state_dir / "ray_auth_token"

    def ray_auth_env(self) -> dict[str, str]:
        """Ray token authentication with this stack's own token file. Ray >= 2.5x turns token auth on whenever
        ~/.ray/auth_token exists (any earlier `ray.init()` writes one), so an implicit setting would make the head
        and its clients disagree; an explicit per-stack token keeps them in step and the head private."""
        if self.ray_address:
            return {}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path)}

    @property
    def prefect_auth_path(self) -> Path:
        return self.state_dir / "prefect_auth"

    def prefect_auth(self) -> str | None:
        """The `user:password` of this stack's Prefect API (HTTP basic auth), None for an external Prefect or
        before the first `up` wrote it."""
        if self.prefect_api_url or not self.prefect_auth_path.exists():
            return None
        return self.prefect_auth_path.read_text().strip()

    def prefect_auth_env(self) -> dict[str, str]:
        """Prefect clients (flows, `prefect deployment run`, the serve process) send this auth string."""
        auth = self.prefect_auth()
        return {"PREFECT_API_AUTH_STRING": auth} if auth else {}

    def ray_env(self) -> dict[str, str]:
        """What every process of this stack's Ray cluster (head, nodes, drivers) needs: the token settings, and
        Ray's single-machine switch, under which Ray keeps 127.0.0.1 as the node IP and binds every server there (on
        Linux Ray otherwise swaps a loopback node IP for the machine's address and listens on all interfaces)."""
        if self.ray_address:
            return {}
        return {**self.ray_auth_env(), LOOPBACK_ENV: "0"}

    def client_env(self) -> dict[str, str]:
        """The environment a flow / client needs to talk to this stack."""
        return {"PREFECT_API_URL": self.prefect_url, "MLFLOW_TRACKING_URI": self.mlflow_url, "RAY_ADDRESS": self.ray_url,
                **self.prefect_auth_env(), **self.ray_env()}


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (the venv's, not whatever is first on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def prefect_server_env(cfg: StackConfig) -> dict[str, str]:
    """The local Prefect server's lock: every API call but the health probe needs the stack's auth string, every
    state-changing call a CSRF token, and CORS answers only the UI's own origin. (Prefect has no allowed-hosts
    setting: a DNS-rebinding page reaches the port under a foreign Host, but without the auth string it gets 401.)"""
    origin = f"http://{HOST}:{cfg.prefect_port}"
    env = {"PREFECT_UI_API_URL": f"{origin}/api",  # the UI calls the URL the server advertises (default :4200)
           "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true", "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin}
    auth = cfg.prefect_auth()
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def services(cfg: StackConfig) -> list[Service]:
    """The stack, in start order. The deployment server comes last: it needs the Prefect API."""
    state = cfg.state_dir
    base_env = {"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_HOME": str(state / "prefect"), "MLFLOW_ENABLE_TELEMETRY": "false",
                # MLflow 3 starts a pool of background job workers by default; the stack does not use them.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "DO_NOT_TRACK": "1"}
    ray_cmd = [_bin("ray"), "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(cfg.ray_port),
               "--dashboard-host", HOST, "--dashboard-port", str(cfg.ray_dashboard_port), "--include-dashboard", "true",
               "--ray-client-server-port", str(cfg.ray_client_port),
               "--min-worker-port", str(cfg.ray_min_worker_port), "--max-worker-port", str(cfg.ray_max_worker_port),
               # Ray's fixed default (52365) would collide with any other Ray head or node on this host
               "--dashboard-agent-listen-port", str(free_port()),
               "--temp-dir", str(state / "ray"), "--disable-usage-stats"]
    if cfg.ray_cpus is not None:
        ray_cmd += ["--num-cpus", str(cfg.ray_cpus)]
    return [
        Service("prefect", [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(cfg.prefect_port)],
                f"http://{HOST}:{cfg.prefect_port}/api/health", (cfg.prefect_port,),
                {**base_env, **prefect_server_env(cfg)}, external=cfg.prefect_api_url),
        Service("mlflow", [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
                           "--artifacts-destination", str(state / "mlartifacts"), "--serve-artifacts",
                           "--host", HOST, "--port", str(cfg.mlflow_port), "--workers", "1"],
                f"http://{HOST}:{cfg.mlflow_port}/health", (cfg.mlflow_port,), base_env,
                external=cfg.mlflow_tracking_uri),
        Service("ray", ray_cmd, f"{cfg.ray_dashboard}/api/version",
                (cfg.ray_port, cfg.ray_dashboard_port, cfg.ray_client_port), {**base_env, **cfg.ray_env()},
                external=cfg.ray_address, token_file=cfg.ray_token_path),
        # NSARM_STATE_DIR: the deployments' default dataset root is `<state dir>/data` (flows/params.py)
        Service("deployments", [sys.executable, "-m", "flows.serve"], None, (),
                {**base_env, **cfg.client_env(), "NSARM_STATE_DIR": str(state)}),
    ]


def healthy(url: str | None, timeout: float = 2.0, token_file: Path | None = None) -> bool:
    """GET `url` answers 2xx (with `Authorization: Bearer <token>` when a token file is given)."""
    if url is None:
        return True
    import urllib.error
    import urllib.request

    headers = {}
    if token_file is not None and token_file.exists():
        headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            return r.status < 300
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError):
        return False


def prefect_headers(cfg: StackConfig) -> dict[str, str]:
    """The basic-auth header of this stack's Prefect API (empty for an external Prefect)."""
    import base64

    auth = cfg.prefect_auth()
    return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}


def prefect_session(cfg: StackConfig):
    """A requests.Session for this stack's Prefect REST API as Prefect's own client calls it: the basic-auth header
    and a CSRF token (the server refuses writes, filters included, without one)."""
    import uuid

    import requests

    session = requests.Session()
    session.headers.update(prefect_headers(cfg))
    client = str(uuid.uuid4())
    r = session.get(f"{cfg.prefect_url}/csrf-token", params={"client": client}, timeout=10)
    if r.status_code == 200:  # 422 when the server has CSRF protection off (an external Prefect)
        session.headers.update({"Prefect-Csrf-Token": r.json()["token"], "Prefect-Csrf-Client": client})
    return session


def _deployments_ready(cfg: StackConfig, names: tuple[str, ...] = ("build-dataset/default", "train-nsarm/default")):
    import urllib.request

    for name in names:
        flow, dep = name.split("/")
        url = f"{cfg.prefect_url}/deployments/name/{flow}/{dep}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=prefect_headers(cfg)), timeout=2) as r:
                if r.status != 200:
                    return False
        except OSError:
            return False
    return True


def _service_healthy(cfg: StackConfig, svc: Service) -> bool:
    """The deployments server is healthy when both deployments are registered; the others by their endpoint."""
    return _deployments_ready(cfg) if svc.name == "deployments" else healthy(svc.health_url, token_file=svc.token_file)


# --------------------------------------------------------------------------------------------------------------
# up / down / status


def check_ports(cfg: StackConfig) -> None:
    """One line naming the clash when two local services share a port, a port is outside 1-65535, or a port lies in
    Ray's worker port range (Ray hands those to its workers and refuses to start over a clash)."""
    lo, hi = cfg.ray_min_worker_port, cfg.ray_max_worker_port
    if not 1024 <= lo <= hi <= 65535:
        raise StackError(f"Ray worker port range {lo}-{hi} (--ray-min-worker-port/--ray-max-worker-port) must satisfy "
                         "1024 <= min <= max <= 65535")
    ports = {}
    if not cfg.prefect_api_url:
        ports["--prefect-port"] = cfg.prefect_port
    if not cfg.mlflow_tracking_uri:
        ports["--mlflow-port"] = cfg.mlflow_port
    if not cfg.ray_address:
        ports.update({"--ray-port": cfg.ray_port, "--ray-dashboard-port": cfg.ray_dashboard_port,
                      "--ray-client-port": cfg.ray_client_port})
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise StackError(f"{flag} {port} is not a TCP port (1-65535)")
        if port in seen:
            raise StackError(f"{seen[port]} and {flag} are both {port}: every service needs its own port")
        seen[port] = flag
        if not cfg.ray_address and lo <= port <= hi:
            raise StackError(f"{flag} {port} lies in Ray's worker port range {lo}-{hi}: choose a port outside it, or "
                             "move the range with --ray-min-worker-port/--ray-max-worker-port")


def _write_secret(path: Path) -> None:
    """A fresh random secret in `path` (0600 from the start), unless the file exists."""
    import secrets

    if path.exists():
        return
    text = secrets.token_hex(32) if path.name == "ray_auth_token" else f"nsarm:{secrets.token_hex(24)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _make_entries_private(folder: Path) -> None:
    """`folder` and its direct subfolders 0700, its files 0600 (links untouched)."""
    folder.chmod(0o700)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            entry.chmod(0o700)
        elif entry.is_file() and not entry.is_symlink():
            entry.chmod(0o600)


def make_private(cfg: StackConfig) -> None:
    """The state directory is the user's alone: 0700 for it and its bookkeeping folders, 0600 for the files there
    (databases, secrets, logs, PID files). Services start with umask 077, so what they create later is private too.
    Ray alone makes its temp and session folders (`ray/`) 0777, on purpose and again at every driver's start; the
    0700 state directory around them keeps other users out."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (cfg.state_dir, cfg.state_dir / "logs", cfg.state_dir / "pids"):
        folder.mkdir(exist_ok=True, mode=0o700)
        _make_entries_private(folder)
    if cfg.ray_auth_env():
        _write_secret(cfg.ray_token_path)
    if not cfg.prefect_api_url:
        _write_secret(cfg.prefect_auth_path)


def up(cfg: StackConfig, echo=print) -> dict[str, str]:
    """Start every local service not already running and wait until all are healthy. Idempotent. When a service
    fails to start, the ones this call started are stopped again (those already running stay).

    Returns:
        {service: "started" | "running" | "external"}.
    Raises:
        StackError: clashing ports, a port taken by another process, or a service did not become healthy in time
            (the message carries the tail of its log and what was stopped).
    """
    check_ports(cfg)
    make_private(cfg)
    started: list[str] = []
    try:
        return _up(cfg, echo, started)
    except StackError as e:
        if not started:
            raise
        result = stop_groups({name: read_pid(cfg, name) for name in started}, grace_s=10.0)
        for name in started:
            pid_file(cfg, name).unlink(missing_ok=True)
        raise StackError(f"{e}\nstopped what this call started: "
                         + ", ".join(f"{n} ({r})" for n, r in result.items())) from None


def _up(cfg: StackConfig, echo, started: list[str]) -> dict[str, str]:
    result, waiting = {}, []
    svcs = services(cfg)
    for svc in svcs:
        if svc.external:
            result[svc.name] = "external"
            echo(f"{svc.name:12s} external at {svc.external} (not started locally)")
            continue
        if svc.name == "deployments":
            # Serving needs the Prefect API up: wait for the servers before starting it.
            _wait_healthy(cfg, waiting, echo)
            waiting = []
        if read_pid(cfg, svc.name):
            result[svc.name] = "running"
            echo(f"{svc.name:12s} already running (pid {read_pid(cfg, svc.name)})")
            continue
        pid = start(cfg, svc)
        started.append(svc.name)
        result[svc.name] = "started"
        echo(f"{svc.name:12s} started (pid {pid}), log {log_file(cfg, svc.name)}")
        waiting.append(svc)
    _wait_healthy(cfg, waiting, echo)
    return result


def _wait_healthy(cfg: StackConfig, svcs: list[Service], echo) -> None:
    deadline = time.monotonic() + cfg.health_timeout_s
    pending = list(svcs)
    while pending:
        for svc in list(pending):
            pid = read_pid(cfg, svc.name)
            if pid is None:
                raise StackError(f"{svc.name} exited during start-up; last log lines "
                                 f"({log_file(cfg, svc.name)}):\n{log_tail(log_file(cfg, svc.name))}")
            ok = _service_healthy(cfg, svc)
            if ok:
                echo(f"{svc.name:12s} healthy")
                pending.remove(svc)
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            tails = "\n".join(f"--- {s.name}:\n{log_tail(log_file(cfg, s.name))}" for s in pending)
            raise StackError(f"not healthy after {cfg.health_timeout_s:.0f} s: {names}\n{tails}")
        if pending:
            time.sleep(0.5)


def down(cfg: StackConfig, echo=print, timeout: float = 35.0) -> dict[str, str]:
    """Stop the services this stack started, by their recorded PID / process group: SIGTERM to all at once (Ray
    drains for a few seconds), wait up to `timeout`, then SIGKILL whatever is left of those groups."""
    stop_nodes(cfg, timeout, echo)  # worker nodes first: they would only log errors once the head is gone
    result = stop_groups({svc.name: read_pid(cfg, svc.name) for svc in reversed(services(cfg))}, timeout)
    result = {n: "killed (did not stop within timeout)" if r == "killed" else r for n, r in result.items()}
    for svc in reversed(services(cfg)):
        pid_file(cfg, svc.name).unlink(missing_ok=True)
        echo(f"{svc.name:12s} {result[svc.name]}")
    return result


def status(cfg: StackConfig) -> dict[str, dict]:
    """Per service: state (running/stopped/external/unhealthy), pid and URL."""
    report = {}
    urls = {"prefect": cfg.prefect_ui, "mlflow": cfg.mlflow_url, "ray": cfg.ray_dashboard, "deployments": cfg.prefect_ui}
    for svc in services(cfg):
        if svc.external:
            report[svc.name] = {"state": "external", "pid": None, "url": svc.external}
            continue
        pid = read_pid(cfg, svc.name)
        ok = _service_healthy(cfg, svc) if pid else False
        state = "stopped" if pid is None else ("running" if ok else "unhealthy")
        report[svc.name] = {"state": state, "pid": pid, "url": urls[svc.name]}
    return report


def print_client_env(cfg: StackConfig, echo=print) -> None:
    """The settings a shell needs for `prefect deployment run`, `ray`, MLflow clients against this stack."""
    echo("Client env:     " + " ".join(f"{k}={v}" for k, v in cfg.client_env().items()))


def print_urls(cfg: StackConfig, echo=print) -> None:
    echo(f"Prefect UI      {cfg.prefect_ui}   (deployments: build-dataset/default, train-nsarm/default)"
         + (f"   (password: the contents of {cfg.prefect_auth_path})" if cfg.prefect_auth() else ""))
    echo(f"MLflow UI       {cfg.mlflow_url}")
    echo(f"Ray dashboard   {cfg.ray_dashboard if not cfg.ray_address else cfg.ray_address}"
         + ("" if cfg.ray_address else f"   (sign in with the token in {cfg.ray_token_path})"))
    echo(f"State dir       {cfg.state_dir}   (logs/, pids/)")
    print_client_env(cfg, echo)
