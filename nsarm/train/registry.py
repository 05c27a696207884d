"""The model registry side of training: the stage's MLflow run, its registered versions, and the `champion` alias.

    run_id = start_tracking(cfg, scaling, root, run_dir, name, preset, tracking_uri)   # ray_trainer, before fit()
    version = register_export(export, run_id, stage=2, tracking_uri=uri)             # ray_trainer, after fit()
    out = promote_champion(stage2_result, scores)   # scores from nsarm.eval.holdout.evaluate_export
    # out = {"name": "nsarm", "version": "7", "champion": True, "aliases": ["stage2", "champion"], "model_url", ...}

`start_tracking` creates one run per stage in the model-training experiment `nsarm-train` (its id is stored beside
the checkpoints, `mlflow_run_id.txt`, so a rerun continues the same run) and logs every config as params and the
dataset as the run's input (lineage). `register_export` logs the export as an MLflow pyfunc model of the run
(nsarm/pyfunc.py: weights referenced by URI + sha256, not copied), registers it as a version of `nsarm` (once: the
same run and sha256 reuse their version) and moves the alias `stage{n}` to it.

Then the held-out PSNR / SSIM (and bicubic's on the same images) become metrics of the version's logged model
(`eval.psnr`, `eval.bicubic_psnr`, …; MLflow 3 shows them on the version page), the description is rewritten with
them rounded, and the alias `champion` moves to the version when its PSNR-Y beats the current champion's (or there
is no champion yet). A rerun with the same scores logs nothing twice. Without MLflow nothing is registered. MLflow
itself is reached only through nsarm/tracking.py and nsarm/pyfunc.py.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

import fsspec

from nsarm import tracking

EXPERIMENT = "nsarm-train"
REGISTERED_MODEL = "nsarm"
RUN_ID_FILE = "mlflow_run_id.txt"
CHAMPION = "champion"


# ------------------------------------------------------------------------------------------------ runs and versions
def _read_text(url: str) -> str | None:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path).decode().strip() if fs.exists(path) else None


def _write_text(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, text.encode())


def start_tracking(cfg, scaling, root: str, run_dir: str, name: str, preset: str, tracking_uri: str | None) -> str:
    """Create (or find, on a rerun) the stage's MLflow run; log configs (TrainConfig `cfg`, ScalingSpec `scaling`)
    and the dataset lineage. Returns the run id."""
    from dataset import contract
    from nsarm.model import model_config
    from nsarm.train.data import dataset_version

    tracking.mark_model_training(EXPERIMENT, tracking_uri)
    id_url = f"{run_dir}/{RUN_ID_FILE}"
    run_id = _read_text(id_url)
    if run_id and tracking.run_exists(run_id, tracking_uri):
        return run_id
    version = dataset_version(root)
    run_id = tracking.create_run(EXPERIMENT, run_name=name, tracking_uri=tracking_uri,
                                 tags={"nsarm.stage": str(cfg.stage), "nsarm.preset": preset,
                                       "nsarm.dataset_version": version, "nsarm.run_dir": run_dir})
    with tracking.start_run(EXPERIMENT, run_id=run_id, tracking_uri=tracking_uri):
        tracking.log_params({"train": cfg.to_dict(), "model": model_config(cfg.model).to_dict(),
                             "scaling": asdict(scaling), "dataset": {"root": root, "version": version}})
        manifest = contract.manifest_path(root)
        if contract.exists(manifest):
            tracking.log_dataset(contract.read_json(manifest), manifest, context="training", details=False)
    _write_text(id_url, run_id)
    return run_id


def register_export(export: dict, run_id: str, stage: int, tracking_uri: str | None,
                    aliases: tuple[str, ...] = (), preset: str = "", dataset: str = "") -> str:
    """Register an export as a version of `nsarm`, once: the export is logged as an MLflow pyfunc model of the run
    (the version's source) and its export.json as `model-pointer/stage{n}`; the tags carry the checkpoint URI +
    sha256. A version already registered from this run with this sha256 is returned instead of a new one. Moves
    each alias (default `stage{n}`) to the version."""
    from nsarm import pyfunc

    tags = {"checkpoint_uri": export["uri"], "sha256": export["sha256"], "official_uri": export["official"],
            "official_sha256": export["official_sha256"], "stage": stage, "step": export.get("step", ""),
            "preset": preset, "dataset": dataset}
    version = tracking.find_model_version(REGISTERED_MODEL, run_id, {"sha256": export["sha256"],
                                                                     "checkpoint_uri": export["uri"]}, tracking_uri)
    if version is None:
        with tempfile.TemporaryDirectory() as tmp, \
                tracking.start_run(EXPERIMENT, run_id=run_id, tracking_uri=tracking_uri):
            p = Path(tmp) / "export.json"
            p.write_text(json.dumps(export, indent=2, default=str))
            tracking.log_artifact(p, f"model-pointer/stage{stage}")
            info = pyfunc.log_export(export, f"nsarm-stage{stage}", run_id, tags=tags)
        version = tracking.register_model_version(REGISTERED_MODEL, source=info.model_uri, run_id=run_id,
                                                  model_id=info.model_id, tags=tags, tracking_uri=tracking_uri,
                                                  description=version_description(tags))
    for alias in aliases or (f"stage{stage}",):
        tracking.set_model_alias(REGISTERED_MODEL, alias, version, tracking_uri)
    return version


# ------------------------------------------------------------------------------------------------ scores, champion
def version_description(tags: dict, scores: dict | None = None) -> str:
    """The version page's description, in words, from the version's tags (and held-out scores once known)."""
    lines = [f"NSARM ×4 super-resolution, stage {tags.get('stage', '?')} of preset `{tags.get('preset') or '?'}`, "
             f"trained {tags.get('step') or '?'} steps on dataset `{tags.get('dataset') or '?'}`.",
             f"Weights stay at `{tags.get('checkpoint_uri')}` (model.safetensors sha256 "
             f"`{str(tags.get('sha256', ''))[:16]}…`, checked at load); the training run is this version's source run.",
             "Load: `mlflow.pyfunc.load_model(\"models:/nsarm@champion\").predict(lr_uint8_NHW3)` or "
             "`nsarm upscale lr.png sr.png --model models:/nsarm@champion`."]
    m, b = (scores or {}).get("model", {}), (scores or {}).get("bicubic", {})
    if m:
        n = len((scores or {}).get("keys", [])) or "the"
        lines.append(f"Held-out ({n} images): PSNR-Y {m.get('psnr', math.nan):.2f} dB vs bicubic "
                     f"{b.get('psnr', math.nan):.2f} dB; SSIM-Y {m.get('ssim', math.nan):.4f} vs bicubic "
                     f"{b.get('ssim', math.nan):.4f}.")
    return "\n\n".join(lines)


def _score_metrics(scores: dict) -> dict[str, float]:
    out = {f"eval.{k}": v for k, v in scores.get("model", {}).items()}
    out.update({f"eval.bicubic_{k}": v for k, v in scores.get("bicubic", {}).items()})
    return out


def record_scores(version: str, scores: dict, uri: str) -> dict:
    """Log `scores` as metrics of the version's logged model (unless it already has exactly these) and rewrite its
    description; returns the version."""
    mv = tracking.get_model_version(REGISTERED_MODEL, version=version, tracking_uri=uri)
    metrics = _score_metrics(scores)
    if metrics and mv["model_id"]:
        have = tracking.logged_model_metrics(mv["model_id"], uri)
        if any(have.get(k) != float(v) for k, v in metrics.items() if math.isfinite(float(v))):
            tracking.log_model_metrics(mv["model_id"], mv["run_id"], metrics, uri)
    text = version_description(mv["tags"], scores)
    if text != mv["description"]:
        tracking.set_model_version_description(REGISTERED_MODEL, version, text, uri)
    return mv


def _champion_score(uri: str, metric: str) -> tuple[dict | None, float]:
    try:
        current = tracking.get_model_version(REGISTERED_MODEL, alias=CHAMPION, tracking_uri=uri)
    except Exception:  # no champion yet (MLflow raises RESOURCE_DOES_NOT_EXIST)
        return None, math.nan
    have = tracking.logged_model_metrics(current["model_id"], uri) if current["model_id"] else {}
    # versions registered before scores became metrics kept them as tags
    return current, float(have.get(f"eval.{metric}", current["tags"].get(f"eval.{metric}", math.nan)))


def promote_champion(trained: dict, scores: dict, metric: str = "psnr") -> dict:
    uri, version, run_id = trained.get("tracking_uri"), trained.get("model_version"), trained.get("mlflow_run_id")
    out = {"name": REGISTERED_MODEL, "version": version, "champion": False, "aliases": []}
    if not (uri and version and run_id):
        return out
    current, old = _champion_score(uri, metric)  # before recording: on a rerun the champion may be this version
    record_scores(version, scores, uri)
    new = float(scores.get("model", {}).get(metric, math.nan))
    if current is None or (math.isfinite(new) and not new <= old):  # NaN old (never scored) loses to a score
        tracking.set_model_alias(REGISTERED_MODEL, CHAMPION, version, uri)
        out["champion"] = True
    out["champion"] = out["champion"] or (current is not None and current["version"] == version)
    out["previous_champion"] = current["version"] if current else None
    out["aliases"] = tracking.get_model_version(REGISTERED_MODEL, version=version, tracking_uri=uri)["aliases"]
    base = uri.rstrip("/")
    out["model_url"] = f"{base}/#/models/{REGISTERED_MODEL}/versions/{version}"
    exp = tracking.get_run_data(run_id, uri)["experiment_id"]
    out["run_urls"] = {"2": f"{base}/#/experiments/{exp}/runs/{run_id}"}
    return out


def resolve_checkpoint(alias: str = CHAMPION, tracking_uri: str | None = None) -> str:
    """The verified local checkpoint directory (our format, what `nsarm upscale --checkpoint` loads) of
    `nsarm@alias`: its weights are fetched if remote and re-hashed (ExportError naming a missing or changed file)."""
    from nsarm import pyfunc

    return str(pyfunc.checkpoint_dir(f"models:/{REGISTERED_MODEL}@{alias}", tracking_uri))
