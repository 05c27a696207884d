"""The caption stage on Ray: a pool of actors, each holding one captioner (model replica), fed one shard at a time.

    summary = run_captioning("s3://bucket/ds", CaptionConfig(model_path="/models/llava-1.5-13b-hf"), ray_address="auto")

The only module of `captioning/` that imports Ray. Scheduling is `dataset.distributed.distribute` (the shared
distributor with retries) over the pool's actors rather than `ActorPool`, because it must survive actors dying:
when an actor dies (node lost, OOM-killed, `ray.kill`), its shard goes back to the queue and runs on another actor,
and a replacement actor is started. A shard whose worker *reports* a failure (`ShardResult.ok == False`) is retried
up to `max_retries` times. Shards already done (their `_stats.json` exists) are skipped by the worker, so rerunning
the same command resumes a job.

Each actor batches within its shard (`CaptionConfig.batch_size` images per `generate`); shards hold hundreds to
thousands of images, so the one partial batch at a shard's end costs little.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import ray
from ray.exceptions import RayActorError

from captioning.config import CaptionConfig, cap_hash, caption_config
from captioning.worker import CaptionWorker, input_shards, progress_reporter, summarize_run, write_config
from dataset.distributed import connect, distribute, object_store_env, task_name
from dataset.stage import ShardResult

log = logging.getLogger(__name__)


class _CaptionActor:
    """Ray actor body: one `CaptionWorker` (hence one model replica) per actor process."""

    def __init__(self, root: str, cfg: CaptionConfig, torch_threads: int | None):
        if torch_threads:  # CPU actors: one torch thread pool per reserved CPU, not per machine core
            import torch

            torch.set_num_threads(torch_threads)
        self.worker = CaptionWorker(root, cfg)

    def ready(self) -> bool:
        return True

    def run(self, shard: int) -> ShardResult:
        return self.worker(shard)


CaptionActor = ray.remote(_CaptionActor)


class CaptionPool:
    """An actor pool over Ray that captions shards and recovers from dead actors.

    Args:
        root, cfg: as for `CaptionWorker`.
        num_actors: replicas; default one per GPU (GPU clusters) or one per `cpus_per_actor` CPUs.
        gpus_per_actor: GPUs reserved per actor when the cluster has GPUs (1 fits LLaVA-13B fp16 on a 40 GB card).
        cpus_per_actor: CPUs reserved per actor on a CPU-only cluster (or alongside the GPU).
        max_retries: extra attempts for a shard that failed or whose actor died.
        max_actor_restarts: replacement actors started over the whole run (default: num_actors).
    """

    def __init__(self, root: str, cfg: CaptionConfig, num_actors: int | None = None, gpus_per_actor: float = 1.0,
                 cpus_per_actor: float = 1.0, max_retries: int = 2, max_actor_restarts: int | None = None):
        self.root, self.cfg, self.max_retries = root, cfg, max_retries
        self.cap_hash = cap_hash(cfg)
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) > 0 and cfg.device != "cpu" and cfg.backend == "llava"
        if use_gpu:
            self.options = {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}
            default_n = int(resources["GPU"] // gpus_per_actor)
        else:
            self.options = {"num_cpus": cpus_per_actor}
            default_n = int(resources.get("CPU", 1) // cpus_per_actor)
        self.num_actors = max(1, num_actors or default_n)
        self.torch_threads = None if use_gpu else max(1, int(cpus_per_actor))
        self.restarts_left = self.num_actors if max_actor_restarts is None else max_actor_restarts
        self.actors: list = []
        self.actor_failures = 0
        self._inflight: dict = {}  # ObjectRef -> (actor, shard)
        self._idle: list = []  # live actors with no shard in flight

    def _spawn(self):
        opts = dict(self.options)
        if (env := object_store_env()) is not None:  # actors on a running cluster do not inherit our environment
            opts["runtime_env"] = env
        # named actors must be unique on the cluster: a counter and a random suffix keep two pools apart
        opts["name"] = f"caption captions/{self.cap_hash} actor {len(self.actors)} {uuid.uuid4().hex[:6]}"
        actor = CaptionActor.options(**opts).remote(self.root, self.cfg, self.torch_threads)
        self.actors.append(actor)
        return actor

    def start(self) -> None:
        """Start the actors and wait until each has loaded its model; a constructor error (e.g. a missing model
        directory) is raised here once instead of killing actor after actor."""
        while len(self.actors) < self.num_actors:
            self._spawn()
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except RayActorError as e:
            self.shutdown()
            raise RuntimeError(f"caption actors failed to start: {e}") from e

    def in_flight(self) -> list[tuple[object, int]]:
        """(actor handle, shard) for every shard being captioned right now."""
        return list(self._inflight.values())

    def run(self, shards: list[int], progress: Callable[[ShardResult, int, int], None] | None = None,
            ) -> list[ShardResult]:
        """Caption `shards` across the pool (`dataset.distributed.distribute`); one result per shard, in the order
        given. Each finished shard logs a progress line, then `progress(result, done, total)` is called."""
        if not self.actors:
            self.start()
        self._idle = list(self.actors)
        line = progress_reporter()

        def report(res: ShardResult, done: int, total: int) -> None:
            line(res, done, total)
            if progress is not None:
                progress(res, done, total)

        return distribute(shards, self, self.max_retries, stage="caption", progress=report)

    # -- the slots interface of `distribute`: one shard in flight per live actor
    def capacity(self) -> int:
        return len(self.actors)

    def submit(self, shard: int):
        actor = self._idle.pop()
        ref = actor.run.options(name=task_name("caption", f"captions/{self.cap_hash}", shard)).remote(shard)
        self._inflight[ref] = (actor, shard)
        return ref

    def finished(self, ref, error: Exception | None) -> None:
        actor, shard = self._inflight.pop(ref)
        if isinstance(error, RayActorError):
            self._actor_died(actor, shard, error)
        else:
            self._idle.append(actor)

    def _actor_died(self, actor, shard: int, error: Exception) -> None:
        """Drop a dead actor and start a replacement if allowed (`distribute` retries its shard)."""
        self.actor_failures += 1
        if actor in self.actors:
            self.actors.remove(actor)
        log.warning("caption actor died on shard %06d: %s", shard, str(error).splitlines()[0])
        if self.restarts_left > 0:
            self.restarts_left -= 1
            self._idle.append(self._spawn())

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()


def run_captioning(root: str, cfg: CaptionConfig | str | None = None, ray_address: str | None = None,
                   shards: list[int] | None = None, num_actors: int | None = None, max_retries: int = 2,
                   progress: Callable[[ShardResult, int, int], None] | None = None, **overrides) -> dict:
    """Caption every ready shard of `root` on a Ray actor pool (the build-dataset flow's caption stage).

        run_captioning(root, CaptionConfig(model_path="/models/llava-1.5-13b-hf"))
        run_captioning(root, backend="metadata")            # preset "paper" with field overrides
        run_captioning(root, "greedy", model_path="/models/llava-1.5-13b-hf", batch_size=8)

    Args:
        root: dataset root (local path or s3://…), as in docs/DESIGN.md §3.
        cfg: caption config, or a preset name from `captioning.config.PRESETS` (default "paper"); outputs go to
            `{root}/captions/{cap_hash(cfg)}/`.
        ray_address: joins that cluster ("auto", "ray://host:10001"); None uses RAY_ADDRESS when set, else starts
            (or reuses) a local one.
        shards: shard ids; default every HR shard that is done (and its LR shard, for image="lr").
        num_actors, max_retries, progress: see `CaptionPool`.
        **overrides: `CaptionConfig` fields replacing those of `cfg` (e.g. backend="metadata").

    Returns:
        `StageSummary.to_dict()` (dataset/stage.py): version = cap_hash, samples = caption rows; totals = too_long,
        n_fallback; extra = actors, actor_failures.
    """
    if not isinstance(cfg, CaptionConfig):
        cfg = caption_config(cfg or "paper", **overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    connect(ray_address)
    t0 = time.perf_counter()
    h = write_config(root, cfg)
    shards = input_shards(root, cfg) if shards is None else shards
    pool = CaptionPool(root, cfg, num_actors=num_actors, max_retries=max_retries)
    try:
        results = pool.run(shards, progress=progress) if shards else []
    finally:
        pool.shutdown()
    return summarize_run(root, h, results, time.perf_counter() - t0, actors=pool.num_actors,
                         actor_failures=pool.actor_failures)
