"""Degradation throughput: our batched pipeline vs a per-image loop over BasicSR's functions, in one run.

    .venv/bin/python benchmarks/degradation.py                      # 8 photos at 1024² → 256², realesrgan, CPU
    .venv/bin/python benchmarks/degradation.py --n 16 --batch 8 --size 1024 --device cuda

Both sides get the same HR images (the bundled real photos, centre-cropped/resized) and the same parameter sets
(drawn once by `sample_params`, so the work is identical; the reference is Real-ESRGAN's `feed_data` chain in
degradation/reference.py). Prints images/s for each, the ratio, and how many LRs are byte-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `degradation` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from dataset.samples import SAMPLE_PHOTOS, export_sample_photos  # noqa: E402
from degradation.config import PRESETS  # noqa: E402
from degradation.pipeline import degrade_batch, sample_params, sample_seed  # noqa: E402
from degradation.reference import BasicSRChain  # noqa: E402


def load_images(n: int, size: int, tmp: str) -> torch.Tensor:
    photos = export_sample_photos(tmp, SAMPLE_PHOTOS)
    imgs = []
    for i in range(n):
        with Image.open(photos[i % len(photos)].path) as im:
            im = ImageOps.fit(im.convert("RGB"), (size, size), Image.LANCZOS)
            if i >= len(photos):  # more images than photos: flip so the content differs
                im = ImageOps.mirror(im)
            imgs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(imgs)  # (N, 3, size, size) uint8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="realesrgan")
    ap.add_argument("--no-usm", action="store_true", help="disable GT USM sharpening on both sides")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmp", default="/tmp/nsarm-bench-photos")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cfg = PRESETS[args.preset]
    if args.no_usm:
        cfg = dataclasses.replace(cfg, gt_usm=False)
    hr = load_images(args.n, args.size, args.tmp)
    params = [sample_params(cfg, sample_seed(0, f"img{i}"), (args.size, args.size)) for i in range(args.n)]
    print(f"{args.n} images {args.size}² → {args.size // 4}², preset {args.preset}{' (no USM)' if args.no_usm else ''}, "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")

    # warm-up both (first calls allocate / initialise kernels)
    degrade_batch(hr[:1].to(device), params[:1])
    chain = BasicSRChain().to(device) if device.type == "cuda" else BasicSRChain()

    sync(device)
    t0 = time.perf_counter()
    ours = torch.cat([degrade_batch(hr[i:i + args.batch].to(device), params[i:i + args.batch]).cpu()
                      for i in range(0, args.n, args.batch)])
    sync(device)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = torch.cat([chain(hr[i:i + 1].to(device).float() / 255, params[i]).cpu() for i in range(args.n)])
    sync(device)
    t_ref = time.perf_counter() - t0

    same = sum(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    mad = (ours.float() - ref.float()).abs().mean().item()
    print(f"ours (batched, batch {args.batch}):        {args.n / t_ours:7.3f} images/s  ({t_ours / args.n:.3f} s/image)")
    print(f"BasicSR functions, per-image loop: {args.n / t_ref:7.3f} images/s  ({t_ref / args.n:.3f} s/image)")
    print(f"speed-up: {t_ref / t_ours:.2f}x   byte-identical LRs: {same}/{args.n}   mean |Δ| {mad:.3f} levels")


if __name__ == "__main__":
    main()
