"""`build-dataset` flow: source list → HR shards → LR (degradation) → captions → manifest → MLflow.

    prefect deployment run build-dataset/default           # bundled sample photos → <state dir>/data, tiny
    prefect deployment run build-dataset/default -p source=/data/unsplash/photos.tsv000 -p root=s3://bucket/nsarm \\
        -p preset=paper
    prefect deployment run build-dataset/default -p source=photos.tsv -p root=/tmp/ds -p preset=tiny

Each task calls one library function; every stage is idempotent (done shards are skipped), so a failed run is
recovered by running it again. Ray work goes to $RAY_ADDRESS (the embedded stack's head, or a real cluster).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from dataset.config import shard_config
from degradation.config import degradation_config
from flows.params import BUNDLED_SOURCE, Captioner, DegradationPreset, ShardPreset, default_root, resolve_source
from flows.progress import forward_library_logs, name_ray_job


@task(retries=1, retry_delay_seconds=5)  # safe: a rerun skips done shards and redoes partial ones
def shard(source: str, root: str, preset: str, overrides: dict, limit: int | None) -> dict:
    from dataset.build import build_shards

    return build_shards(source, root, shard_config(preset, **overrides), limit=limit)


@task(retries=1, retry_delay_seconds=5)
def degrade(root: str, preset: str, seed: int) -> dict:
    from degradation.distributed import run_degradation

    return run_degradation(root, degradation_config(preset), seed)


@task(retries=1, retry_delay_seconds=5)
def caption(root: str, captioner: str, model_path: str | None) -> dict:
    from captioning.distributed import run_captioning

    overrides = {"model_path": model_path} if model_path else {}
    return run_captioning(root, backend=captioner, **overrides)


@task
def manifest(root: str, name: str, summary: dict) -> dict:
    from dataset.manifest import write_manifest

    return write_manifest(root, name=name, extra={"build": summary})


@task
def log_to_mlflow(root: str, manifest: dict, experiment: str) -> str:
    from dataset.contract import manifest_path
    from nsarm import tracking

    with tracking.start_run(experiment, run_name=f"build-{manifest['version']}") as run_id:
        tracking.log_params({"root": root, "dataset": manifest["name"], "version": manifest["version"]})
        tracking.log_dataset(manifest, manifest_path(root), context="build")
    return run_id


def _stats_markdown(summary: dict, manifest: dict, run_id: str) -> str:
    """The run's markdown artifact. Each stage's summary is read as `StageSummary` (dataset/stage.py), so a missing
    or renamed key raises instead of printing 0."""
    from dataset.stage import StageSummary

    hr, lr, cap = (StageSummary.from_dict(summary[k]) for k in ("shard", "degrade", "caption"))
    rows = [  # (summary, what its samples are, stage-specific counts, rate unit)
        (hr, "images ok", f"{hr.totals['failed_to_download']} download failures, {hr.totals['failed_to_process']} "
                       f"rejected, {hr.totals['duplicates']} duplicates", "img/s"),
        (lr, "LR images", f"{lr.bad_samples} bad samples", "img/s"),
        (cap, "captions", f"{cap.totals['too_long']} longer than 512 T5 tokens", "captions/s"),
    ]
    table = "\n".join(f"| {s.stage} | {s.shards_done}/{s.shards_total} shards → `{s.output}` | {s.samples} {what}, "
                      f"{detail}, {len(s.shards_failed)} failed shards | {s.samples_per_s or 0:.1f} {unit} |"
                      for s, what, detail, unit in rows)
    return (f"# Dataset `{manifest['name']}` version `{manifest['version']}`\n\n"
            f"root `{manifest['root']}` — {manifest['num_samples']} samples in {manifest['num_shards']} shards; "
            f"MLflow run `{run_id}`\n\n| stage | output | counts | throughput |\n|---|---|---|---|\n{table}\n")


@flow(name="build-dataset", log_prints=True)
def build_dataset(source: str = BUNDLED_SOURCE, root: str = default_root(), preset: ShardPreset = "tiny",
                  shard_size: int | None = None, image_size: int | None = None, limit: int | None = None,
                  degradation: DegradationPreset = "realesrgan", captioner: Captioner = "metadata",
                  caption_model_path: str | None = None, seed: int = 0, name: str = "nsarm-dataset",
                  experiment: str = "nsarm-datasets") -> dict:
    """Build (or resume) a dataset under `root`; with no parameters, the bundled sample photos on the tiny preset.

    Args:
        source: Unsplash `photos.tsv*`, a csv/tsv/parquet URL list or an image folder (local or s3://);
            `bundled:sample-photos` (the default) is the 12 photos bundled with scikit-image.
        root: dataset root (local folder or s3://bucket/prefix); the default, `<stack state dir>/data`, is also
            train-nsarm's default root.
        preset: shard preset: `tiny` (256² crops, CPU demo) or `paper` (1024², short side >= 1024).
        shard_size: input rows per shard (default: the preset's, 8 for tiny, 1000 for paper).
        image_size: side of the square HR crops (default: the preset's); also the minimum short side.
        limit: only the first N rows of the source (default: all).
        degradation: degradation preset: `realesrgan` (the paper's second-order Real-ESRGAN), `nsarm-light`
            (NSARM add_deg.py's first-order `light`), `seesr` or `pisasr` (those papers' configs).
        captioner: `metadata` (the source's descriptions; a fixed caption where there are none), `llava` (needs
            caption_model_path) or `fixed` (the paper's fixed prompt).
        caption_model_path: local folder of LLaVA-1.5 weights, for captioner=llava.
        seed: dataset seed of the degradation (same seed, same LR images).
        name: dataset name in manifest.json and MLflow.
        experiment: MLflow experiment of the dataset-build run.
    """
    overrides = {"shard_size": shard_size, "image_size": image_size, "min_side": image_size}
    # An unknown preset (a run that bypassed the parameter schema) fails here, before Ray or any stage starts.
    shard_config(preset, **overrides)
    degradation_config(degradation)
    forward_library_logs()
    name_ray_job(f"build-dataset {preset} -> {root}")
    source = resolve_source(source)
    summary = {"shard": shard(source, root, preset, overrides, limit)}
    summary["degrade"] = degrade(root, degradation, seed)
    summary["caption"] = caption(root, captioner, caption_model_path)
    man = manifest(root, name, summary)
    run_id = log_to_mlflow(root, man, experiment)
    create_markdown_artifact(_stats_markdown(summary, man, run_id), key="build-dataset-stats",
                             description=f"build-dataset {man['version']}")
    return {"manifest": f"{root.rstrip('/')}/manifest.json", "version": man["version"], "mlflow_run_id": run_id,
            "num_samples": man["num_samples"]}
