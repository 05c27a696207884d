"""A two-node Ray cluster simulated on this machine, the way the production cluster runs the flows.

The embedded stack (`nsarm stack up`, Ray head limited to 1 CPU) tracks into MLflow on a real PostgreSQL backend with
a moto S3 artifact store; `nsarm stack add-node` joins a second 1-CPU Ray node with its own resource. Both
deployments run through Prefect:

- build-dataset: its Ray tasks land on both nodes (Ray's state API, by node id);
- train-nsarm (2 workers × 1 CPU): the two training workers run on the two nodes; the second node is killed
  (SIGKILL of its whole process group) after the first checkpoint, the group cannot be placed again on the head
  alone, and when the node rejoins Ray Train restarts the group from the last checkpoint: the step counter continues
  (the per-step sample log), the flow completes and the model versions land in the PostgreSQL registry with their
  artifacts (sample grids, model pointer) in the bucket.

Budget: about 6-8 min on a 2-core machine (most of it the stack start and the two training stages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nsarm import stack_nodes
from nsarm.stack_nodes import ray_state
from tests.support.stack import NODE_RESOURCE, flow_run, submit_deployment, wait_flow_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
BIN = Path(sys.executable).parent
STAGE1 = {"steps": 12, "checkpoint_every": 2, "image_every": 4}
STAGE2 = {"steps": 2, "checkpoint_every": 2, "image_every": 2}


def _stack_cli(cfg, *args: str) -> subprocess.CompletedProcess:
    """`nsarm stack …` as an operator types it, for the stack `cfg`."""
    flags = ["--state-dir", str(cfg.state_dir), "--prefect-port", str(cfg.prefect_port), "--ray-port",
             str(cfg.ray_port), "--ray-dashboard-port", str(cfg.ray_dashboard_port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri}
    env.pop("RAY_ADDRESS", None)
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([str(BIN / "nsarm"), "stack", *args, *flags], capture_output=True, text=True, env=env,
                          timeout=180)


def _node_ids(cfg) -> dict[str, str]:
    """{"head": id, <node name>: id} of the alive nodes, told apart by the `nsarm_node_<name>` resource."""
    ids = {}
    for node in ray_state(cfg, "nodes", state="ALIVE"):
        if node["is_head_node"]:
            ids["head"] = node["node_id"]
        for res in node["resources_total"]:
            if res.startswith("nsarm_node_"):
                ids[res.removeprefix("nsarm_node_")] = node["node_id"]
    return ids


@pytest.fixture(scope="module")
def built(multinode_stack, sample_photos, photo_server, tmp_path_factory):
    """build-dataset through the deployment over the bundled photos, 3 shards of 4 (one dataset for the module)."""
    from dataset.samples import write_unsplash_tsv

    work = tmp_path_factory.mktemp("multinode-data")
    tsv = write_unsplash_tsv(sample_photos, photo_server.base_url, work / "photos.tsv")
    root = str(work / "root")
    cfg = multinode_stack.cfg
    run_id = submit_deployment(cfg, "build-dataset/default", {"source": str(tsv), "root": root, "preset": "tiny",
                                                               "shard_size": 4, "captioner": "metadata", "seed": 0})
    return {"run": wait_flow_run(cfg, run_id, timeout=600), "root": root, "nodes": _node_ids(cfg)}


def test_status_lists_the_second_node_and_errors_name_the_input(multinode_stack):
    cfg, node = multinode_stack.cfg, multinode_stack.node
    out = _stack_cli(cfg, "status", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert report["mlflow"]["state"] == "external" and report["mlflow"]["url"] == multinode_stack.mlflow.uri
    assert report["nodes"][node]["state"] == "running" and report["nodes"][node]["num_cpus"] == 1
    assert report["nodes"][node]["resources"] == {NODE_RESOURCE: 1.0, f"nsarm_node_{node}": 1.0}
    # the head sees it: two alive nodes of 1 CPU, the custom resource on the second only
    nodes = ray_state(cfg, "nodes", state="ALIVE")
    assert sorted(n["resources_total"]["CPU"] for n in nodes) == [1.0, 1.0]
    assert [n["is_head_node"] for n in nodes if NODE_RESOURCE in n["resources_total"]] == [False]

    bad = _stack_cli(cfg, "remove-node", "nosuchnode")
    assert bad.returncode == 1 and "'nosuchnode'" in bad.stderr and f"['{node}']" in bad.stderr
    bad = _stack_cli(cfg, "add-node", "--resources", '{"sim": one}')
    assert bad.returncode == 1 and "--resources" in bad.stderr and "not valid JSON" in bad.stderr
    bad = _stack_cli(cfg, "add-node", "--name", node)
    assert bad.returncode == 1 and f"node {node!r} is already running" in bad.stderr


def test_build_dataset_tasks_run_on_both_nodes(built, multinode_stack):
    run = built["run"]
    assert run["state"]["type"] == "COMPLETED", run["state"].get("message")
    manifest = json.loads((Path(built["root"]) / "manifest.json").read_text())
    assert manifest["num_samples"] == 12 and manifest["hr"]["shards"] == [0, 1, 2]
    both = {built["nodes"]["head"], built["nodes"][multinode_stack.node]}
    tasks = [t for t in ray_state(multinode_stack.cfg, "tasks", state="FINISHED")]
    # task names: `shard hr@<config hash> shard 000042`, `degrade lr/<deg hash> shard 000042` (flows/progress, #21.3)
    shard_nodes = {t["node_id"] for t in tasks if t["name"].startswith("shard hr@")}
    degrade_nodes = {t["node_id"] for t in tasks if t["name"].startswith("degrade lr/")}
    assert len([t for t in tasks if t["name"].startswith("shard hr@")]) == 3
    assert shard_nodes == both, f"shard tasks ran on {shard_nodes}, the nodes are {both}"
    assert degrade_nodes <= both and shard_nodes | degrade_nodes == both


def _rank0_steps(sample_log: Path) -> list[int]:
    path = Path(f"{sample_log}.rank0.jsonl")
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(what: str, check, timeout: float, interval: float = 1.0, flow=None):
    """Poll `check()` until it returns something; give up early (every ~5 s) if the flow run `flow()` has ended."""
    deadline = time.monotonic() + timeout
    next_flow_check = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        if flow is not None and time.monotonic() > next_flow_check:
            next_flow_check = time.monotonic() + 5
            if (state := flow()["state"]["type"]) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                raise AssertionError(f"the flow run ended ({state}) while waiting for {what}")
        time.sleep(interval)
    raise TimeoutError(f"{what} not seen within {timeout:.0f} s")


def test_training_spans_both_nodes_and_survives_losing_one(built, multinode_stack, postgres_server, moto_s3,
                                                           tmp_path):
    import boto3

    cfg, node, srv = multinode_stack.cfg, multinode_stack.node, multinode_stack.mlflow
    assert built["run"]["state"]["type"] == "COMPLETED"
    storage = tmp_path / "runs"
    nodes = _node_ids(cfg)  # unchanged until the kill
    run_id = submit_deployment(cfg, "train-nsarm/default", {
        "root": built["root"], "preset": "tiny", "num_workers": 2, "use_gpu": False, "stage1": STAGE1,
        "stage2": STAGE2, "holdout": 2, "tokenizer_steps": 10, "storage_path": str(storage)})
    flow = lambda: flow_run(cfg, run_id)  # noqa: E731

    def first_checkpoint():  # registered by Ray Train's controller, not just written by the workers
        for snap in storage.glob("*stage1/checkpoint_manager_snapshot.json"):
            try:
                state = json.loads(snap.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if state.get("latest_checkpoint_result"):
                return snap.parent
        return None

    # (b) the two training workers of stage 1 run on the two nodes
    workers = _wait_for("stage 1's two training workers", lambda: (
        ws if len(ws := ray_state(cfg, "actors", class_name="RayTrainWorker", state="ALIVE")) == 2 else None),
        timeout=480, flow=flow)
    assert sorted(w["node_id"] for w in workers) == sorted([nodes["head"], nodes[node]]), (workers, nodes)
    run_dir = _wait_for("stage 1's first checkpoint", first_checkpoint, timeout=300, interval=0.3, flow=flow)

    # (c) kill the second node (SIGKILL, no drain), wait until the head has lost it and training stalls, bring it back
    assert stack_nodes.remove_node(cfg, node, grace_s=0, echo=lambda *_: None) == "killed"
    steps_before = _rank0_steps(multinode_stack.sample_log)
    assert steps_before and max(steps_before) < STAGE1["steps"], "stage 1 finished before the node could be killed"
    _wait_for("the head to mark the node dead", lambda: node not in _node_ids(cfg), timeout=120)
    assert len(ray_state(cfg, "actors", class_name="RayTrainWorker", state="ALIVE")) <= 1
    # what rank 0 logged before the kill: the group can run no further step until the node is back
    before_kill = _rank0_steps(multinode_stack.sample_log)
    killed_at = len(before_kill)
    time.sleep(5)
    assert flow()["state"]["type"] == "RUNNING"
    stack_nodes.add_node(cfg, node, num_cpus=1, resources={NODE_RESOURCE: 1}, echo=lambda *_: None)
    final = wait_flow_run(cfg, run_id, timeout=600)
    assert final["state"]["type"] == "COMPLETED", final["state"].get("message")

    # resumed, not restarted: rank 0 logged stage 1's steps 1..k before the kill, then the restarted group went on
    # from the registered checkpoint c (2 <= c <= k; steps c+1..k are redone, none skipped), then stage 2 from 1
    steps = _rank0_steps(multinode_stack.sample_log)
    stage1, stage2 = steps[:-STAGE2["steps"]], steps[-STAGE2["steps"]:]
    assert before_kill == list(range(1, killed_at + 1)) and stage1[:killed_at] == before_kill
    resumed = stage1[killed_at:]
    c = resumed[0] - 1
    assert c >= STAGE1["checkpoint_every"] and c % STAGE1["checkpoint_every"] == 0 and c <= killed_at, steps
    assert resumed == list(range(c + 1, STAGE1["steps"] + 1)), steps
    assert stage2 == list(range(1, STAGE2["steps"] + 1)), steps
    print(f"stage 1: node killed after step {killed_at}, resumed from checkpoint step {c}; workers first on "
          f"{sorted(w['node_id'][:8] for w in workers)}")
    # the restarted group went to the head and the returned node (a new node id)
    new = _node_ids(cfg)
    assert new[node] != nodes[node]
    later = {w["node_id"] for w in ray_state(cfg, "actors", class_name="RayTrainWorker")} - {nodes[node]}
    assert later == {nodes["head"], new[node]}
    assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir())

    # the registry rows are in PostgreSQL: stage 1 and stage 2 versions, champion on stage 2
    conn = postgres_server.connect(srv.database)
    try:
        cur = conn.cursor()
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'nsarm'")
        aliases = dict(cur.fetchall())
        cur.execute("SELECT version, run_id FROM model_versions WHERE name = 'nsarm'")
        versions = dict(cur.fetchall())
        assert {"stage1", "stage2", "champion"} <= set(aliases) and aliases["champion"] == aliases["stage2"]
        stage1_run, stage2_run = versions[aliases["stage1"]], versions[aliases["stage2"]]
        # stage 1's loss history: every step once up to the checkpoint it resumed from, and the last step logged
        cur.execute("SELECT step, COUNT(*) FROM metrics WHERE run_uuid = %s AND key = 'train/loss' GROUP BY step",
                    (stage1_run,))
        counts = dict(cur.fetchall())
        assert sorted(counts) == list(range(1, STAGE1["steps"] + 1))
        assert all(counts[s] == 1 for s in range(1, c + 1))
        cur.execute("SELECT key FROM model_version_tags WHERE name = 'nsarm' AND version = %s",
                    (aliases["stage2"],))
        assert {"checkpoint_uri", "sha256"} <= {k for (k,) in cur.fetchall()}
        # the held-out scores are metrics of the version's logged model (MLflow 3's logged_model_metrics table)
        cur.execute("SELECT m.metric_name FROM logged_model_metrics m JOIN model_versions v ON v.source = "
                    "'models:/' || m.model_id WHERE v.name = 'nsarm' AND v.version = %s", (aliases["stage2"],))
        assert "eval.psnr" in {k for (k,) in cur.fetchall()}
    finally:
        conn.close()

    # the artifacts are in the moto bucket: sample grids of both stages, the model pointer of stage 2
    keys = [o["Key"] for page in boto3.client("s3", endpoint_url=moto_s3).get_paginator("list_objects_v2").paginate(
        Bucket=srv.bucket, Prefix=srv.prefix) for o in page.get("Contents", [])]
    assert any(f"/{stage1_run}/artifacts/samples/step_" in k and k.endswith(".png") for k in keys), keys
    assert any(f"/{stage2_run}/artifacts/samples/step_" in k for k in keys), keys
    assert any(k.endswith(f"/{stage2_run}/artifacts/model-pointer/stage2/export.json") for k in keys), keys
