"""The caption stage on Ray: a pool of actors, each holding one captioner (model replica), fed one shard at a time.

    summary = run_captioning("s3://bucket/ds", CaptionConfig(model_path="/models/llava-1.5-13b-hf"), ray_address="auto")

The only module of `captioning/` that imports Ray. Scheduling is a small hand-written loop over `ray.wait` rather
than `ActorPool`, because it must survive actors dying: when an actor dies (node lost, OOM-killed, `ray.kill`),
its shard goes back to the queue and runs on another actor, and a replacement actor is started. A shard whose
worker *reports* a failure (`ShardResult.ok == False`) is retried up to `max_retries` times. Shards already done
(their `_stats.json` exists) are skipped by the worker, so rerunning the same command resumes a job.

Each actor batches within its shard (`CaptionConfig.batch_size` images per `generate`); shards hold hundreds to
thousands of images, so the one partial batch at a shard's end costs little.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace

import ray
from ray.exceptions import RayActorError

from captioning.config import CaptionConfig, cap_hash, caption_config
from captioning.worker import CaptionWorker, ShardResult, input_shards, summarize, write_config
from dataset.distributed import connect, object_store_env, task_name
from dataset.progress import progress_line

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

    def run(self, shards: list[int], progress: Callable[[dict], None] | None = None) -> list[ShardResult]:
        """Caption `shards` across the pool; returns one result per shard, in the order given.

        `progress(event)` is called in this (driver) thread after every finished shard with
        {"done", "total", "shard", "ok", "captions", "captions_per_s", "actor_failures"}.
        """
        if not self.actors:
            self.start()
        queue, attempts = deque(shards), Counter()
        idle, results = list(self.actors), {}
        t0, captions = time.perf_counter(), 0
        while queue or self._inflight:
            while queue and idle:
                actor, shard = idle.pop(), queue.popleft()
                name = task_name("caption", f"captions/{self.cap_hash}", shard)
                self._inflight[actor.run.options(name=name).remote(shard)] = (actor, shard)
            if not self._inflight:  # every actor died and no replacement is allowed
                for shard in queue:
                    results[shard] = ShardResult(False, shard, err="no live caption actor left")
                break
            [ref], _ = ray.wait(list(self._inflight), num_returns=1)
            actor, shard = self._inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:
                result = self._actor_died(actor, shard, e, idle)
            else:
                idle.append(actor)
            if not result.ok and attempts[shard] < self.max_retries:
                attempts[shard] += 1
                log.warning("shard %06d failed (%s); retry %d/%d", shard, result.err, attempts[shard],
                            self.max_retries)
                queue.append(shard)
                continue
            results[shard] = result
            captions += result.n if not result.skipped else 0
            rate = captions / max(time.perf_counter() - t0, 1e-9)
            log.info(progress_line("caption", len(results), len(shards), "shards", time.perf_counter() - t0,
                                   rate=rate, rate_unit="captions/s", detail=f"shard {shard:06d}, {captions} captions"))
            if progress is not None:
                progress({"done": len(results), "total": len(shards), "shard": shard, "ok": result.ok,
                          "captions": captions, "captions_per_s": rate, "actor_failures": self.actor_failures})
        return [results[s] for s in shards]

    def _actor_died(self, actor, shard: int, error: Exception, idle: list) -> ShardResult:
        """Drop a dead actor, start a replacement if allowed, and report the shard as failed (so it is retried)."""
        self.actor_failures += 1
        if actor in self.actors:
            self.actors.remove(actor)
        log.warning("caption actor died on shard %06d: %s", shard, str(error).splitlines()[0])
        if self.restarts_left > 0:
            self.restarts_left -= 1
            idle.append(self._spawn())
        return ShardResult(False, shard, err=f"actor died: {type(error).__name__}")

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()


def run_captioning(root: str, cfg: CaptionConfig | str | None = None, ray_address: str | None = None,
                   shards: list[int] | None = None, num_actors: int | None = None, max_retries: int = 2,
                   progress: Callable[[dict], None] | None = None, **overrides) -> dict:
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
        summary dict: shards, done, skipped, failed {shard: error}, captions, too_long, seconds, captions_per_s,
        cap_hash, actors, actor_failures.
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
    return summarize(results, time.perf_counter() - t0, cap_hash=h, actors=pool.num_actors,
                     actor_failures=pool.actor_failures)
