"""`train-nsarm` flow: [tokenizer warm-up (tiny)] → stage 1 → stage 2 → evaluate on the held-out split → register.

    prefect deployment run train-nsarm/default        # tiny preset on build-dataset's default root
    prefect deployment run train-nsarm/default -p root=/data/nsarm -p preset=tiny -p num_workers=2 -p use_gpu=false
    prefect deployment run train-nsarm/default -p root=s3://bucket/nsarm -p preset=nsarm-8b-16gpu \\
        -p stage1='{"init_from": "/models/NSARM.pth", "tokenizer_path": "/models/vae_d56.pth"}'

Each stage is one Ray Train job (visible in the Ray dashboard) that resumes its run when rerun (`resume=true`, the
default: run names are derived from the preset and the dataset version). Stage 1 exports the transformation net,
stage 2 starts from that export. The evaluate step upscales the held-out samples (the last `holdout` samples of the
last shard, never trained on) and scores PSNR/SSIM(Y) against bicubic; the register step gives the stage-2 model
version the alias `champion` when it beats the current champion's PSNR (or there is none). A markdown artifact
links the MLflow runs and the model version.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.params import TrainPreset, default_root
from flows.progress import forward_library_logs, name_ray_job
from nsarm.train.config import train_preset


@task
def warm_tokenizer(root: str, storage: str, steps: int, holdout: int) -> str:
    from nsarm.train.holdout import warm_up_tokenizer

    # bounded: the demo must not spend more than a few minutes here on a loaded 2-core machine
    return warm_up_tokenizer(root, f"{storage}/tokenizer/tiny.safetensors", steps=steps, holdout=holdout,
                             max_seconds=240)


@task
def train_stage(root: str, preset: str, stage_no: int, num_workers: int, use_gpu: bool, overrides: dict,
                storage: str, run_name: str | None, init_from: str | None = None) -> dict:
    from nsarm.train.ray_trainer import run_stage

    return run_stage(root, preset=preset, stage=stage_no, num_workers=num_workers, use_gpu=use_gpu,
                     storage_path=storage, run_name=run_name, overrides=overrides, init_from=init_from)


@task
def evaluate(root: str, trained: dict, holdout: int) -> dict:
    from nsarm.eval.holdout import evaluate_export

    return evaluate_export(trained["export"]["uri"], root, holdout, f"{trained['run_dir']}/eval",
                           mlflow_run_id=trained["mlflow_run_id"], tracking_uri=trained["tracking_uri"])


@task
def register(trained: dict, scores: dict) -> dict:
    from nsarm.train.registry import promote_champion

    return promote_champion(trained, scores)


@flow(name="train-nsarm", log_prints=True)
def train_nsarm(root: str = default_root(), preset: TrainPreset = "tiny", num_workers: int = 2,
                use_gpu: bool = False, resume: bool = True, stage1: dict | None = None, stage2: dict | None = None,
                storage_path: str | None = None, holdout: int = 2, tokenizer_steps: int = 300) -> dict:
    """Train both stages on the dataset under `root`, evaluate on its held-out samples, register in MLflow.

    Args:
        root: dataset root (local folder or s3://) built by build-dataset; the default, `<stack state dir>/data`,
            is where build-dataset writes by default.
        preset: training preset: `tiny` (CPU, minutes) or `nsarm-8b-16gpu` (Infinity-8B, 2 x 8 GPUs).
        num_workers: Ray Train workers per stage.
        use_gpu: one GPU per worker (NCCL) instead of CPU workers (gloo).
        resume: rerun the same runs (continue from their checkpoints); false starts new, timestamped runs.
        stage1: stage-1 TrainConfig overrides, e.g. {"steps": 200, "lr": 1e-3, "init_from": "/models/NSARM.pth"}.
        stage2: stage-2 TrainConfig overrides, e.g. {"steps": 200}.
        storage_path: Ray Train storage for checkpoints and exports (local or s3://); default `runs/` beside a
            local root.
        holdout: samples kept out of training and used by the evaluate step (0 = skip evaluation).
        tokenizer_steps: presets with a tokenizer warm-up (tiny) only: warm-up steps of the tiny tokenizer on the
            dataset (0 = random).
    """
    from nsarm.train.ray_trainer import default_storage

    recipe = train_preset(preset)  # an unknown preset fails here, before Ray or any stage starts
    forward_library_logs()
    name_ray_job(f"train-nsarm {preset} <- {root}")
    storage = (storage_path or default_storage(root)).rstrip("/")
    suffix = "" if resume else time.strftime("-%Y%m%d-%H%M%S", time.gmtime())
    names = {n: (f"{preset}-stage{n}{suffix}" if suffix else None) for n in (1, 2)}
    s1 = dict(stage1 or {}, holdout=holdout)
    s2 = dict(stage2 or {}, holdout=holdout)
    if recipe.tokenizer_warm_up and tokenizer_steps > 0 and "tokenizer_path" not in s1:
        s1["tokenizer_path"] = warm_tokenizer(root, storage, tokenizer_steps, holdout)
    first = train_stage(root, preset, 1, num_workers, use_gpu, s1, storage, names[1])
    second = train_stage(root, preset, 2, num_workers, use_gpu, s2, storage, names[2],
                         init_from=first["export"]["uri"])
    scores = evaluate(root, second, holdout) if holdout > 0 else {}
    registered = register(second, scores)
    create_markdown_artifact(markdown_summary(first, second, scores, registered), key="train-nsarm",
                             description="NSARM training: MLflow runs, model version, held-out scores")
    return {"stage1": _brief(first), "stage2": _brief(second), "scores": scores, "registry": registered}


def _brief(out: dict) -> dict:
    return {k: out.get(k) for k in ("run_name", "run_dir", "mlflow_run_id", "model_version")} | {
        "checkpoint_uri": out["export"]["uri"], "sha256": out["export"]["sha256"], "loss": out["metrics"].get(
            "train/loss")}


def markdown_summary(first: dict, second: dict, scores: dict, registered: dict) -> str:
    lines = ["# train-nsarm", "", "| stage | run | MLflow run | model version | checkpoint | sha256 |",
             "|---|---|---|---|---|---|"]
    for n, out in ((1, first), (2, second)):
        link = registered.get("run_urls", {}).get(str(n)) or out.get("mlflow_run_id") or "-"
        lines.append(f"| {n} | {out['run_name']} | {link} | {out.get('model_version') or '-'} | "
                     f"`{out['export']['uri']}` | `{out['export']['sha256'][:16]}…` |")
    if scores:
        m, b = scores.get("model", {}), scores.get("bicubic", {})
        lines += ["", f"Held-out ({len(scores.get('keys', []))} images): PSNR-Y {m.get('psnr', float('nan')):.2f} dB "
                  f"(bicubic {b.get('psnr', float('nan')):.2f}), SSIM-Y {m.get('ssim', float('nan')):.4f} "
                  f"(bicubic {b.get('ssim', float('nan')):.4f})"]
    if registered.get("model_url"):
        lines += ["", f"Registered model: [{registered['name']} v{registered['version']}]({registered['model_url']})"
                      f" aliases: {', '.join(registered.get('aliases', []))}"]
    return "\n".join(lines)
