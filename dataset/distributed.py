"""The one Ray adapter of the shard stages (the only module of `dataset/` that imports ray, docs/DESIGN.md §2):
`distribute` runs shard ids on Ray with a bounded number in flight, collects results as they finish and resubmits a
failed shard up to `retries` times (img2dataset's distributor + retrier); shard, degrade and caption all use it.

Where a shard runs is a *slots* object: `TaskSlots` (one Ray task per shard, here) or the caption stage's actor pool
(captioning/distributed.py), each with `capacity()`, `submit(shard) -> ObjectRef` and `finished(ref, error)`.
Tasks and actor calls are named `<stage> <version> shard 000042` (`task_name`), so the Ray dashboard's task table
doubles as a progress view. `connect` joins `ray_address` or `$RAY_ADDRESS` (a real cluster), else starts a local
Ray; an already initialised Ray (tests, the embedded stack) is reused.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence

from dataset.config import ShardConfig, config_hash
from dataset.shard import ShardBuilder
from dataset.sources import ShardSpec
from dataset.stage import ShardResult

log = logging.getLogger(__name__)

# Storage settings a driver may hold in its environment that workers need to reach the same root (moto in tests,
# a MinIO endpoint in the cluster). Passed explicitly because Ray workers inherit the raylet's env, not ours.
_FORWARD_ENV_PREFIXES = ("AWS_", "FSSPEC_", "S3_")


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


def in_flight_limit(per_task: dict[str, float]) -> int:
    """Tasks to keep in flight: twice what the cluster's resources fit at once (at least 2), so a worker that frees
    up finds the next shard queued, while 1,000 queued shards (each carrying its rows) do not sit in the object
    store. `per_task`: Ray resources one task asks for, e.g. {"CPU": 1, "GPU": 0.25}."""
    import ray

    cluster = ray.cluster_resources()
    fits = [cluster.get(name, 0) / amount for name, amount in per_task.items() if amount > 0]
    return max(2, int(2 * min(fits, default=1)))


class TaskSlots:
    """Slots for `distribute`: shard `s` runs as the Ray task `fn(*args, arg(s))` named `name(s)`.

    Args:
        fn: a plain function (made remote here) returning a ShardResult.
        args: its leading arguments (put in the object store once).
        name: shard id -> task name (`task_name`).
        options: Ray task options (num_cpus, num_gpus, runtime_env…); Ray's own `max_retries` is 0, since
            `distribute` resubmits a task that died as it resubmits a failed shard.
        limit: tasks in flight at most (`in_flight_limit`).
        arg: shard id -> the task's last argument (default: the id itself).
    """

    def __init__(self, fn: Callable[..., ShardResult], args: tuple, name: Callable[[int], str], options: dict,
                 limit: int, arg: Callable[[int], object] | None = None):
        import ray

        self.task, self.options = ray.remote(fn), {"max_retries": 0, **options}
        self.args = tuple(ray.put(a) for a in args)
        self.name, self.limit, self.arg = name, limit, arg or (lambda s: s)

    def capacity(self) -> int:
        return self.limit

    def submit(self, shard: int):
        return self.task.options(name=self.name(shard), **self.options).remote(*self.args, self.arg(shard))

    def finished(self, ref, error: Exception | None) -> None:
        """Nothing to release: a task's worker is Ray's business."""


def distribute(shards: Sequence[int], slots, retries: int, stage: str = "stage",
               progress: Callable[[ShardResult, int, int], None] | None = None) -> list[ShardResult]:
    """Run every shard through `slots`; one ShardResult per shard, in the order of `shards`. Never raises for a
    shard: a reported failure, a task that raised or a dead worker is resubmitted (at the back of the queue) up to
    `retries` times, then returned as `ShardResult(ok=False, err=…)`.

    Args:
        shards: shard ids.
        slots: `TaskSlots` or an object with the same three methods (the caption actor pool).
        retries: extra attempts per shard.
        stage: names the stage in the retry warnings.
        progress: called in this thread as `progress(result, done, total)` after each shard's final result.
    """
    import ray

    queue, attempts = deque(shards), Counter()
    pending: dict = {}  # ObjectRef -> shard id
    results: dict[int, ShardResult] = {}
    while queue or pending:
        while queue and len(pending) < slots.capacity():
            shard = queue.popleft()
            pending[slots.submit(shard)] = shard
        if not pending:  # no capacity left at all (e.g. every actor died and none may be replaced)
            for shard in queue:
                results[shard] = ShardResult(False, shard, err=f"not run: no Ray worker left for stage {stage}")
                if progress:
                    progress(results[shard], len(results), len(shards))
            break
        [ref], _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ref)
        try:
            res, error = ray.get(ref), None
        except Exception as e:  # the task raised, its worker or actor died, or it was cancelled
            res, error = ShardResult(False, shard, err=f"task failed: {type(e).__name__}: {e}"), e
        slots.finished(ref, error)
        if not res.ok and attempts[shard] < retries:
            attempts[shard] += 1
            log.warning("%s shard %06d failed (%s); retry %d/%d", stage, shard, (res.err or "").splitlines()[0],
                        attempts[shard], retries)
            queue.append(shard)
            continue
        results[shard] = res
        if progress:
            progress(res, len(results), len(shards))
    return [results[s] for s in shards]


def _build_one(cfg: ShardConfig, root: str, retry_failed: bool, spec: ShardSpec) -> ShardResult:
    return ShardBuilder(cfg, root, retry_failed)(spec)


def run_shards(specs: list[ShardSpec], cfg: ShardConfig, root: str, retry_failed: bool = False,
               ray_address: str | None = None, progress: Callable[[ShardResult, int, int], None] | None = None,
               ) -> list[ShardResult]:
    """Build every shard as a Ray task (`num_cpus=cfg.cpus_per_task`, named `shard hr@<config hash> shard N`);
    a shard that failed or lost its worker is re-run up to `cfg.max_shard_retries` times, then comes back as
    `ShardResult(ok=False)`, never raised. Results in the order of `specs`."""
    import ray

    started_here = connect(ray_address)
    try:
        options = {"num_cpus": cfg.cpus_per_task}
        if (env := object_store_env()) is not None:
            options["runtime_env"] = env
        by_id = {s.shard_id: s for s in specs}
        version = f"hr@{config_hash(cfg)}"
        slots = TaskSlots(_build_one, (cfg, root, retry_failed), lambda s: task_name("shard", version, s), options,
                          in_flight_limit({"CPU": cfg.cpus_per_task}), arg=by_id.__getitem__)
        return distribute(list(by_id), slots, cfg.max_shard_retries, stage="shard", progress=progress)
    finally:
        if started_here:
            ray.shutdown()
