"""The train-nsarm flow's library steps around training: tokenizer warm-up (tiny) and evaluation on the held-out split.

    tok = warm_up_tokenizer(root, "runs/tokenizer/tiny.safetensors", steps=400, holdout=2)   # tiny preset only
    ceil = tokenizer_ceiling(tok, root, holdout=2)   # {"held_out": {key: PSNR-Y}, "train": {...}, *_mean}
    res = evaluate_export(export_uri, root, holdout=2, out_dir="runs/eval/stage2", mlflow_run_id=run_id)
    # res = {"model": {"psnr": …, "ssim": …}, "bicubic": {...}, "report": dir, "testset": dir}

The tokenizer warm-up is capped by optimiser steps (`max_seconds` is only a safety net for the demo), so its result
does not depend on how loaded the machine is. `tokenizer_ceiling` measures what any transformer is bounded by: the
PSNR-Y of each HR image reconstructed from its own exact bits (encode → multi-scale BSQ → decode).

The held-out split is `data.holdout_keys(root, n)`: the last n samples of the last shard, which training skips.
Evaluation writes them as an LR/HR folder test set, upscales with the exported model (`nsarm upscale`'s loading
path: our-format directory + its text encoder), scores PSNR/SSIM on Y with nsarm.eval, and scores bicubic ×4 on the
same images as the reference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from dataset import contract
from nsarm.train.data import holdout_keys, pick_versions

# The tiny warm-up recipe (benchmarks/RESULTS.md "Tokenizer" has the before/after ceilings): TokenizerTrainConfig
# fields that differ from its defaults. Crops come from the 256² HR rescaled to a short side of 160-256 (the sizes the
# tokenizer is used at, not 96); some crops are grey because real datasets hold grey photos (the held-out ones here).
WARM_UP_RECIPE = {"short_side": (160, 256), "grey_prob": 0.3, "lr": 3e-3, "warmup_steps": 20}


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


def _hr_images(root: str, keys: frozenset[str] | None, exclude: frozenset[str], seed: int) -> dict:
    """{key: (3, 256, 256) float in [-1, 1]} of the dataset's HR images: `keys` only (None = all), minus `exclude`."""
    from nsarm.train.data import BatchStream

    stream = BatchStream(root, pick_versions(root), 0, 1, 1, 256, 64, seed=seed, exclude=exclude)
    out = {}
    for _ in range(stream.num_samples - len(exclude)):  # one epoch
        batch = next(stream)
        if keys is None or batch.keys[0] in keys:
            out[batch.keys[0]] = batch.hr_B3HW[0] * 2 - 1
    return out


def warm_up_tokenizer(root: str, out_path: str, steps: int = 400, holdout: int = 0, max_seconds: float | None = None,
                      seed: int = 0) -> str:
    """Train the tiny BSQ-VAE on the dataset's HR images (held-out keys excluded) with WARM_UP_RECIPE for `steps`
    optimiser steps (`max_seconds`, if given, stops earlier); reuses an existing file."""
    import torch

    from nsarm.tokenizer import save_tokenizer
    from nsarm.tokenizer_train import TokenizerTrainConfig, train_tokenizer
    out = Path(out_path)
    if out.is_file() and out.with_suffix(".json").is_file():
        return str(out)
    images = list(_hr_images(root, None, holdout_keys(root, holdout), seed).values())
    cfg = TokenizerTrainConfig(steps=steps, seed=seed, max_seconds=max_seconds, **WARM_UP_RECIPE)
    torch.manual_seed(seed)
    tok, _ = train_tokenizer(cfg, images)
    save_tokenizer(tok, out)
    return str(out)


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
    images = _hr_images(root, None if include_train else held, frozenset(), 0)
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


def upscale_arrays(model, text_encoder, lrs: list, captions: list[str] | None = None, seed: int = 1) -> list:
    """NSARM ×4 of (h, w, 3) uint8 LR arrays (one caption each, "" for none) → (4h, 4w, 3) uint8 arrays."""
    import torch

    from nsarm.inference import UpscaleOptions, upscale_images

    caps = [c or "" for c in (captions or [""] * len(lrs))]
    with torch.no_grad():
        srs = upscale_images(model, [torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255 for x in lrs],
                             text_encoder.encode(caps), UpscaleOptions(seed=seed))
    return [(sr.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for sr in srs]


def bicubic_arrays(lrs: list) -> list:
    """The reference: bicubic ×4 of (h, w, 3) uint8 LR arrays → (4h, 4w, 3) uint8 arrays."""
    import torch

    from nsarm.inference import bicubic_upscale

    return [(bicubic_upscale(torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255,
                             (x.shape[0] * 4, x.shape[1] * 4)).permute(1, 2, 0).numpy() * 255).round()
            .astype(np.uint8) for x in lrs]


def evaluate_export(export_uri: str, root: str, holdout: int, out_dir: str, *, mlflow_run_id: str | None = None,
                    tracking_uri: str | None = None, name: str = "nsarm", seed: int = 1) -> dict:
    """Upscale the held-out LR images with the export and score them (PSNR/SSIM on Y) against bicubic."""
    from PIL import Image

    from nsarm.checkpoints import load_checkpoint, text_encoder_dir
    from nsarm.eval.evaluate import score_testset, summarize
    from nsarm.eval.metrics import MetricConfig, MetricSuite
    from nsarm.eval.run import MlflowTarget, evaluate_upscaler
    from nsarm.eval.testsets import folder_testset, write_png
    from nsarm.text import build_tiny_text_encoder, load_text_encoder

    samples = holdout_samples(root, holdout)
    if not samples:
        raise ValueError(f"no held-out samples in {root} (holdout={holdout})")
    model = load_checkpoint(export_uri)
    tdir = text_encoder_dir(export_uri)
    enc = load_text_encoder(tdir) if tdir else build_tiny_text_encoder(d_model=model.cfg.transformer.text_channels)
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

    def upscale(lrs, captions=None):
        return upscale_arrays(model, enc, lrs, captions, seed)

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
