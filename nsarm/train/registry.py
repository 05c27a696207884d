"""Model-registry decisions of the train-nsarm flow: score a version, describe it in words, move `champion`.

    out = promote_champion(stage2_result, scores)   # scores from holdout.evaluate_export
    # out = {"name": "nsarm", "version": "7", "champion": True, "aliases": ["stage2", "champion"], "model_url", ...}

A version is an MLflow pyfunc model (nsarm/pyfunc.py) whose tags hold the checkpoint URI and sha256
(ray_trainer.register_export). Here the held-out PSNR / SSIM (and bicubic's on the same images) become metrics of the
version's logged model (`eval.psnr`, `eval.bicubic_psnr`, …; MLflow 3 shows them on the version page), the
description is rewritten with them rounded, and the alias `champion` moves to the version when its PSNR-Y beats the
current champion's (or there is no champion yet). A rerun with the same scores logs nothing twice. Without MLflow
nothing is registered.
"""

from __future__ import annotations

import math

from nsarm import tracking
from nsarm.train.ray_trainer import REGISTERED_MODEL

CHAMPION = "champion"


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

    tracking.init_tracking(tracking_uri)
    return str(pyfunc.checkpoint_dir(f"models:/{REGISTERED_MODEL}@{alias}"))
