"""Benchmark: seconds per image of `MetricSuite` (all 8 paper metrics) vs calling each library metric separately.

    .venv/bin/python benchmarks/evaluation.py [--n 4] [--size 512] [--weights-dir DIR] [--device cpu]

The reference is what a user of the libraries writes by hand: BasicSR's calculate_psnr on cv2-read BGR images,
pyiqa's `ssim`/`niqe` (or, with --protocol basicsr, BasicSR's calculate_ssim/niqe), the official `lpips.LPIPS`, and
one `pyiqa.create_metric` per NR metric, each reading the PNG itself.
Both sides score the same real photos (bundled scikit-image samples, centre-cropped to size², with a noisy copy as
the "SR" output) and must give identical numbers. Without --weights-dir, randomly initialised weights are written
to a temp folder (timings are representative of the real networks; the scores are not meaningful).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from nsarm.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def write_random_weights(weights_dir: Path) -> None:
    """Random weights under the exact file names and formats the suite and pyiqa load (seeded)."""
    import torch
    import torchvision

    from nsarm.eval.metrics import SPECS, _ensure_pkg_resources, offline_pyiqa

    _ensure_pkg_resources()
    from pyiqa.archs.clip_model import CLIP
    from pyiqa.archs.maniqa_arch import MANIQA
    from pyiqa.archs.musiq_arch import MUSIQ
    from pyiqa.archs.topiq_arch import CFANet

    torch.manual_seed(0)
    weights_dir.mkdir(parents=True, exist_ok=True)

    def path(m):
        return weights_dir / SPECS[m].weights[0].filename

    torch.save(torchvision.models.alexnet().state_dict(), path("lpips"))
    clip = CLIP(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
    # The real RN50.pt is a TorchScript archive, and pyiqa's CLIP loader only reads that form from a path.
    traced = torch.jit.trace(clip.eval(), (torch.rand(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)))
    traced.save(str(path("clipiqa")))
    torch.save(MUSIQ(pretrained=False).state_dict(), path("musiq"))
    with offline_pyiqa(weights_dir):  # builds the timm backbones without a download
        torch.save(MANIQA(pretrained=False, train_dataset="pipal").state_dict(), path("maniqa"))
        cfanet = CFANet(semantic_model_name="resnet50", model_name="cfanet_nr_koniq_res50", use_ref=False,
                        pretrained=False)
        torch.save({"params": cfanet.state_dict()}, path("topiq"))


def photo_pairs(n: int, size: int) -> list[tuple[Path, Path]]:
    """(sr_png, hr_png) for n real photos: HR = centre crop, SR = HR + seeded noise."""
    from dataset.samples import export_sample_photos
    from nsarm.eval.testsets import read_rgb, write_png

    out = Path(tempfile.mkdtemp(prefix="evalbench-"))
    rng = np.random.default_rng(0)
    pairs = []
    for p in export_sample_photos(out / "photos"):
        img = read_rgb(p.path)
        if min(img.shape[:2]) < size:
            continue
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        hr = img[top:top + size, left:left + size]
        sr = np.clip(hr.astype(int) + rng.integers(-10, 11, hr.shape), 0, 255).astype(np.uint8)
        pairs.append((write_png(sr, out / "sr" / f"{p.photo_id}.png"), write_png(hr, out / "hr" / f"{p.photo_id}.png")))
        if len(pairs) == n:
            break
    return pairs


def reference_scorers(weights_dir: Path, device: str, metrics, protocol: str = "pyiqa") -> dict:
    """Each library metric built and called the way its own README shows (SSIM/NIQE per `protocol`)."""
    import cv2
    import lpips
    import pyiqa
    import torch
    from basicsr.metrics.niqe import calculate_niqe
    from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    from nsarm.eval.metrics import SPECS, offline_pyiqa

    lp = None
    if "lpips" in metrics:
        hub = weights_dir / "hub"  # lpips' torchvision AlexNet looks in the torch hub cache
        (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
        link = hub / "checkpoints" / SPECS["lpips"].weights[0].filename
        if not link.exists():
            link.symlink_to(weights_dir / SPECS["lpips"].weights[0].filename)
        old = torch.hub.get_dir()
        torch.hub.set_dir(str(hub))
        try:
            lp = lpips.LPIPS(net="alex", version="0.1", verbose=False).to(device).eval()
        finally:
            torch.hub.set_dir(old)
    dev = torch.device(device)
    build = {"clipiqa": lambda: pyiqa.create_metric("clipiqa", device=dev, backbone=str(weights_dir / "RN50.pt")),
             "musiq": lambda: pyiqa.create_metric("musiq", device=dev),
             "maniqa": lambda: pyiqa.create_metric("maniqa-pipal", device=dev),
             "topiq": lambda: pyiqa.create_metric("topiq_nr", device=dev)}
    if protocol == "pyiqa":  # pyiqa's NIQE file, placed where its download would put it (from BasicSR's copy)
        import basicsr
        import scipy.io

        npz = np.load(Path(basicsr.__file__).parent / "metrics" / "niqe_pris_params.npz")
        scipy.io.savemat(weights_dir / "niqe_modelparameters.mat",
                         {"mu_prisparam": npz["mu_pris_param"], "cov_prisparam": npz["cov_pris_param"]})
        build |= {"niqe": lambda: pyiqa.create_metric("niqe", device=dev), "ssim": lambda: pyiqa.create_metric(
            "ssim", device=dev)}
    with offline_pyiqa(weights_dir):  # pyiqa's own cache lookup; the guard only forbids downloads
        nr = {m: make() for m, make in build.items() if m in metrics}

    def tensor(path):
        return pyiqa.utils.img_util.imread2tensor(str(path), rgb=True)[None].to(device)

    bgr = {}

    def read(path):  # BasicSR's scripts read with cv2 (BGR, uint8 -> float)
        if path not in bgr:
            bgr[path] = cv2.imread(str(path)).astype(np.float64)
        return bgr[path]

    return {
            "psnr": lambda s, h: calculate_psnr(read(s), read(h), 0, test_y_channel=True),
            "ssim": lambda s, h: calculate_ssim(read(s), read(h), 0, test_y_channel=True),
            "lpips": lambda s, h: lp(tensor(s), tensor(h), normalize=True).item(),
            "niqe": lambda s, h: calculate_niqe(read(s), 0, input_order="HWC", convert_to="y"),
            **{m: (lambda s, h, f=f: f(tensor(s)).item()) for m, f in nr.items() if m != "ssim"},
            **({"ssim": lambda s, h: nr["ssim"](tensor(s), tensor(h)).item()} if "ssim" in nr else {}),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--random-weights-dir", default=None, help="write (once) and reuse random weights here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--metrics", default=None, help="comma list (default: all 8; MANIQA alone is ~80%% of CPU time)")
    ap.add_argument("--protocol", default="pyiqa", choices=("pyiqa", "basicsr"), help="SSIM/NIQE protocol")
    args = ap.parse_args()

    import torch

    from nsarm.eval.metrics import PAPER_METRICS, MetricConfig, MetricSuite
    from nsarm.eval.testsets import read_rgb

    weights_dir = Path(args.weights_dir or args.random_weights_dir or tempfile.mkdtemp(prefix="iqa-random-"))
    metrics = tuple(args.metrics.split(",")) if args.metrics else PAPER_METRICS
    deep = set(metrics) - {"psnr", "ssim", "niqe"}
    if deep and not args.weights_dir and not (weights_dir / "RN50.pt").is_file():
        write_random_weights(weights_dir)
    pairs = photo_pairs(args.n, args.size)

    t0 = time.perf_counter()
    suite = MetricSuite(MetricConfig(metrics=metrics, weights_dir=str(weights_dir), device=args.device,
                                     protocol=args.protocol))
    t_build_suite = time.perf_counter() - t0
    assert not suite.unavailable, {k: v.message() for k, v in suite.unavailable.items()}
    t0 = time.perf_counter()
    ref = {m: f for m, f in reference_scorers(weights_dir, args.device, metrics, args.protocol).items()
           if m in metrics}
    t_build_ref = time.perf_counter() - t0
    print(f"built: suite {t_build_suite:.1f} s, reference {t_build_ref:.1f} s", flush=True)

    per_metric_ref = dict.fromkeys(ref, 0.0)
    ours, theirs, t_suite = [], [], 0.0
    with torch.inference_mode():
        # Warm-up (first forward of each network allocates and picks kernels) on both sides, untimed.
        suite.score(read_rgb(pairs[0][0]), read_rgb(pairs[0][1]))
        for f in ref.values():
            f(*pairs[0])
        # Interleaved per image, so both sides see the same load on this shared machine.
        for sr, hr in pairs:
            t = time.perf_counter()
            ours.append(suite.score(read_rgb(sr), read_rgb(hr)))
            t_suite += (time.perf_counter() - t) / len(pairs)
            row = {}
            for m, f in ref.items():
                t = time.perf_counter()
                row[m] = float(f(sr, hr))
                per_metric_ref[m] += (time.perf_counter() - t) / len(pairs)
            theirs.append(row)
            print(f"scored {sr.name}", flush=True)
    t_ref = sum(per_metric_ref.values())

    diffs = {m: max(abs(o[m] - r[m]) for o, r in zip(ours, theirs, strict=True)) for m in ref}
    print(f"protocol {args.protocol}: {len(pairs)} real photos at {args.size}x{args.size}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, weights {'given' if args.weights_dir else 'random (timing only)'}")
    print("reference per metric (s/image): " + ", ".join(f"{m} {t:.3f}" for m, t in per_metric_ref.items()))
    print(f"suite {t_suite:.3f} s/image | separate library calls {t_ref:.3f} s/image | ratio {t_ref / t_suite:.2f}x")
    print("max |suite - reference| per metric: " + ", ".join(f"{m} {d:.2e}" for m, d in diffs.items()))
    print("identical scores:", all(d <= 1e-6 * max(1.0, abs(theirs[0][m])) for m, d in diffs.items()))


if __name__ == "__main__":
    main()
