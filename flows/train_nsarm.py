"""`train-nsarm` flow: stage 1 (transformation net) → stage 2 (end-to-end) → evaluate → register in MLflow.

    prefect deployment run train-nsarm/default -p root=/data/nsarm -p preset=tiny
"""

from __future__ import annotations

from prefect import flow, task

from flows.stages import stage


@task
def train_stage(root: str, preset: str, stage_no: int, num_workers: int, use_gpu: bool) -> dict:
    run_stage = stage(f"train stage {stage_no}", "nsarm.train.ray_trainer", "run_stage")
    return run_stage(root, preset=preset, stage=stage_no, num_workers=num_workers, use_gpu=use_gpu)


@flow(name="train-nsarm", log_prints=True)
def train_nsarm(root: str = ".nsarm/data", preset: str = "tiny", num_workers: int = 2, use_gpu: bool = False) -> dict:
    s1 = train_stage(root, preset, 1, num_workers, use_gpu)
    s2 = train_stage(root, preset, 2, num_workers, use_gpu)
    return {"stage1": s1, "stage2": s2}
