"""Ray adapter (the only Ray code of degradation/): one Ray task per HR shard, running `DegradeShard`.

    from degradation.distributed import run_degradation
    totals = run_degradation("s3://bucket/ds", PRESETS["realesrgan"], seed=0)              # or ray_address="auto"

Each task asks for `gpus_per_task` of a GPU when the cluster has GPUs (several shards share one device), else one
CPU. Failed shards (ShardResult.ok False) are resubmitted up to `retries` times; done shards are skipped by the
worker itself (their `_stats.json` exists), so rerunning the same call is the recovery path.
"""

from __future__ import annotations

import logging
import time

import ray

from dataset import contract
from dataset.distributed import connect, object_store_env, task_name
from dataset.progress import progress_line
from degradation.config import DegradationConfig
from degradation.worker import DegradeShard, ShardResult, ensure_config_json

log = logging.getLogger(__name__)


@ray.remote(max_retries=2)  # infrastructure failures (a lost node); shard errors come back as ShardResult
def _degrade_shard_task(root: str, cfg: dict, seed: int, shard: int, batch_size: int, hr_size: int | None) -> dict:
    worker = DegradeShard(root, DegradationConfig.from_dict(cfg), seed, batch_size=batch_size, hr_size=hr_size)
    return worker(shard).to_dict()


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
    Returns:
        {"deg_hash", "lr_dir", "shards", "n_ok", "n_bad", "n_failed", "failed": {shard: err}, "skipped",
         "seconds", "images_per_s"}.
    """
    connect(ray_address)
    t0 = time.monotonic()
    h = ensure_config_json(root, cfg, seed)
    todo = sorted(contract.list_shards(root, "hr", done_only=True) if shards is None else shards)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    opts = {"num_gpus": gpus_per_task, "num_cpus": 1} if has_gpu else {"num_cpus": 1}
    if (env := object_store_env()) is not None:  # worker processes do not inherit the driver's environment
        opts["runtime_env"] = env

    results: dict[int, ShardResult] = {}
    attempt_left = {s: retries for s in todo}

    def submit(shard: int):
        task = _degrade_shard_task.options(name=task_name("degrade", f"lr/{h}", shard), **opts)
        return task.remote(root, cfg.to_dict(), seed, shard, batch_size, hr_size)

    pending = {submit(s): s for s in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(done[0])
        try:
            res = ShardResult(**ray.get(done[0]))
        except Exception as e:  # the task itself died (after Ray's own retries)
            res = ShardResult(False, shard, err=f"task failed: {type(e).__name__}: {e}")
        if not res.ok and attempt_left[shard] > 0:
            attempt_left[shard] -= 1
            log.warning("shard %06d failed (%s), retrying", shard, (res.err or "").splitlines()[0])
            pending[submit(shard)] = shard
            continue
        results[shard] = res
        fresh = sum(r.n for r in results.values() if r.ok and not r.skipped)
        elapsed = time.monotonic() - t0
        state = "skipped" if res.skipped else ("ok" if res.ok else "FAILED")
        log.info(progress_line("degrade", len(results), len(todo), "shards", elapsed, rate=fresh / max(elapsed, 1e-9),
                               rate_unit="images/s", detail=f"shard {shard:06d} {state}, {res.n} ok, {res.n_bad} bad"))

    seconds = time.monotonic() - t0
    fresh = sum(r.n for r in results.values() if r.ok and not r.skipped)
    return {
        "deg_hash": h, "lr_dir": contract.lr_dir(root, h), "shards": len(todo),
        "n_ok": sum(r.n for r in results.values() if r.ok), "n_bad": sum(r.n_bad for r in results.values()),
        "n_failed": sum(not r.ok for r in results.values()),
        "failed": {s: r.err for s, r in results.items() if not r.ok},
        "skipped": sum(r.skipped for r in results.values()), "seconds": round(seconds, 3),
        "images_per_s": round(fresh / max(seconds, 1e-9), 3),
    }
