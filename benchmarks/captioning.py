"""Captions/s: our batched LLaVA generation vs the NSARM release's one-image-per-call loop, same model and images.

    .venv/bin/python benchmarks/captioning.py                      # tiny random LLaVA on CPU (built on the fly)
    .venv/bin/python benchmarks/captioning.py --model-path /models/llava-1.5-13b-hf --images 64 --batch-size 16

The reference is how Xiangtaokong/NSARM tools/annotate.py captions: one `generate` per image, then
`torch.cuda.empty_cache()` (on CUDA). Ours is `LlavaCaptioner` with left-padded batches. Both decode greedily with
the same `max_new_tokens`, so both do the same work, and the script checks they return the same captions.
One timed run each, after one untimed warm-up call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsarm.compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", help="llava-hf checkpoint dir (default: build the tiny random LLaVA)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    # One intra-op thread by default: on a shared 2-core CPU box, two spinning OpenMP threads per matmul made both
    # ways 10-20x slower and the timings noise. Same setting for both sides, so the ratio stays fair.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (ignored on CUDA)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from captioning.captioner import LlavaCaptioner
    from captioning.config import CaptionConfig
    from captioning.tiny import build_tiny_llava, photo_jpeg
    from dataset.samples import export_sample_photos

    tmp = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    model_path = args.model_path or str(build_tiny_llava(tmp / "tiny-llava"))
    photos = export_sample_photos(tmp / "photos")
    from io import BytesIO

    from PIL import Image

    pool = [Image.open(BytesIO(photo_jpeg(p.path, 256))).convert("RGB") for p in photos]
    images = [pool[i % len(pool)].rotate(90 * (i // len(pool))) for i in range(args.images)]  # distinct inputs

    cfg = CaptionConfig(model_path=model_path, greedy=True, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)
    ours = LlavaCaptioner(cfg)
    ours.caption(images[:2])  # warm-up (lazy inits, allocator)

    def reference_loop():
        out = []
        for im in images:  # NSARM annotate.py: one image per call, cache emptied after each
            out.append(ours.generate([im], [cfg.prompt()])[0])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return out

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    ref = reference_loop()
    sync()
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = ours.caption(images)
    sync()
    t_ours = time.perf_counter() - t0
    ours_cfg = replace(cfg, model_path=Path(model_path).name)
    print(f"model={ours_cfg.model_path} device={ours.device} dtype={ours.dtype} images={len(images)} "
          f"batch={cfg.batch_size} max_new_tokens={cfg.max_new_tokens} torch_threads={torch.get_num_threads()}")
    print(f"reference one-per-call: {len(images) / t_ref:8.2f} captions/s ({t_ref:.2f} s)")
    print(f"ours batched          : {len(images) / t_ours:8.2f} captions/s ({t_ours:.2f} s)")
    print(f"speed-up: {t_ref / t_ours:.2f}x   identical captions: {sum(a == b for a, b in zip(got, ref, strict=True))}"
          f"/{len(images)}")


if __name__ == "__main__":
    main()
