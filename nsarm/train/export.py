"""Export a trained model: our consolidated format (what `nsarm upscale` loads) + the official key layout + sha256.

    info = export_model(model, "s3://bucket/runs/tiny/export/stage2", text_encoder=enc)
    info = export_training_checkpoint("runs/tiny-s2/checkpoint_000003", "out/stage2")    # offline, from Ray's dir
    # info = {"uri": ".../stage2", "sha256": <model.safetensors>, "official": ".../nsarm_official.pth", ...}

Layout of an export directory (local path or s3:// prefix):
    model.safetensors, config.json, [text_encoder/]     nsarm.checkpoints.save_checkpoint (our format)
    nsarm_official.pth                                  transformer keys at top level + map_transformer.* (NSARM.pth)
    export.json                                         uri, sha256 of both weight files, step, train config
The registry stores the URI and the sha256, never the bytes (peers-and-anchors §E.4).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import fsspec
import torch

OFFICIAL_FILE = "nsarm_official.pth"
INFO_FILE = "export.json"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fsspec.open(str(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def export_model(model, uri: str, text_encoder=None, extra: dict | None = None) -> dict:
    """Write `model` (NSARMModel with tokenizer) to `uri`; returns the info dict also written as export.json."""
    from nsarm.checkpoints import WEIGHTS, save_checkpoint

    if model.tokenizer is None:
        raise ValueError("export_model: the model has no tokenizer; `nsarm upscale` needs one")
    uri = uri.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="nsarm-export-") as tmp:
        local = Path(uri.removeprefix("file://")) if not _is_remote(uri) else Path(tmp) / "export"
        save_checkpoint(model, local, text_encoder=text_encoder if _saves_text(model) else None, extra=extra)
        official = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()}
        torch.save(official, local / (OFFICIAL_FILE + ".tmp"))
        (local / (OFFICIAL_FILE + ".tmp")).replace(local / OFFICIAL_FILE)
        info = {"uri": uri, "sha256": sha256_file(local / WEIGHTS), "weights": WEIGHTS,
                "official": f"{uri}/{OFFICIAL_FILE}", "official_sha256": sha256_file(local / OFFICIAL_FILE),
                "model": model.cfg.name, **(extra or {})}
        (local / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        if _is_remote(uri):
            fs, path = fsspec.core.url_to_fs(uri)
            fs.put(str(local) + "/", path, recursive=True)
    return info


def _saves_text(model) -> bool:
    # the tiny T5 is part of a tiny model (seeded, not downloadable); flan-t5-xl is loaded from the user's own copy
    return model.cfg.text_encoder == "tiny-t5"


def read_export_info(uri: str) -> dict:
    """export.json of an export directory (local or s3://)."""
    with fsspec.open(f"{uri.rstrip('/')}/{INFO_FILE}", "r") as f:
        return json.load(f)


def verify_export(uri: str) -> dict:
    """Re-hash the exported weights; raises ValueError when they no longer match export.json."""
    info = read_export_info(uri)
    actual = sha256_file(f"{uri.rstrip('/')}/{info['weights']}")
    if actual != info["sha256"]:
        raise ValueError(f"{uri}: {info['weights']} sha256 {actual} != recorded {info['sha256']} (file changed)")
    return info


def export_training_checkpoint(checkpoint_dir: str | Path, uri: str) -> dict:
    """Consolidate a (DDP) training checkpoint directory written by the loop into an export at `uri`."""
    from nsarm.train import state as st
    from nsarm.train.config import TrainConfig
    from nsarm.train.loop import StageModule, build_models

    state = st.load_state(Path(checkpoint_dir))
    if state["model"] is None:
        raise ValueError(f"{checkpoint_dir} is a sharded (FSDP) checkpoint; export it from the training job")
    cfg = TrainConfig.from_dict(state["train_config"])
    model, text_encoder = build_models(cfg, torch.device("cpu"))
    StageModule(model, cfg.stage).load_state_dict(state["model"])
    return export_model(model, uri, text_encoder=text_encoder, extra={"train_config": cfg.to_dict(),
                                                                      "step": state["step"]})
