"""The embedded stack's configuration checks without servers: port clashes (Ray's worker port range included) are
one line naming the flags, the state directory is made private, secrets are created 0600 once, and the Ray and
Prefect settings handed to clients and servers lock the stack to loopback and to its own credentials."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nsarm import processes, stack
from nsarm.stack import StackConfig, StackError


def _cfg(tmp_path, **kw) -> StackConfig:
    ports = dict(prefect_port=41001, mlflow_port=41002, ray_port=41003, ray_dashboard_port=41004,
                 ray_client_port=41005)
    return StackConfig(state_dir=tmp_path, **{**ports, **kw})


@pytest.mark.parametrize("kw, words", [
    ({"mlflow_port": 12000}, ["--mlflow-port 12000", "worker port range 10002-19999", "--ray-min-worker-port"]),
    ({"ray_port": 10002}, ["--ray-port 10002", "worker port range"]),
    ({"ray_client_port": 41001}, ["--prefect-port and --ray-client-port are both 41001"]),
    ({"ray_min_worker_port": 30000, "ray_max_worker_port": 20000}, ["30000-20000", "min <= max"]),
    ({"ray_dashboard_port": 70000}, ["--ray-dashboard-port 70000 is not a TCP port"]),
    ({"ray_min_worker_port": 41000, "ray_max_worker_port": 41010}, ["--prefect-port 41001", "41000-41010"]),
])
def test_port_clashes_are_one_line_naming_the_flags(tmp_path, kw, words):
    with pytest.raises(StackError) as err:
        stack.check_ports(_cfg(tmp_path, **kw))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_clash_is_refused_before_anything_starts(tmp_path):
    cfg = _cfg(tmp_path / "state", mlflow_port=15000)
    with pytest.raises(StackError, match="--mlflow-port 15000"):
        stack.up(cfg, echo=lambda *_: None)
    assert not (tmp_path / "state").exists()


def test_external_services_ports_are_not_checked(tmp_path):
    stack.check_ports(_cfg(tmp_path, ray_port=12000, ray_address="10.0.0.5:6379", mlflow_port=41001,
                           mlflow_tracking_uri="http://mlflow:5000"))


def test_default_ports_pass(tmp_path):
    stack.check_ports(StackConfig(state_dir=tmp_path))


def test_state_dir_made_private_and_secrets_written_once(tmp_path):
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    state.chmod(0o755)
    (state / "logs").chmod(0o755)
    (state / "mlflow.db").write_text("x")
    (state / "mlflow.db").chmod(0o644)
    (state / "logs" / "ray.log").write_text("x")
    cfg = _cfg(state)
    stack.make_private(cfg)
    assert state.stat().st_mode & 0o777 == 0o700 and (state / "logs").stat().st_mode & 0o777 == 0o700
    assert (state / "pids").stat().st_mode & 0o777 == 0o700
    for f in ("mlflow.db", "logs/ray.log", "ray_auth_token", "prefect_auth"):
        assert (state / f).stat().st_mode & 0o777 == 0o600, f
    auth, token = cfg.prefect_auth(), cfg.ray_token_path.read_text()
    assert auth.startswith("nsarm:") and len(auth) > 30 and len(token) == 64
    stack.make_private(cfg)  # idempotent: the secrets stay
    assert cfg.prefect_auth() == auth and cfg.ray_token_path.read_text() == token


def test_service_logs_and_files_they_create_are_private(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    stack.make_private(cfg)
    svc = processes.Service("probe", [sys.executable, "-c", "open('made.txt', 'w').write('x')"], None, ())
    monkeypatch.chdir(tmp_path)
    pid = processes.start(cfg, svc)
    os.waitpid(pid, 0)
    assert (tmp_path / "made.txt").stat().st_mode & 0o777 == 0o600  # umask 077
    assert (tmp_path / "logs" / "probe.log").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "pids" / "probe.pid").stat().st_mode & 0o777 == 0o600


def test_servers_and_clients_get_the_lock_settings(tmp_path):
    cfg = _cfg(tmp_path)
    stack.make_private(cfg)
    prefect, mlflow, ray, deployments = stack.services(cfg)
    assert prefect.env["PREFECT_SERVER_API_AUTH_STRING"] == cfg.prefect_auth()
    assert prefect.env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert prefect.env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] == "http://127.0.0.1:41001"
    assert ray.env[stack.LOOPBACK_ENV] == "0" and ray.env["RAY_AUTH_MODE"] == "token"
    assert ray.cmd[ray.cmd.index("--min-worker-port") + 1] == "10002"
    for env in (deployments.env, cfg.client_env()):
        assert env["PREFECT_API_AUTH_STRING"] == cfg.prefect_auth() and env[stack.LOOPBACK_ENV] == "0"
    external = StackConfig(state_dir=tmp_path, prefect_api_url="http://prefect:4200/api", ray_address="10.0.0.5:6379")
    assert "PREFECT_API_AUTH_STRING" not in external.client_env() and stack.LOOPBACK_ENV not in external.client_env()


def test_cli_has_the_port_flags_the_readme_names(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    nsarm = os.path.join(os.path.dirname(sys.executable), "nsarm")
    out = subprocess.run([nsarm, "stack", "up", "--state-dir", str(tmp_path), "--ray-client-port", "12345"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: --ray-client-port 12345 lies in Ray's worker port range 10002-19999: choose a port outside it, or move "
        "the range with --ray-min-worker-port/--ray-max-worker-port"]
