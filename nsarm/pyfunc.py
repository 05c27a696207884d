"""NSARM as an MLflow model (pyfunc flavor): what a registered version of `nsarm` is, and how it loads.

    info = log_export(export, "nsarm-stage2", run_id)       # info.model_uri (models:/<id>), info.model_id
    model = mlflow.pyfunc.load_model("models:/nsarm@champion")
    sr_NHW3 = model.predict(lr_NhW3, params={"seed": 1})   # uint8 (N, h, w, 3) -> uint8 (N, 4h, 4w, 3)
    ckpt_dir = checkpoint_dir("models:/nsarm@champion")     # what `nsarm upscale --model` loads

The logged model holds small files only: `config.json` (the model config), `reference.json` (the export's URI, the
sha256 of every file a load reads, and where the tokenizer and text encoder come from) and `export.json`. The
weights stay where training exported them (a local path or s3://) and are fetched and re-hashed at load
(`export.fetch_export`): a missing or changed file fails the load naming the file. Why not MLflow's other ways:
pyfunc `artifacts` copy the bytes into the artifact store (16 GB twice for nsarm-8b), and MLflow 3's external models
(`mlflow.create_external_model`) keep bytes outside but cannot be loaded or served. `copy_weights=True` does copy
them (a self-contained model, e.g. for a registry without access to the training storage).

Signature: input a uint8 tensor (N, h, w, 3) (N RGB images of one size, any size: tiled), output uint8 (N, 4h, 4w, 3);
params `seed`, `cfg`, `tau`, `tiles` (tiles per forward pass) and `caption`, with `nsarm upscale`'s defaults, so
the same seed gives the same pixels as the CLI.

This module and nsarm/tracking.py are the only ones that import MLflow (docs/DESIGN.md §2): a pyfunc model must subclass
`mlflow.pyfunc.PythonModel`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from nsarm import tracking

REFERENCE = "reference.json"
CONFIG = "config.json"
EXPORT_INFO = "export.json"
WEIGHTS_DIR = "weights"  # artifact key of the copied export (copy_weights=True)
CACHE_ENV = "NSARM_MODEL_CACHE"  # where s3:// weights are copied at load (default: ~/.cache/nsarm/models)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nsarm" / "models")


def reference(export: dict, cfg) -> dict:
    """The reference.json of an export (model config `cfg`): where its files are, their sha256, and the tokenizer /
    text encoder."""
    from nsarm.checkpoints import TEXT_DIR
    from nsarm.train.export import loadable_files

    files = loadable_files(export["uri"])
    text = (f"{export['uri']}/{TEXT_DIR} (saved with the export)" if any(f.startswith(TEXT_DIR) for f in files)
            else f"{cfg.text_encoder} (a local directory, given at load: NSARM_TEXT_ENCODER)")
    return {"uri": export["uri"], "files": files, "model": cfg.name,
            "tokenizer": f"inside {export['uri']}/model.safetensors (tokenizer.* tensors)", "text_encoder": text}


def _config_copy(uri: str, into: Path) -> Path:
    import fsspec

    from nsarm.checkpoints import CONFIG as CKPT_CONFIG

    target = into / CONFIG
    with fsspec.open(f"{uri.rstrip('/')}/{CKPT_CONFIG}", "rb") as f:
        target.write_bytes(f.read())
    return target


def signature(cfg_scale: float, tau: float):
    """Input/output uint8 image batches and the sampling params, defaults as in `nsarm upscale`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from nsarm.inference import DEFAULT_CAPTION

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        params=ParamSchema([ParamSpec("seed", "long", 1), ParamSpec("cfg", "double", float(cfg_scale)),
                            ParamSpec("tau", "double", float(tau)), ParamSpec("tiles", "long", 4),
                            ParamSpec("caption", "string", DEFAULT_CAPTION)]))


