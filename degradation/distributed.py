"""The degradation stage on Ray: one task per HR shard running `DegradeShard`, through `dataset.distributed`.

    from degradation.distributed import run_degradation
    summary = run_degradation("s3://bucket/ds", PRESETS["realesrgan"], seed=0)             # or ray_address="auto"

Each task asks for `gpus_per_task` of a GPU when the cluster has GPUs (several shards share one device), else one
CPU. Failed shards (ShardResult.ok False, or a task that died) are resubmitted up to `retries` times; done shards
are skipped by the worker itself (their `_stats.json` exists), so rerunning the same call is the recovery path.
"""

from __future__ import annotations

import logging
import time

import ray

from dataset import contract
from dataset.distributed import TaskSlots, connect, distribute, in_flight_limit, object_store_env, task_name
from dataset.stage import ProgressReporter, ShardResult
from degradation.config import DegradationConfig
from degradation.worker import DegradeShard, ensure_config_json, summarize_run

log = logging.getLogger(__name__)


def _degrade_shard(root: str, cfg: dict, seed: int, batch_size: int, hr_size: int | None, shard: int,
                   ) -> ShardResult:
    return DegradeShard(root, DegradationConfig.from_dict(cfg), seed, batch_size=batch_size, hr_size=hr_size)(shard)


def run_degradation(root: str, cfg: DegradationConfig, seed: int, ray_address: str | None = None,
                    shards: list[int] | None = None, batch_size: int = 8, hr_size: int | None = None,
                    gpus_per_task: float = 0.25, retries: int = 2) -> dict:
    """Degrade every done HR shard of `root` (or `shards`) on a Ray cluster; the build-dataset flow calls this.

    Args:
        root: dataset root URL (local path or s3://…).
        cfg, seed: the degradation config and dataset seed; output goes to {root}/lr/{deg_hash(cfg, seed)}.
        ray_address: None = the running/implicit local cluster, "auto" or "ray://host:10001" to join one.
        shards: shard ids; None = those with `{root}/hr/{shard}_stats.json`.
        gpus_per_task: GPU fraction per task when the cluster has GPUs.
        retries: extra attempts for a failed shard.
    Returns:
        `StageSummary.to_dict()` (dataset/stage.py): output "lr/<deg_hash>", version = deg_hash, samples = LR
        images, bad_samples = HR samples left out; totals = n_input.
    """
    connect(ray_address)
    t0 = time.monotonic()
    h = ensure_config_json(root, cfg, seed)
    todo = sorted(contract.list_shards(root, "hr", done_only=True) if shards is None else shards)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    opts = {"num_gpus": gpus_per_task, "num_cpus": 1} if has_gpu else {"num_cpus": 1}
    if (env := object_store_env()) is not None:  # worker processes do not inherit the driver's environment
        opts["runtime_env"] = env
    per_task = {"GPU": gpus_per_task, "CPU": 1} if has_gpu else {"CPU": 1}
    slots = TaskSlots(_degrade_shard, (root, cfg.to_dict(), seed, batch_size, hr_size),
                      lambda s: task_name("degrade", f"lr/{h}", s), opts, in_flight_limit(per_task))
    progress = ProgressReporter("degrade", "images", log.info, time.monotonic)
    results = distribute(todo, slots, retries, stage="degrade", progress=progress)
    return summarize_run(root, h, results, time.monotonic() - t0)
