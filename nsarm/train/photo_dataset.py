"""A small training dataset root (docs/DESIGN.md §3 layout) built directly from a list of photos, for tests and benchmarks.

    build_photo_dataset(["a.png", "b.jpg", ...], "/tmp/root", hr_size=256, shard_size=6)
    # → {root}/hr/000000.tar (+ .parquet, _stats.json), {root}/lr/bicubic-x4/…, {root}/captions/fixed-v1/…

    build_photo_dataset(photos, "/tmp/root", degradation="realesrgan", deg_seed=0)
    # → LR by the project's Real-ESRGAN pipeline under {root}/lr/{deg_hash(PRESETS["realesrgan"], 0)}/

The real stages (dataset.shard → degradation → captioning) produce the same files with downloads, Real-ESRGAN
degradations and LLaVA captions; this builder keeps only what training reads: HR centre crops (JPEG q95), an LR
version and a caption per key built from its file name. It writes through `dataset.contract`, so any fsspec root
(local or s3://) works.

LR versions:
- `degradation=None` (default, fast plumbing tests): bicubic ×1/4 plus a little seeded Gaussian noise (σ = 2 of
  255). Barely degraded, so bicubic ×4 of it is a near-unbeatable PSNR reference for any model whose output passes
  through a 0.125-bit-per-pixel tokenizer: not the task NSARM is built for.
- `degradation="realesrgan"` (quality tests): the NSARM paper's setting. The LR comes from the project's real
  degradation stage (`degradation.worker.DegradeShard`: Real-ESRGAN second-order blur / resize / Gaussian-or-Poisson
  noise σ 1-30 / JPEG q30-95, each sample's parameters drawn from (deg_seed, key) and stored in `{key}.deg.json`),
  so the held-out LR is as degraded as NSARM's training and test LR and bicubic of it is the honest baseline.
  The other presets of degradation.config.PRESETS (`nsarm-light`, `seesr`, `pisasr`) also work.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dataset import contract

DEG_HASH = "bicubic-x4-noise"
CAP_HASH = "filename-v1"


def centre_square(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def degrade(hr: Image.Image, scale: int, noise_sigma: float, rng: np.random.Generator) -> Image.Image:
    """Bicubic ×1/scale, then Gaussian noise of `noise_sigma` (8-bit units)."""
    lr = np.asarray(hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC), dtype=np.float32)
    if noise_sigma > 0:
        lr = lr + rng.normal(0, noise_sigma, lr.shape)
    return Image.fromarray(np.clip(lr, 0, 255).round().astype(np.uint8))


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _parquet_bytes(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def build_photo_dataset(photos: Sequence[str | Path], root: str, *, hr_size: int = 256, scale: int = 4,
                        shard_size: int = 6, noise_sigma: float = 2.0, seed: int = 0, degradation: str | None = None,
                        deg_seed: int = 0) -> dict:
    """Write the dataset root; returns {"root", "deg_hash", "cap_hash", "keys"}. Keys are the file stems.

    degradation: None = bicubic + Gaussian noise (`noise_sigma`, `seed`); a preset name of degradation.config.PRESETS
    ('realesrgan', 'nsarm-light', 'seesr', 'pisasr') = the real degradation stage with dataset seed `deg_seed` (see the module docstring).
    """
    if not photos:
        raise ValueError("build_photo_dataset: no photos given")
    if degradation is not None:
        from degradation.config import degradation_config

        deg_scale = degradation_config(degradation).scale  # an unknown name raises here, naming the choices
        if deg_scale != scale:
            raise ValueError(f"build_photo_dataset: degradation {degradation!r} is ×{deg_scale}, scale is {scale}")
    rng = np.random.default_rng(seed)
    root = root.rstrip("/")
    keys = []
    for shard, start in enumerate(range(0, len(photos), shard_size)):
        hr_members, lr_members, rows = [], [], []
        for path in photos[start:start + shard_size]:
            key = Path(path).stem.replace(".", "_")
            with Image.open(path) as im:
                hr = centre_square(im, hr_size)
            hr_jpg = _bytes(hr, "JPEG", quality=95)
            hr_members.append((key, {"jpg": hr_jpg, "json": json.dumps({"source": str(path)}).encode()}))
            if degradation is None:
                lr = degrade(hr, scale, noise_sigma, rng)
                lr_members.append((key, {"png": _bytes(lr, "PNG"), "deg.json": json.dumps({"scale": scale}).encode()}))
            rows.append({"key": key, "status": "success", "sha256": hashlib.sha256(hr_jpg).hexdigest()})
            keys.append(key)
        tar = contract.tar_bytes(hr_members)
        contract.put_atomic(contract.hr_tar(root, shard), tar)
        contract.put_atomic(contract.hr_parquet(root, shard),
                            _parquet_bytes({c: [r[c] for r in rows] for c in ("key", "status", "sha256")}))
        contract.write_json_atomic(contract.hr_stats(root, shard), {
            "shard": shard, "count": len(rows), "successes": len(rows), "samples_in_tar": len(rows),
            "tar_bytes": len(tar), "tar_sha256": hashlib.sha256(tar).hexdigest()})
        if degradation is None:
            contract.put_atomic(contract.lr_tar(root, DEG_HASH, shard), contract.tar_bytes(lr_members))
            contract.write_json_atomic(contract.lr_stats(root, DEG_HASH, shard), {"shard": shard, "count": len(rows)})
        contract.put_atomic(contract.caption_parquet(root, CAP_HASH, shard), _parquet_bytes({
            "key": [r["key"] for r in rows],
            "caption": [f"a photo of {r['key'].replace('-', ' ').replace('_', ' ')}" for r in rows],
            "captioner": ["filename"] * len(rows), "prompt": [""] * len(rows)}))
    if degradation is not None:
        return {"root": root, "deg_hash": _real_degradation(root, degradation, deg_seed, hr_size, shard + 1),
                "cap_hash": CAP_HASH, "keys": keys}
    contract.write_json_atomic(contract.join(contract.lr_dir(root, DEG_HASH), "config.json"),
                               {"kind": "bicubic", "scale": scale, "noise_sigma": noise_sigma, "seed": seed})
    return {"root": root, "deg_hash": DEG_HASH, "cap_hash": CAP_HASH, "keys": keys}


def _real_degradation(root: str, preset: str, deg_seed: int, hr_size: int, num_shards: int) -> str:
    """Run the degradation stage's own shard worker over the HR shards; returns its deg_hash."""
    from degradation.config import degradation_config
    from degradation.worker import DegradeShard

    worker = DegradeShard(root, degradation_config(preset), deg_seed, hr_size=hr_size, device="cpu")
    for shard in range(num_shards):
        res = worker(shard)
        if not res.ok or res.n_bad:
            raise RuntimeError(f"build_photo_dataset: degrading shard {shard} of {root} failed: {res.err or res.bad}")
    return worker.deg_hash