def input_example(size: int = 16):
    """One small RGB gradient image, (1, size, size, 3) uint8."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), 255 - ramp[None, :].repeat(size, 0)],
                   axis=-1)
    return img.round().astype(np.uint8)[None]


class NSARMPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the referenced (or copied) export with `nsarm upscale`'s loader (nsarm/loading.py) and upscales uint8
    image batches."""

    def load_context(self, context):
        from nsarm.loading import ARG_NAMES, load_for_upscaling
        from nsarm.train.export import fetch_export

        ref = json.loads(Path(context.artifacts[REFERENCE]).read_text())
        copied = context.artifacts.get(WEIGHTS_DIR)
        uri = copied or ref["uri"]
        local = fetch_export(uri, ref["files"], cache_dir())
        self._model, self._encoder = load_for_upscaling(
            init_from=local, text_encoder_path=os.environ.get("NSARM_TEXT_ENCODER"),
            device=os.environ.get("NSARM_DEVICE"), names={**ARG_NAMES, "text_encoder_path": "$NSARM_TEXT_ENCODER"})

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        # the np.ndarray hint: MLflow takes the schema from the logged signature, not from type hints
        from nsarm.inference import upscale_arrays

        batch = np.asarray(next(iter(model_input.values())) if isinstance(model_input, dict) else model_input)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"input must be uint8 RGB images (N, h, w, 3), got {batch.dtype} {batch.shape}")
        p = params or {}
        srs = upscale_arrays(self._model, self._encoder, list(batch), seed=int(p.get("seed", 1)),
                             cfg_scale=p.get("cfg"), tau=p.get("tau"), batch_size=int(p.get("tiles", 4)),
                             caption=p.get("caption"))
        return np.stack(srs)


def log_export(export: dict, name: str, run_id: str, *, copy_weights: bool = False, tags: dict | None = None):
    """Log `export` (ray_trainer's export info) as an MLflow model (a logged model of run `run_id`); returns the
    LoggedModel (`.model_uri` = models:/<model id>, `.model_id`).

    Saved with `mlflow.pyfunc.save_model` and uploaded as the logged model's artifacts, rather than through
    `pyfunc.log_model`: that one also runs the input example through the model, i.e. loads the weights in the
    registering driver (16 GB for nsarm-8b), and cannot be told not to."""
    import mlflow
    import torch

    from nsarm.checkpoints import read_model_config

    model = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type="nsarm-x4-sr",
                                           tags={k: str(v) for k, v in (tags or {}).items()})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cfg = read_model_config(_config_copy(export["uri"], tmp).parent)
            ref = reference(export, cfg)
            (tmp / REFERENCE).write_text(json.dumps(ref, indent=2))
            (tmp / EXPORT_INFO).write_text(json.dumps(export, indent=2, default=str))
            artifacts = {REFERENCE: str(tmp / REFERENCE), CONFIG: str(tmp / CONFIG),
                         EXPORT_INFO: str(tmp / EXPORT_INFO)}
            if copy_weights:
                artifacts[WEIGHTS_DIR] = str(_copy_loadable(export["uri"], ref["files"], tmp / WEIGHTS_DIR))
            mlflow.pyfunc.save_model(
                tmp / "model", python_model=NSARMPyfunc(), artifacts=artifacts,
                signature=signature(cfg.cfg_scale, cfg.tau), input_example=input_example(),
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  "safetensors", "fsspec", "s3fs", "numpy", "pillow"])
            tracking.mlflow_client().log_model_artifacts(model.model_id, str(tmp / "model"))
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    return mlflow.finalize_logged_model(model.model_id, "READY")


def _copy_loadable(uri: str, files: dict[str, str], into: Path) -> Path:
    """The export's loadable files (verified) copied into `into` (the self-contained model's weights)."""
    import shutil

    from nsarm.train.export import fetch_export

    src = fetch_export(uri, files, into.parent / "fetched")
    for rel in files:
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, into / rel)
    return into


def checkpoint_dir(model_uri: str, tracking_uri: str | None = None) -> Path:
    """The verified local checkpoint directory (our format) of an MLflow model URI (`models:/nsarm@champion`,
    `models:/nsarm/3`, `runs:/<run id>/nsarm-stage2`, `models:/<model id>`): downloads the model's small files
    through the tracking server (`tracking_uri`, else $MLFLOW_TRACKING_URI), then fetches and re-hashes the weights
    they reference."""
    from mlflow.artifacts import download_artifacts

    from nsarm.train.export import fetch_export

    tracking.init_tracking(tracking_uri)
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # a few small files: no progress bars on stderr
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        local = Path(download_artifacts(artifact_uri=model_uri, dst_path=tempfile.mkdtemp(prefix="nsarm-model-")))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    found = list(local.rglob(REFERENCE))
    if not found:
        raise ValueError(f"{model_uri} is not an NSARM MLflow model (it has no {REFERENCE})")
    ref = json.loads(found[0].read_text())
    copied = found[0].parent / WEIGHTS_DIR
    return fetch_export(str(copied) if copied.is_dir() else ref["uri"], ref["files"], cache_dir())
