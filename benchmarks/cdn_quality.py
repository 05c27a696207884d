"""What the imgix output parameters cost in HR quality and bytes: default (q=75 re-encode), fm=jpg&q=100, fm=png.

    .venv/bin/python benchmarks/cdn_quality.py [--sizes 256,512]

Each bundled photo stands in for an Unsplash original (stored as JPEG q95, as camera/Unsplash originals are JPEGs).
For each setting, the imgix stand-in (`dataset.httpserve.imgix_render`) delivers it at the width the shard stage
asks for (`unsplash_request_width`), then the shard stage's own crop/resize + q95 encode makes the HR sample. PSNR
(RGB, dB) of that HR against the same crop/resize of the lossless delivery with no JPEG step at all; bytes = the
CDN's body. Photos whose short side is below the size are skipped, as the shard stage does.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from dataset.config import ShardConfig
from dataset.httpserve import imgix_render
from dataset.images import crop_resize, crop_resize_encode, decode_rgb
from dataset.samples import export_sample_photos
from dataset.sources import unsplash_request_width

SETTINGS = {"default (q=75)": {}, "fm=jpg&q=100": {"fm": "jpg", "q": "100"}, "fm=png": {"fm": "png", "q": "100"}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")


def measure(original: bytes, size: int, width: int) -> dict[str, tuple[float, int]]:
    """{setting: (PSNR of the HR sample vs the no-JPEG reference, delivered bytes)}."""
    lossless, _ = imgix_render(original, {"w": str(width), "fit": "max", "fm": "png"})
    ref = np.asarray(crop_resize(Image.open(io.BytesIO(lossless)).convert("RGB"), size))
    out = {}
    for name, params in SETTINGS.items():
        body, _ = imgix_render(original, {"w": str(width), "fit": "max", **params})
        hr = decode_rgb(crop_resize_encode(Image.open(io.BytesIO(body)).convert("RGB"), size, 95))
        out[name] = (psnr(hr, ref), len(body))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--out", default="/tmp/cdn_quality_photos")
    args = parser.parse_args(argv)
    photos = export_sample_photos(args.out)
    for size in (int(s) for s in args.sizes.split(",")):
        cfg = ShardConfig(image_size=size, min_side=size)
        print(f"\nHR {size}²: PSNR dB of the HR sample vs no-JPEG reference / delivered KiB")
        print("photo".ljust(26) + "".join(name.rjust(22) for name in SETTINGS))
        for p in photos:
            if min(p.width, p.height) < size:
                continue
            buf = io.BytesIO()
            Image.open(p.path).convert("RGB").save(buf, "JPEG", quality=95)
            res = measure(buf.getvalue(), size, unsplash_request_width(cfg, p.width, p.height))
            print(p.photo_id.ljust(26) + "".join(f"{db:8.2f} / {n / 1024:7.0f}".rjust(22) for db, n in res.values()))


if __name__ == "__main__":
    main()
