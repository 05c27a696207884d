"""The embedded stack for real: three health endpoints, an MLflow round trip, a Ray task on the started head,
both deployments served and runnable with `prefect deployment run`, idempotent `up`, port-taken error, clean down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from nsarm import stack
from tests.conftest import run_deployment_cli

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
    # every service binds 127.0.0.1 only
    for url in (cfg.prefect_url, cfg.mlflow_url, cfg.ray_dashboard):
        assert "127.0.0.1" in url
    # The Prefect UI is told to call this stack's API, not the default :4200 (the fixture runs on free ports).
    assert cfg.prefect_port != 4200
    ui_settings = requests.get(f"{cfg.prefect_url.removesuffix('/api')}/ui-settings", timeout=5).json()
    assert ui_settings["api_url"].rstrip("/") == cfg.prefect_url


def test_status_reports_every_service_running(embedded_stack):
    out = subprocess.run([str(BIN / "nsarm"), "stack", "status", "--json", "--state-dir", str(embedded_stack.state_dir),
                          "--prefect-port", str(embedded_stack.prefect_port), "--mlflow-port",
                          str(embedded_stack.mlflow_port), "--ray-dashboard-port",
                          str(embedded_stack.ray_dashboard_port)],
                         capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k not in (
                             "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")})
    report = json.loads(out.stdout)
    assert {k: v["state"] for k, v in report.items()} == {
        "prefect": "running", "mlflow": "running", "ray": "running", "deployments": "running"}
    assert out.returncode == 0


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
        r = requests.get(f"{cfg.prefect_url}/deployments/name/{flow}/{dep}", timeout=5)
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
