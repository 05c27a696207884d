"""Inference throughput: scale loop with our KV cache vs the no-cache reference (recompute the whole prefix per scale).

    .venv/bin/python benchmarks/inference.py                      # tiny + reduced-depth 2B-shaped, CPU
    .venv/bin/python benchmarks/inference.py --device cuda --shapes infinity-2b nsarm-8b --pn 1M   # on a GPU

Both ways produce the same logits (tests/unit/model/test_transformer.py); the reference is what a model without a
cache must do: at scale k run the teacher-forced forward over all tokens of scales 0..k. Random weights, fp32 on CPU
(bf16 autocast on CUDA). Prints tokens/s (tokens of the schedule / transformer time) and s/image; for the tiny
preset also the whole NSARM upscale of one 64² tile (tokenizer + map net + transformer + decode + colour fix).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from nsarm.compat import ensure_torchvision_importable
from nsarm.inference import SamplingConfig, UpscaleOptions, sample_latent, upscale_images
from nsarm.model import MODEL_PRESETS, build_model
from nsarm.scales import get_schedule
from nsarm.transformer import TRANSFORMER_PRESETS, InfinityTransformer, PackedText

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def shape(name: str):
    """(transformer config, patch, codebook_dim) of a benchmark shape."""
    if name == "tiny":
        return TRANSFORMER_PRESETS["tiny"], 2, 8
    if name == "2b-depth2":  # Infinity-2B width/heads/bits, 2 blocks (CPU-sized)
        return dataclasses.replace(TRANSFORMER_PRESETS["infinity-2b"], depth=2, block_chunks=2), 1, 32
    if name == "infinity-2b":
        return TRANSFORMER_PRESETS["infinity-2b"], 1, 32
    if name == "nsarm-8b":
        return TRANSFORMER_PRESETS["infinity-8b"], 2, 14
    raise ValueError(name)


@torch.no_grad()
def no_cache_loop(tr, text, grids, patch, d, device):
    """Reference: teacher-forced forward over the growing prefix at every scale (inputs: random codes)."""
    g = torch.Generator().manual_seed(0)
    D = d * patch * patch
    L = sum(h * w for h, w in grids)
    x = (torch.randint(0, 2, (1, L - 1, D), generator=g).float() * 2 - 1).div(D**0.5).to(device)
    n = 1
    for k in range(len(grids)):
        tr(text, x[:, : n - 1], grids[: k + 1])
        if k + 1 < len(grids):
            n += grids[k + 1][0] * grids[k + 1][1]


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def bench_shape(name: str, pn: str, repeats: int, device: torch.device) -> str:
    """One table row: KV-cache loop vs the no-cache reference for a shape."""
    cfg, patch, d = shape(name)
    torch.manual_seed(0)
    with torch.device(device):
        tr = InfinityTransformer(cfg).eval()
    grids = get_schedule(pn, 1.0, patch).grids
    L = sum(h * w for h, w in grids)
    text = PackedText(torch.randn(16, cfg.text_channels, device=device), torch.tensor([16]))
    gens = [torch.Generator(device=device).manual_seed(0)]
    t_kv = timed(lambda: sample_latent(tr, text, grids, patch, d, SamplingConfig(), gens), repeats, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        t_ref = timed(lambda: no_cache_loop(tr, text, grids, patch, d, device), repeats, device)
    return f"| {name} | {L} | {t_kv:.3f} | {L / t_kv:,.0f} | {t_ref:.3f} | {L / t_ref:,.0f} | {t_ref / t_kv:.2f}× |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "2b-depth2"])
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, pn {args.pn}")
    print("| shape | tokens | KV cache s/image | tokens/s | no cache (reference) s/image | tokens/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        print(bench_shape(name, args.pn, args.repeats, device))
    if "tiny" in args.shapes:
        torch.manual_seed(0)
        model = build_model(MODEL_PRESETS["tiny"]).to(device).eval()
        text = PackedText(torch.randn(8, 64, device=device), torch.tensor([8]))
        lr = torch.rand(3, 64, 64)
        t_up = timed(lambda: upscale_images(model, [lr], text, UpscaleOptions(seed=1)), args.repeats, device)
        print(f"tiny NSARM upscale of one 64² LR tile -> 256²: {t_up:.3f} s/image (tokenizer + map net + sampling + colour fix)")


if __name__ == "__main__":
    main()
