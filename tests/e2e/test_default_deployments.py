"""The literal commands a new user types on the embedded stack, with no parameters (issues 16.11, 21.2, 21.3, 21.5):

    prefect deployment run build-dataset/default      # the bundled photos → <state dir>/data
    prefect deployment run train-nsarm/default        # trains on that root

Checked through the real deployments and servers: both complete; a mistyped preset is refused before a flow run
exists; each flow run's Prefect log shows the progress of every stage (counts, rates, losses, ETA) and the demo's
log follower prints it; Ray's state API shows the jobs, tasks, actors and Train runs named after their stage,
output version and shard.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.stack import flow_run, prefect_api, run_deployment_cli

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _logs(cfg, run_id: str) -> list[str]:
    from flows.progress import read_logs

    out, offset, session = [], 0, prefect_api(cfg)
    while batch := read_logs(cfg.prefect_url, run_id, offset=offset, session=session):
        out += [r["message"] for r in batch]
        offset += len(batch)
    return out


def _ray_get(cfg, path: str) -> dict:
    token = Path(cfg.ray_token_path).read_text().strip()
    resp = requests.get(f"{cfg.ray_dashboard}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:300]}"
    return resp.json()


def _state_names(cfg, kind: str) -> list[str]:
    """Names of every task / actor the cluster's state API knows (`/api/v0/tasks`, `/api/v0/actors`)."""
    body = _ray_get(cfg, f"/api/v0/{kind}?limit=10000&detail=true")
    rows = body["data"]["result"]["result"]
    return [r.get("name") or "" for r in rows]


@pytest.fixture(scope="module")
def built(embedded_stack):
    run = run_deployment_cli(embedded_stack, "build-dataset/default", {}, timeout=1200)
    return {"run": run, "root": embedded_stack.state_dir / "data"}


@pytest.fixture(scope="module")
def trained(embedded_stack, built):
    assert built["run"]["state"]["type"] == "COMPLETED", built["run"]["state"].get("message")
    return run_deployment_cli(embedded_stack, "train-nsarm/default", {}, timeout=2400)


def test_a_mistyped_preset_is_refused_before_launch(embedded_stack):
    import os

    api = prefect_api(embedded_stack)
    before = api.post(f"{embedded_stack.prefect_url}/flow_runs/count", json={}, timeout=10).json()
    out = subprocess.run([PREFECT, "deployment", "run", "build-dataset/default", "-p", "preset=tyny"],
                         env={**os.environ, **embedded_stack.client_env()}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "preset" in text and "tyny" in text and "Traceback" not in text, text
    assert api.post(f"{embedded_stack.prefect_url}/flow_runs/count", json={}, timeout=10).json() == before


def test_build_dataset_with_no_parameters_builds_the_bundled_photos(built):
    assert built["run"]["state"]["type"] == "COMPLETED", built["run"]["state"].get("message")
    manifest = json.loads((built["root"] / "manifest.json").read_text())
    assert manifest["num_samples"] == 12 and manifest["num_shards"] == 2  # tiny preset: 8 + 4


def test_build_progress_is_in_the_flow_run_log_and_the_demo_prints_it(embedded_stack, built):
    from flows.progress import follow

    logs = "\n".join(_logs(embedded_stack, built["run"]["id"]))
    for stage in ("shard", "degrade", "caption"):
        assert f"{stage}: 2/2 shards (100%)" in logs, f"no {stage} progress in the flow run log:\n{logs}"
    assert "images/s" in logs and "captions/s" in logs and "ETA" in logs
    printed = []
    final = follow(embedded_stack.prefect_url, built["run"]["id"], echo=printed.append, poll_s=0.1,
                   session=prefect_api(embedded_stack))
    assert final["state"]["type"] == "COMPLETED"
    assert any(line.startswith("degrade: 1/2 shards") for line in printed), printed


def test_build_ray_work_is_named_after_stage_version_and_shard(embedded_stack, built):
    manifest = json.loads((built["root"] / "manifest.json").read_text())
    (deg_hash,), (cap_hash,) = manifest["lr"], manifest["captions"]
    tasks = set(_state_names(embedded_stack, "tasks"))
    assert {f"degrade lr/{deg_hash} shard 000000", f"degrade lr/{deg_hash} shard 000001"} <= tasks
    assert {f"caption captions/{cap_hash} shard 000000", f"caption captions/{cap_hash} shard 000001"} <= tasks
    hr_hash = manifest["hr"]["config_hash"]  # other builds on this session's cluster may share it: a subset check
    assert {f"shard hr@{hr_hash} shard 000000", f"shard hr@{hr_hash} shard 000001"} <= tasks, sorted(tasks)
    actors = _state_names(embedded_stack, "actors")
    assert any(n.startswith(f"caption captions/{cap_hash} actor ") for n in actors), actors
    jobs = _ray_get(embedded_stack, "/api/jobs/")
    names = [(j.get("metadata") or {}).get("job_name", "") for j in jobs]
    flow_name = flow_run(embedded_stack, built["run"]["id"])["name"]
    assert f"build-dataset tiny -> {built['root']} (flow run {flow_name})" in names, names


def test_train_nsarm_with_no_parameters_trains_on_the_default_root(embedded_stack, built, trained):
    assert trained["state"]["type"] == "COMPLETED", trained["state"].get("message")
    from nsarm import tracking

    champion = tracking.get_model_version("nsarm", alias="champion", tracking_uri=embedded_stack.mlflow_url)
    version = json.loads((built["root"] / "manifest.json").read_text())["version"]
    assert champion["tags"]["checkpoint_uri"].startswith(str(built["root"].parent / "runs"))
    assert version in champion["tags"]["checkpoint_uri"]


def test_training_progress_is_in_the_flow_run_log(embedded_stack, trained):
    logs = _logs(embedded_stack, trained["id"])
    warm = [m for m in logs if m.startswith("tokenizer warm-up: ")]
    assert warm and "loss " in warm[-1] and "samples/s" in warm[-1], logs
    for stage in (1, 2):
        lines = [m for m in logs if m.startswith(f"train stage {stage}: ")]
        assert len(lines) >= 2, f"stage {stage}: {lines}"
        assert "/60 steps" in lines[0] and "loss " in lines[0] and "samples/s" in lines[0] and "ETA" in lines[0]
        assert lines[-1].startswith(f"train stage {stage}: 60/60 steps (100%)") and lines[-1].endswith("done")


def test_ray_train_runs_and_job_are_visible(embedded_stack, built, trained):
    version = json.loads((built["root"] / "manifest.json").read_text())["version"]
    runs = _ray_get(embedded_stack, "/api/train/v2/runs/v1")["train_runs"]
    names = {r["name"] for r in runs}
    assert {f"nsarm-tiny-{version}-stage1", f"nsarm-tiny-{version}-stage2"} <= names, names
    jobs = _ray_get(embedded_stack, "/api/jobs/")
    flow_name = flow_run(embedded_stack, trained["id"])["name"]
    assert f"train-nsarm tiny <- {built['root']} (flow run {flow_name})" in [
        (j.get("metadata") or {}).get("job_name", "") for j in jobs]
