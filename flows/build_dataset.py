"""`build-dataset` flow: source list → HR shards → LR (degradation) → captions → manifest → MLflow.

    prefect deployment run build-dataset/default -p source=/path/photos.tsv -p root=/data/nsarm
"""

from __future__ import annotations

from prefect import flow, task

from flows.stages import stage


@task
def shard(source: str, root: str, shard_size: int, limit: int | None, image_size: int, seed: int) -> dict:
    build_shards = stage("shard", "dataset.distributed", "build_shards")
    return build_shards(source, root, shard_size=shard_size, limit=limit, image_size=image_size, seed=seed)


@task
def degrade(root: str, preset: str, seed: int) -> dict:
    run_degradation = stage("degrade", "degradation.distributed", "run_degradation")
    return run_degradation(root, preset=preset, seed=seed)


@task
def caption(root: str, captioner: str) -> dict:
    run_captioning = stage("caption", "captioning.distributed", "run_captioning")
    return run_captioning(root, backend=captioner)


@flow(name="build-dataset", log_prints=True)
def build_dataset(source: str = "", root: str = ".nsarm/data", shard_size: int = 1000, limit: int | None = None,
                  image_size: int = 1024, degradation: str = "realesrgan", captioner: str = "metadata",
                  seed: int = 0) -> dict:
    hr = shard(source, root, shard_size, limit, image_size, seed)
    lr = degrade(root, degradation, seed)
    caps = caption(root, captioner)
    return {"hr": hr, "lr": lr, "captions": caps}
