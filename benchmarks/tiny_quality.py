"""Tiny-model quality against bicubic ×4 on the held-out photos, over variants of the tiny presets.

    .venv/bin/python benchmarks/tiny_quality.py --out /tmp/tq                           # the quality test's setting
    python3 benchmarks/tiny_quality.py --out /tmp/tq --device cuda --parallel 6 --variants base d16c128 d16c128tau
    python3 benchmarks/tiny_quality.py --out /tmp/tq --data tiles --device cuda          # 6× the training data

Pipeline per variant (tests/integration/train/test_quality.py's, one process each): tokenizer warm-up
(WARM_UP_RECIPE) → its ceiling (PSNR-Y of every HR image decoded from its own bits) → stage 1 → stage 2 → upscale the
held-out LR (camera, moon; Real-ESRGAN degradation, dataset seed 0) → PSNR-Y of the model and of bicubic ×4 of the
same LR, measured in the same run. PSNR-Y is BasicSR's (BT.601 Y, 16-235) computed here without BasicSR, so the script
also runs where BasicSR is not installed (a GPU box); its bicubic number equals the test's (24.21 dB).

Variants change the tiny presets in their own process (`--variants`, names in VARIANTS): codebook_dim `d` (bits per
latent pixel; the transformer's d_vae and the map net follow), tokenizer `base_ch`, tokenizer training `crop`,
transformer `embed`/`depth`, sampling `tau`, `tok_steps` and `stage_steps`. --data tiles adds grass, gravel, brick,
coins and up to 4 native-resolution 256² tiles of each training photo (62 samples instead of 10; the held-out pair is
the same). Results and numbers of the 22 runs on an H100: benchmarks/RESULTS.md "Tokenizer".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "base": {},
    "crop128": {"crop": 128},
    "d16": {"d": 16},
    "d16c128": {"d": 16, "crop": 128},
    "d16c128w": {"d": 16, "crop": 128, "embed": 128, "depth": 4},
    "d16c128t1000": {"d": 16, "crop": 128, "tok_steps": 1000},
    "d16c128s150": {"d": 16, "crop": 128, "stage_steps": 150},
    "d16c128s300": {"d": 16, "crop": 128, "stage_steps": 300},
    "ch64d16c128": {"d": 16, "crop": 128, "base_ch": 64},
    "d12c128": {"d": 12, "crop": 128},
    "base_s150": {"stage_steps": 150},
    "base_s300": {"stage_steps": 300},
    "base_tau": {"tau": 0.1},
    "d16c128tau": {"d": 16, "crop": 128, "tau": 0.1},
    "smoke": {"tok_steps": 3, "stage_steps": 2},  # checks that the script runs (seconds), measures nothing
}
EXTRA_TRAIN = ("grass.png", "gravel.png", "brick.png", "coins.png")


def psnr_y(a, b) -> float:
    """BasicSR's calculate_psnr(test_y_channel=True, crop_border=0) of two (H, W, 3) uint8 RGB arrays."""
    import numpy as np

    def y(x):
        x = x.astype(np.float64) / 255.0
        return 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2] + 16.0

    return float(10 * np.log10(255.0**2 / ((y(a) - y(b)) ** 2).mean()))


def build_data(out: Path, kind: str) -> str:
    """The dataset root: 'photos' = the quality test's (first 10 bundled photos, camera + moon held out), 'tiles' =
    12 training photos plus native-resolution 256² tiles of each, the same held-out pair last."""
    from PIL import Image

    from dataset.samples import SAMPLE_PHOTOS, skimage_data_dir
    from nsarm.train.photo_dataset import build_photo_dataset

    root = out / f"data-{kind}"
    if (root / "hr").is_dir():
        return str(root)
    src = skimage_data_dir()
    held = ["camera.png", "moon.png"]
    train = [p for p in SAMPLE_PHOTOS[:10] if p not in held]
    paths = []
    if kind == "photos":
        paths = [src / p for p in train]
    else:
        tiles = out / "tiles"
        tiles.mkdir(parents=True, exist_ok=True)
        for name in [*train, *EXTRA_TRAIN]:
            im = Image.open(src / name).convert("RGB")
            stem, (w, h) = Path(name).stem, im.size
            paths.append(src / name)
            xs, ys = ([0, w - 256] if w >= 256 else []), ([0, h - 256] if h >= 256 else [])
            for k, (x, y) in enumerate((x, y) for y in ys for x in xs):
                p = tiles / f"{stem}_t{k}.png"
                im.crop((x, y, x + 256, y + 256)).save(p)
                paths.append(p)
    paths += [src / p for p in held]
    build_photo_dataset([str(p) for p in paths], str(root), hr_size=256, shard_size=16 if kind == "tiles" else 6,
                        degradation="realesrgan", deg_seed=0)
    return str(root)


