"""The embedded stack for real: three health endpoints, an MLflow round trip, a Ray task on the started head,
both deployments served and runnable with `prefect deployment run`, idempotent `up`, port-taken error, clean down."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from nsarm import processes, stack
from tests.support.services import free_port
from tests.support.stack import prefect_api, run_deployment_cli, stack_processes

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _env(cfg) -> dict[str, str]:
    return {**os.environ, **cfg.client_env()}


def test_health_endpoints_answer(embedded_stack):
    cfg = embedded_stack
    assert requests.get(f"{cfg.prefect_url}/health", timeout=5).json() is True
    assert requests.get(f"{cfg.mlflow_url}/health", timeout=5).status_code == 200
    # The Ray head runs with token auth (its own token file): anonymous calls are refused, the token is accepted.
    assert requests.get(f"{cfg.ray_dashboard}/api/version", timeout=5).status_code == 401
    token = cfg.ray_token_path.read_text().strip()
    version = requests.get(f"{cfg.ray_dashboard}/api/version", headers={"Authorization": f"Bearer {token}"},
                           timeout=5).json()
    assert version["ray_version"]
    # The Prefect UI is told to call this stack's API, not the default :4200 (the fixture runs on free ports).
    assert cfg.prefect_port != 4200
    ui_settings = requests.get(f"{cfg.prefect_url.removesuffix('/api')}/ui-settings", timeout=5).json()
    assert ui_settings["api_url"].rstrip("/") == cfg.prefect_url


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped:  # ::ffff:127.0.0.1, a dual-stack socket bound to loopback
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _bound_sockets(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket and every bound UDP socket of `pids`."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for c in proc.net_connections(kind="inet"):
                if c.laddr and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)):
                    found.append((pid, proc.name(), c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def test_every_socket_of_the_stack_is_loopback(embedded_stack):
    """The real listening sockets of every process the stack started (the services' process trees: Prefect, MLflow,
    the deployments server, Ray's GCS, raylet, agents, dashboard, client server and its workers) are on loopback."""
    cfg = embedded_stack
    # Ray workers open their own ports: make some exist first (idle workers stay in the raylet's pool).
    code = ("import ray, os\nray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)\n"
            "@ray.remote\ndef one(): return 1\nprint(sum(ray.get([one.remote() for _ in range(4)])))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(cfg), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    sockets = _bound_sockets(stack_processes(cfg))
    ports = {port for *_, port in sockets}
    assert {cfg.prefect_port, cfg.mlflow_port, cfg.ray_port, cfg.ray_dashboard_port, cfg.ray_client_port} <= ports
    assert len(sockets) > 10  # Ray's many servers were seen, not only the configured ports
    exposed = [s for s in sockets if not _is_loopback(s[2])]
    assert not exposed, f"(pid, process, address, port) listening beyond loopback: {exposed}"


def test_prefect_refuses_unauthenticated_and_cross_origin_calls(embedded_stack):
    """A web page (any Origin, or a DNS-rebinding Host) cannot start a flow run: no auth string → 401, auth without
    a CSRF token → 403, and CORS allows only the UI's own origin. The stack's own clients still can."""
    cfg = embedded_stack
    api = prefect_api(cfg)
    dep = api.get(f"{cfg.prefect_url}/deployments/name/train-nsarm/default", timeout=10).json()
    count = api.post(f"{cfg.prefect_url}/flow_runs/count", json={}, timeout=10).json()
    create = f"{cfg.prefect_url}/deployments/{dep['id']}/create_flow_run"
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    for headers in (evil, {**evil, "Host": "evil.example"}, {"Host": f"rebound.example:{cfg.prefect_port}"}):
        r = requests.post(create, json={"parameters": {"root": "/tmp"}}, headers=headers, timeout=10)
        assert r.status_code in (401, 403), (headers, r.status_code, r.text[:200])
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers} or \
            r.headers["access-control-allow-origin"] != "*"
    r = requests.get(f"{cfg.prefect_url}/deployments/{dep['id']}", timeout=10)
    assert r.status_code == 401  # reads need the auth string too
    no_csrf = requests.post(create, json={}, headers=stack.prefect_headers(cfg), timeout=10)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    preflight = requests.options(create, headers={"Origin": "http://evil.example",
                                                  "Access-Control-Request-Method": "POST"}, timeout=10)
    assert preflight.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    own = requests.options(create, headers={"Origin": cfg.prefect_ui, "Access-Control-Request-Method": "POST"},
                           timeout=10)
    assert own.headers.get("access-control-allow-origin") == cfg.prefect_ui
    assert api.post(f"{cfg.prefect_url}/flow_runs/count", json={}, timeout=10).json() == count
    # the UI learns that it must sign in (it then sends the auth string and fetches its own CSRF tokens)
    ui_settings = requests.get(f"{cfg.prefect_ui}/ui-settings", timeout=5).json()
    assert ui_settings["auth"] == "BASIC" and ui_settings["csrf_enabled"] is True


def test_mlflow_refuses_cross_origin_writes_and_foreign_hosts(embedded_stack):
    cfg = embedded_stack
    create = f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/create"
    r = requests.post(create, json={"name": "from-evil-origin"}, headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.status_code == 403
    r = requests.post(create, json={"name": "from-evil-host"}, headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code in (400, 403)
    r = requests.get(f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": "from-evil-origin"}, timeout=10)
    assert r.status_code == 404  # nothing was created
    ok = requests.post(create, json={"name": f"same-origin-{cfg.mlflow_port}"}, timeout=10)
    assert ok.status_code == 200


def test_state_dir_is_private(embedded_stack):
    state = embedded_stack.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    # (Ray chmods its own ray/ folders 0777 at every driver's start; the 0700 state dir is what keeps others out)
    for folder in ("logs", "pids", "mlartifacts", "prefect"):
        if (state / folder).exists():
            assert (state / folder).stat().st_mode & 0o077 == 0, folder
    for path in ("mlflow.db", "ray_auth_token", "prefect_auth", "logs/mlflow.log", "logs/ray.log", "pids/ray.pid"):
        assert (state / path).stat().st_mode & 0o777 == 0o600, path


def test_status_reports_every_service_running(embedded_stack):
    cfg = embedded_stack
    args = [str(BIN / "nsarm"), "stack", "status", "--state-dir", str(cfg.state_dir), "--prefect-port",
            str(cfg.prefect_port), "--mlflow-port", str(cfg.mlflow_port), "--ray-port", str(cfg.ray_port),
            "--ray-dashboard-port", str(cfg.ray_dashboard_port)]
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    out = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=60, env=env)
    report = json.loads(out.stdout)
    assert {k: v["state"] for k, v in report.items()} == {
        "prefect": "running", "mlflow": "running", "ray": "running", "deployments": "running"}
    assert out.returncode == 0
    # the plain form ends with the client environment: Prefect's auth string and Ray's token settings too
    env_line = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env).stdout.strip().splitlines()[-1]
    assert env_line.startswith("Client env:")
    for key, value in cfg.client_env().items():
        assert f"{key}={value}" in env_line.split()
    assert "PREFECT_API_AUTH_STRING=nsarm:" in env_line and "RAY_AUTH_MODE=token" in env_line


def test_up_is_idempotent(embedded_stack):
    before = {n: stack.read_pid(embedded_stack, n) for n in ("prefect", "mlflow", "ray", "deployments")}
    result = stack.up(embedded_stack, echo=lambda *_: None)
    assert result == {"prefect": "running", "mlflow": "running", "ray": "running", "deployments": "running"}
    assert {n: stack.read_pid(embedded_stack, n) for n in before} == before


def test_mlflow_run_round_trip(embedded_stack, tmp_path):
    code = (
        "import mlflow, sys\n"
        "mlflow.set_experiment('stack-test')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_param('alpha', 0.25); mlflow.log_metric('loss', 1.5, step=3)\n"
        "    open('note.txt','w').write('hello artifact'); mlflow.log_artifact('note.txt')\n"
        "print(run.info.run_id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(embedded_stack), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = out.stdout.strip().splitlines()[-1]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=embedded_stack.mlflow_url)
    run = client.get_run(run_id)
    assert run.data.params["alpha"] == "0.25"
    assert client.get_metric_history(run_id, "loss")[0].value == 1.5
    local = client.download_artifacts(run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello artifact"


def test_ray_task_runs_on_started_head(embedded_stack):
    code = (
        "import ray, os\n"
        "ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)\n"
        "@ray.remote\n"
        "def square(x): return x * x\n"
        "print(sum(ray.get([square.remote(i) for i in range(10)])), ray.get_runtime_context().gcs_address)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(embedded_stack), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    total, gcs = out.stdout.strip().splitlines()[-1].split()
    assert total == "285"
    assert gcs.endswith(f":{embedded_stack.ray_port}")


def test_deployments_exist_and_run(embedded_stack):
    cfg = embedded_stack
    for name in ("build-dataset/default", "train-nsarm/default"):
        flow, dep = name.split("/")
        r = prefect_api(cfg).get(f"{cfg.prefect_url}/deployments/name/{flow}/{dep}", timeout=5)
        assert r.status_code == 200, name
    # The CLI form users type, from another process. root points at an empty dir, so the run must end Failed
    # (no dataset) — never hang, never pretend to succeed.
    run = run_deployment_cli(cfg, "train-nsarm/default", {"root": "/nonexistent"}, timeout=180)
    assert run["state"]["type"] == "FAILED"
    # The bare flow name is refused by Prefect 3 (documented in the README).
    bad = subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-dataset"], env=_env(cfg),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = stack.StackConfig.from_env(state_dir=tmp_path, prefect_port=port)
        with pytest.raises(stack.StackError) as err:
            stack.up(cfg, echo=lambda *_: None)
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "prefect" in msg
    assert f"pid {os.getpid()}" in msg  # the owner is named
    # nothing was left running for the failed start
    assert all(stack.read_pid(cfg, n) is None for n in ("prefect", "mlflow", "ray", "deployments"))


def test_failed_later_service_stops_what_this_call_started(tmp_path, monkeypatch):
    """Prefect starts, then MLflow's port is found taken: `up` stops the Prefect it started and says so.
    Every other port is a free one (Ray's defaults, 6379/8265/10001, may be held by other tests' clusters), and no
    external service is configured."""
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = stack.StackConfig.from_env(state_dir=tmp_path, prefect_port=free_port(), mlflow_port=port,
                                         ray_port=free_port(), ray_dashboard_port=free_port(),
                                         ray_client_port=free_port())
        with pytest.raises(stack.StackError) as err:
            stack.up(cfg, echo=lambda *_: None)
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "mlflow" in msg
    assert "stopped what this call started: prefect (stopped)" in msg
    assert stack.read_pid(cfg, "prefect") is None and not (tmp_path / "pids" / "prefect.pid").exists()
    assert processes.port_owner(cfg.prefect_port) is None
