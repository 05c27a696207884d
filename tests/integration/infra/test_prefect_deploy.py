"""infra/prefect/ on a real Prefect server: the work pool is created from work-pool.json and `prefect deploy`
registers both deployments from prefect.yaml with the cluster's parameters, entrypoints and pull step.

This is exactly what an operator runs against the cluster's Prefect API (commands in prefect.yaml's header).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import free_port, stop_group, wait_healthy

# slow: a fresh Prefect server migrates its SQLite database on start (10–60 s on a shared 2-core box).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[3]
PREFECT_YAML = REPO / "infra" / "prefect" / "prefect.yaml"
WORK_POOL_JSON = REPO / "infra" / "prefect" / "work-pool.json"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A Prefect server on a free port with its own PREFECT_HOME; yields (api_url, env for CLI calls)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": api}
    bindir = Path(sys.executable).parent
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api + "/health", proc, home / "server.log", timeout=120)
        yield api, env
    finally:
        stop_group(proc)
        log.close()


def _prefect(env: dict, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([str(Path(sys.executable).parent / "prefect"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def test_work_pool_and_deployments_register_as_written(prefect_api):
    import requests

    api, env = prefect_api
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    (pool,) = {d["work_pool"]["name"] for d in spec["deployments"]}
    _prefect(env, "work-pool", "create", pool, "--type", "process", "--base-job-template", str(WORK_POOL_JSON))
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML))

    got_pool = requests.get(f"{api}/work_pools/{pool}", timeout=10).json()
    assert got_pool["type"] == "process"
    assert got_pool["base_job_template"] == json.loads(WORK_POOL_JSON.read_text())

    for flow_name in ("build-dataset", "train-nsarm"):
        resp = requests.get(f"{api}/deployments/name/{flow_name}/default", timeout=10)
        assert resp.status_code == 200, f"{flow_name}/default not registered: {resp.text}"
        dep = resp.json()
        (want,) = [d for d in spec["deployments"]
                   if d["entrypoint"].endswith(":" + flow_name.replace("-", "_"))]
        assert dep["entrypoint"] == want["entrypoint"]
        assert dep["parameters"] == want["parameters"]
        assert dep["work_pool_name"] == pool and dep["work_queue_name"] == "default"
        assert dep["pull_steps"] == spec["pull"]
        assert dep["version"] == want["version"]
        # The flow's signature became the deployment's parameter schema: our parameters are valid for it.
        props = dep["parameter_openapi_schema"]["properties"]
        assert set(want["parameters"]) <= set(props), (set(want["parameters"]) - set(props))