def override_tiny(spec: dict) -> None:
    """Replace the tiny tokenizer/transformer/map-net/model presets in this process."""
    from nsarm import config, model, transform_net, transformer

    d = spec.get("d", 8)
    tok = replace(config.TOKENIZER_PRESETS["tiny"], codebook_dim=d, base_ch=spec.get("base_ch", 32))
    config.TOKENIZER_PRESETS["tiny"] = tok
    depth = spec.get("depth", 2)
    tr = replace(transformer.TRANSFORMER_PRESETS["tiny"], d_vae=tok.token_bits, embed_dim=spec.get("embed", 64),
                 depth=depth, block_chunks=depth)
    tn = replace(transform_net.TRANSFORM_NET_PRESETS["tiny"], latent_channels=d)
    extra = {"tau": spec["tau"]} if "tau" in spec else {}
    model.MODEL_PRESETS["tiny"] = replace(model.MODEL_PRESETS["tiny"], tokenizer=tok, transformer=tr, transform_net=tn,
                                          **extra)


def run_variant(spec: dict, root: str, out: Path, device: str) -> dict:
    from nsarm.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # a subprocess entry point
    override_tiny(spec)
    from nsarm.eval import holdout as held_out
    from nsarm.inference import make_upscale_fn
    from nsarm.train import holdout
    from nsarm.train.config import train_config
    from nsarm.train.loop import LocalContext, LoopOptions, train_stage

    holdout.WARM_UP_RECIPE["crop"] = spec.get("crop", 64)
    t0 = time.time()
    tok_path = holdout.warm_up_tokenizer(root, str(out / "tok" / "tiny.safetensors"), steps=spec.get("tok_steps", 400),
                                         holdout=2)
    res: dict = {"spec": spec, "t_tokenizer": time.time() - t0}
    c = held_out.tokenizer_ceiling(tok_path, root, 2, device=device, psnr=psnr_y)
    res["ceiling"] = {"held_out": c["held_out_mean"], "train": c["train_mean"], **c["held_out"], **c["train"]}
    common = {"batch_size": 4, "holdout": 2, "image_every": 0, "checkpoint_every": 10**6}
    steps, t1 = spec.get("stage_steps", 60), time.time()
    for stage, init in ((1, {"tokenizer_path": tok_path}), (2, {"init_from": str(out / "e1")})):
        train_stage(train_config("tiny", stage, steps=steps, **init, **common), root, LocalContext(out / f"s{stage}"),
                    options=LoopOptions(latent_cache=str(out / "lat"), export_dir=str(out / f"e{stage}"), device=device))
    res["t_stages"] = time.time() - t1
    model, enc = held_out.load_export(str(out / "e2"), device=device)
    samples = held_out.holdout_samples(root, 2)
    lrs = [s["lr"] for s in samples]
    srs = make_upscale_fn(model, enc, seed=1)(lrs, [s["caption"] for s in samples])
    res["model"] = {s["key"]: psnr_y(sr, s["hr"]) for s, sr in zip(samples, srs, strict=True)}
    res["bicubic"] = {s["key"]: psnr_y(b, s["hr"]) for s, b in zip(samples, held_out.bicubic_arrays(lrs), strict=True)}
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work folder (datasets, runs, one JSON per variant)")
    p.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    p.add_argument("--data", choices=("photos", "tiles"), default="photos")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1, help="variants run at once (one process each)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per variant process")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant in this process
    a = p.parse_args(argv)
    out = Path(a.out) / a.data
    out.mkdir(parents=True, exist_ok=True)
    root = build_data(Path(a.out), a.data)
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        try:
            res = {"name": a.one, **run_variant(VARIANTS[a.one], root, out / a.one, a.device)}
        except Exception:  # one failed variant must not hide the others' numbers
            res = {"name": a.one, "error": traceback.format_exc()[-3000:]}
        (out / f"{a.one}.json").write_text(json.dumps(res, indent=1))
        return
    procs: list[subprocess.Popen] = []
    for name in a.variants:
        while sum(q.poll() is None for q in procs) >= a.parallel:
            time.sleep(1)
        cmd = [sys.executable, __file__, "--out", a.out, "--data", a.data, "--device", a.device,
               "--threads", str(a.threads), "--one", name]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    for q in procs:
        q.wait()
    print(f"data {a.data}, device {a.device}; PSNR-Y dB on the held-out camera / moon")
    print(f"{'variant':14s} {'ceiling held/train':>18s} {'model':>22s} {'bicubic':>22s} {'model-bicubic':>13s}")
    for name in a.variants:
        r = json.loads((out / f"{name}.json").read_text())
        if "error" in r:
            print(f"{name:14s} ERROR {r['error'].splitlines()[-1]}")
            continue
        m, b = r["model"], r["bicubic"]
        mean_m, mean_b = sum(m.values()) / len(m), sum(b.values()) / len(b)
        print(f"{name:14s} {r['ceiling']['held_out']:8.2f} / {r['ceiling']['train']:6.2f} "
              f"{' / '.join(f'{v:.2f}' for v in m.values()):>14s} ({mean_m:5.2f}) "
              f"{' / '.join(f'{v:.2f}' for v in b.values()):>14s} ({mean_b:5.2f}) {mean_m - mean_b:+13.2f}")


if __name__ == "__main__":
    main()
