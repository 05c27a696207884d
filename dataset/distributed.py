"""The Ray distributor of the shard stage (the only module of `dataset/` that imports ray, docs/DESIGN.md §2).

One Ray task per shard, `num_cpus=cfg.cpus_per_task` declared, named `shard hr@<config hash> shard 000042` so the Ray
dashboard's task table doubles as a progress view. Connects to `ray_address` or `$RAY_ADDRESS` (a real cluster), else starts a
local one and shuts it down afterwards; an already initialised Ray (tests, the embedded stack) is reused.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dataset.config import ShardConfig, config_hash
from dataset.shard import ShardBuilder, ShardResult
from dataset.sources import ShardSpec

# Storage settings a driver may hold in its environment that workers need to reach the same root (moto in tests,
# a MinIO endpoint in the cluster). Passed explicitly because Ray workers inherit the raylet's env, not ours.
_FORWARD_ENV_PREFIXES = ("AWS_", "FSSPEC_", "S3_")


def _build_one(cfg: ShardConfig, root: str, retry_failed: bool, spec: ShardSpec) -> ShardResult:
    return ShardBuilder(cfg, root, retry_failed)(spec)


def object_store_env() -> dict | None:
    """A Ray `runtime_env` carrying the driver's object-store settings to tasks and actors (None when there are
    none). The degradation and captioning distributors use it too."""
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_ENV_PREFIXES)}
    return {"env_vars": env} if env else None


def task_name(stage: str, version: str, shard: int) -> str:
    """The Ray task/actor-call name of one shard of a stage, e.g. `degrade lr/3f2a… shard 000042`: the dashboard's
    task table then says which stage, which output version and which shard is running."""
    return f"{stage} {version} shard {shard:06d}"


def connect(ray_address: str | None = None, job_name: str | None = None) -> bool:
    """Join `ray_address` or `$RAY_ADDRESS` (a real cluster), else start a local Ray without a dashboard; reuse an
    already initialised one. True when this call started it (the caller may shut it down). Shared by the three data
    stages' distributors and the flows, so they join a cluster the same way.

    Args:
        job_name: recorded as the Ray job's metadata `job_name` (the dashboard's job entry otherwise only shows
            the driver's command line, e.g. `python -m prefect.engine`); only the call that connects sets it.
    """
    import ray
    from ray.job_config import JobConfig

    if ray.is_initialized():
        return False
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    job_config = JobConfig(metadata={"job_name": job_name}) if job_name else None
    ray.init(address=address, log_to_driver=False, configure_logging=False, job_config=job_config,
             **({} if address else {"include_dashboard": False}))
    return True


def run_shards(specs: list[ShardSpec], cfg: ShardConfig, root: str, retry_failed: bool = False,
               ray_address: str | None = None, progress: Callable[[ShardResult, int, int], None] | None = None,
               ) -> list[ShardResult]:
    """Build every shard as a Ray task; results in completion order. A task lost with its worker is retried by
    Ray (`max_shard_retries`), and still-failing shards come back as `ShardResult(ok=False)`, never raised."""
    import ray

    started_here = connect(ray_address)
    try:
        options = {"num_cpus": cfg.cpus_per_task, "max_retries": cfg.max_shard_retries}
        if (env := object_store_env()) is not None:
            options["runtime_env"] = env
        task = ray.remote(_build_one)
        cfg_ref = ray.put(cfg)
        # Bound the tasks in flight: each carries its rows, and 1,000 queued shards of 10k rows would sit in the
        # object store for nothing.
        slots = max(2, int(2 * ray.cluster_resources().get("CPU", 1) / max(cfg.cpus_per_task, 1e-3)))
        todo, pending, results = list(specs), {}, []
        while todo or pending:
            while todo and len(pending) < slots:
                spec = todo.pop(0)
                name = task_name("shard", f"hr@{config_hash(cfg)}", spec.shard_id)
                ref = task.options(name=name, **options).remote(cfg_ref, root, retry_failed, spec)
                pending[ref] = spec.shard_id
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                sid = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # worker died more often than max_retries, or the task was cancelled
                    res = ShardResult(False, sid, 0, f"{type(e).__name__}: {e}")
                results.append(res)
                if progress:
                    progress(res, len(results), len(specs))
        return results
    finally:
        if started_here:
            ray.shutdown()

