"""Evaluation on a dataset's held-out split (what the train-nsarm flow's evaluate step runs) and the tokenizer's ceiling.

    ceil = tokenizer_ceiling(tok, root, holdout=2)   # {"held_out": {key: PSNR-Y}, "train": {...}, *_mean}
    res = evaluate_export(export_uri, root, holdout=2, out_dir="runs/eval/stage2", mlflow_run_id=run_id)
    # res = {"model": {"psnr": …, "ssim": …}, "bicubic": {...}, "report": dir, "testset": dir, "keys": [...]}

`tokenizer_ceiling` measures what any transformer is bounded by: the PSNR-Y of each HR image reconstructed from its
own exact bits (encode → multi-scale BSQ → decode).

The held-out split is `nsarm.train.data.holdout_keys(root, n)`: the last n samples of the last shard, which training
skips. Evaluation writes them as an LR/HR folder test set, upscales with the exported model (loaded by
nsarm/loading.py, as `nsarm upscale` loads it: our-format directory + its text encoder, or the T5 directory the
training used; a model without one is an error, never a stand-in), scores PSNR/SSIM on Y with nsarm.eval, and
scores bicubic ×4 on the same images as the reference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from dataset import contract
from nsarm.train.data import holdout_keys, hr_images, pick_versions


def holdout_samples(root: str, n: int, deg_hash: str | None = None, cap_hash: str | None = None) -> list[dict]:
    """[{key, hr (H, W, 3) uint8, lr (h, w, 3) uint8, caption}] of the held-out keys, in tar order."""
    from PIL import Image

    from dataset.reader import load_index

    keys = holdout_keys(root, n)
    versions = pick_versions(root, deg_hash, cap_hash)
    shard = load_index(root.rstrip("/"))[-1].shard
    captions = {}
    if versions.cap_hash:
        t = contract.read_parquet(contract.caption_parquet(root, versions.cap_hash, shard),
                                  columns=["key", "caption"]).to_pydict()
        captions = dict(zip(t["key"], t["caption"], strict=True))
    lrs = {k: files["png"] for k, files, err in contract.iter_tar_samples(contract.lr_tar(root, versions.deg_hash,
                                                                                          shard)) if not err}
    out = []
    for key, files, err in contract.iter_tar_samples(contract.hr_tar(root, shard)):
        if err or key not in keys:
            continue
        hr = np.asarray(Image.open(io.BytesIO(files["jpg"])).convert("RGB"))
        lr = np.asarray(Image.open(io.BytesIO(lrs[key])).convert("RGB"))
        out.append({"key": key, "hr": hr, "lr": lr, "caption": captions.get(key) or ""})
    return out


def load_export(export_uri: str, text_encoder_path: str | None = None, device: str = "cpu"):
    """(model, text encoder) of an export directory, by nsarm/loading.py's rules. The text encoder: the given
    directory, else the one the training used (export.json's train config), else the one saved with the export (tiny
    models), else the seeded tiny T5 only for a model whose config names it; otherwise a LoadError."""
    from nsarm.loading import load_for_upscaling
    from nsarm.train.export import INFO_FILE

    info = Path(export_uri) / INFO_FILE
    if text_encoder_path is None and info.is_file():
        text_encoder_path = json.loads(info.read_text()).get("train_config", {}).get("text_encoder_path")
    return load_for_upscaling(init_from=export_uri, text_encoder_path=text_encoder_path, device=device)


def tokenizer_ceiling(tokenizer_path: str, root: str, holdout: int, include_train: bool = True, *,
                      device: str = "cpu", psnr=None) -> dict:
    """PSNR-Y (the evaluation's metric) of every HR image reconstructed from its own bits over the full tiny scale
    schedule: the best any transformer predicting those bits can do. Returns {"held_out": {key: dB}, "train":
    {key: dB} (if include_train), "held_out_mean", "train_mean"}. `psnr(sr_u8, hr_u8)` defaults to the evaluation's
    (BasicSR, via nsarm.eval); pass another where BasicSR is not installed."""
    import torch

    from nsarm.tokenizer import load_tokenizer
    from nsarm.tokenizer_train import training_grids

    if psnr is None:
        from nsarm.eval.metrics import MetricConfig, MetricSuite

        suite = MetricSuite(MetricConfig(metrics=("psnr",)))

        def psnr(a, b):
            return suite.score(a, b)["psnr"]

    tok = load_tokenizer(tokenizer_path).eval().to(device)
    f = tok.cfg.downsample
    held = holdout_keys(root, holdout)
    images = hr_images(root, None if include_train else held, frozenset(), 0)
    groups = {"held_out": {k: v for k, v in images.items() if k in held}}
    if include_train:
        groups["train"] = {k: v for k, v in images.items() if k not in held}
    out: dict = {}

    def u8(x_3HW):
        return ((x_3HW.permute(1, 2, 0).cpu() + 1) * 127.5).round().clamp(0, 255).byte().numpy()

    for name, group in groups.items():
        scores = {}
        for key, x in sorted(group.items()):
            grids = training_grids((x.shape[-2] // f, x.shape[-1] // f), tok.cfg.name)
            with torch.no_grad():
                recon = tok.decode(tok.encode_bits(x[None].to(device), grids).f_hat)[0]
            scores[key] = psnr(u8(recon), u8(x))
        out[name] = scores
        out[f"{name}_mean"] = sum(scores.values()) / len(scores) if scores else float("nan")
    return out


def bicubic_arrays(lrs: list) -> list:
    """The reference: bicubic ×4 of (h, w, 3) uint8 LR arrays → (4h, 4w, 3) uint8 arrays."""
    import torch

    from nsarm.inference import bicubic_upscale

    return [(bicubic_upscale(torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255,
                             (x.shape[0] * 4, x.shape[1] * 4)).permute(1, 2, 0).numpy() * 255).round()
            .astype(np.uint8) for x in lrs]


def evaluate_export(export_uri: str, root: str, holdout: int, out_dir: str, *, mlflow_run_id: str | None = None,
                    tracking_uri: str | None = None, name: str = "nsarm", seed: int = 1,
                    text_encoder_path: str | None = None) -> dict:
    """Upscale the held-out LR images with the export (loaded by `load_export`) and score them (PSNR/SSIM on Y)
    against bicubic."""
    from PIL import Image

    from nsarm.eval.evaluate import score_testset, summarize
    from nsarm.eval.metrics import MetricConfig, MetricSuite
    from nsarm.eval.run import MlflowTarget, evaluate_upscaler
    from nsarm.eval.testsets import folder_testset, write_png
    from nsarm.inference import make_upscale_fn

    samples = holdout_samples(root, holdout)
    if not samples:
        raise ValueError(f"no held-out samples in {root} (holdout={holdout})")
    model, enc = load_export(export_uri, text_encoder_path)
    out = Path(out_dir)
    for s in samples:
        size = s["lr"].shape[0] * 4  # the model upscales any LR size ×4 (tiled); the reference must match
        hr = s["hr"] if s["hr"].shape[0] == size else np.asarray(Image.fromarray(s["hr"]).resize((size, size),
                                                                                                 Image.BICUBIC))
        write_png(hr, out / "testset" / "HR" / f"{s['key']}.png")
        write_png(s["lr"], out / "testset" / "LR" / f"{s['key']}.png")
    jsonl = out / "testset" / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image_path": f"{s['key']}.png", "h_div_w": 1.0, "long_caption": s["caption"]})
                             + "\n" for s in samples))
    testset = folder_testset("holdout", out / "testset" / "LR", out / "testset" / "HR", jsonl)
    by_key = {s["key"]: s["caption"] for s in samples}

    upscale = make_upscale_fn(model, enc, seed)
    # BasicSR's SSIM (no Y rounding, no cs clipping): ~10x cheaper on CPU than the paper-comparable pyiqa protocol of
    # `nsarm eval`, and the training-time check compares model vs bicubic under one protocol, which is what it needs.
    cfg = MetricConfig(metrics=("psnr", "ssim"), protocol="basicsr")
    suite = MetricSuite(cfg)
    base = score_testset(suite, testset, bicubic_arrays)
    target = MlflowTarget(experiment="nsarm-train", run_id=mlflow_run_id, tracking_uri=tracking_uri) \
        if mlflow_run_id else None
    report = evaluate_upscaler(cfg, testset, upscale, name=name, out_dir=out / "report", baselines={"bicubic": base},
                               mlflow=target, suite=suite)
    ours = report.summary[report.summary["method"] == name] if "method" in report.summary else report.summary
    model_scores = {k: float(ours.iloc[0][k]) for k in ("psnr", "ssim") if k in ours.columns}
    return {"model": model_scores, "bicubic": summarize(base, ("psnr", "ssim")), "report": str(out / "report"),
            "testset": str(out / "testset"), "keys": sorted(by_key)}
