"""Model-registry decisions of the train-nsarm flow: record evaluation scores on a version and move `champion`.

    out = promote_champion(stage2_result, scores)   # scores from holdout.evaluate_export
    # out = {"name": "nsarm", "version": "7", "champion": True, "aliases": ["stage2", "champion"], "model_url", ...}

A version's tags already hold the checkpoint URI and sha256 (ray_trainer.register_export); here the held-out PSNR /
SSIM (and bicubic's on the same images) are added as `eval.*` tags, and the alias `champion` moves to the version
when its PSNR-Y beats the current champion's (or there is no champion yet). Without MLflow nothing is registered.
"""

from __future__ import annotations

import math

from nsarm import tracking
from nsarm.train.ray_trainer import REGISTERED_MODEL

CHAMPION = "champion"


def _score(tags: dict, metric: str) -> float:
    try:
        return float(tags.get(f"eval.{metric}", "nan"))
    except ValueError:
        return math.nan


def promote_champion(trained: dict, scores: dict, metric: str = "psnr") -> dict:
    uri, version, run_id = trained.get("tracking_uri"), trained.get("model_version"), trained.get("mlflow_run_id")
    out = {"name": REGISTERED_MODEL, "version": version, "champion": False, "aliases": []}
    if not (uri and version and run_id):
        return out
    model_scores = scores.get("model", {})
    tags = {f"eval.{k}": v for k, v in model_scores.items()}
    tags.update({f"eval.bicubic_{k}": v for k, v in scores.get("bicubic", {}).items()})
    if tags:
        tracking.set_model_version_tags(REGISTERED_MODEL, version, tags, uri)
    new = float(model_scores.get(metric, math.nan))
    try:
        current = tracking.get_model_version(REGISTERED_MODEL, alias=CHAMPION, tracking_uri=uri)
    except Exception:  # no champion yet (MLflow raises RESOURCE_DOES_NOT_EXIST)
        current = None
    old = _score(current["tags"], metric) if current else math.nan
    if current is None or (math.isfinite(new) and not new <= old):  # NaN old (never scored) loses to a score
        tracking.set_model_alias(REGISTERED_MODEL, CHAMPION, version, uri)
        out["champion"] = True
    out["previous_champion"] = current["version"] if current else None
    out["aliases"] = tracking.get_model_version(REGISTERED_MODEL, version=version, tracking_uri=uri)["aliases"]
    base = uri.rstrip("/")
    out["model_url"] = f"{base}/#/models/{REGISTERED_MODEL}/versions/{version}"
    exp = tracking.get_run_data(run_id, uri)["experiment_id"]
    out["run_urls"] = {"2": f"{base}/#/experiments/{exp}/runs/{run_id}"}
    return out


def resolve_checkpoint(alias: str = CHAMPION, tracking_uri: str | None = None, verify: bool = True) -> str:
    """The checkpoint directory (our format, what `nsarm upscale` loads) of `nsarm@alias`; with `verify`, its
    weights are re-hashed against the version's sha256 tag first (ValueError when they differ)."""
    from nsarm.train.export import sha256_file

    mv = tracking.get_model_version(REGISTERED_MODEL, alias=alias, tracking_uri=tracking_uri)
    uri = mv["tags"]["checkpoint_uri"]
    if verify:
        actual = sha256_file(f"{uri.rstrip('/')}/model.safetensors")
        if actual != mv["tags"]["sha256"]:
            raise ValueError(f"{REGISTERED_MODEL}@{alias} (v{mv['version']}): {uri}/model.safetensors has sha256 "
                             f"{actual}, the registry recorded {mv['tags']['sha256']}")
    return uri
