"""Per-shard degradation worker (STYLE G8): `DegradeShard(root, cfg, seed)(shard) -> ShardResult`, never raises.

Reads   {root}/hr/{shard:06d}.tar              {key}.jpg|png (HR RGB, square), {key}.json
Writes  {root}/lr/{deg_hash}/{shard:06d}.tar   {key}.png (HR/scale RGB, lossless), {key}.deg.json — same keys, same
                                               order as the HR tar (bad samples are left out and listed in the stats)
        {root}/lr/{deg_hash}/config.json       {"config": DegradationConfig fields, "seed", "deg_hash", ...}
        {root}/lr/{deg_hash}/{shard:06d}_stats.json   written LAST: counts, bad samples with reasons, timings

`{key}.deg.json` = {"key", "deg_hash", "dataset_seed", "params"}; `degradation.pipeline.replay(hr, rec["params"])`
reproduces the PNG's pixels. Idempotent: a shard whose stats exist is skipped; a shard cut off before its stats is
redone from scratch (every file is written to a temporary name and renamed). Roots are fsspec URLs (local, s3://).
The same object runs in a plain loop (`nsarm degrade`), in Ray tasks (degradation/distributed.py) or a Prefect task.
"""

from __future__ import annotations

import io
import json
import time
import traceback
from collections import Counter

import numpy as np
import torch
from PIL import Image

from dataset import contract
from dataset.stage import ShardResult, summarize
from degradation.config import DegradationConfig, deg_hash
from degradation.pipeline import degrade, min_hr_side

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# `_stats.json` keys a run summary sums over the done shards (n_ok and n_bad are its samples and bad_samples).
# Not the free-text reason histogram: the summary is logged to MLflow with its keys as metric names.
TOTALS = ("n_input",)


def config_record(cfg: DegradationConfig, seed: int) -> dict:
    """Content of `{root}/lr/{deg_hash}/config.json`."""
    return {"config": cfg.to_dict(), "config_hash": cfg.hash(), "seed": int(seed), "deg_hash": deg_hash(cfg, seed)}


def ensure_config_json(root: str, cfg: DegradationConfig, seed: int) -> str:
    """Write config.json once; if one exists it must describe the same config and seed. Returns deg_hash."""
    h = deg_hash(cfg, seed)
    url = contract.join(contract.lr_dir(root, h), "config.json")
    if contract.exists(url):
        old = contract.read_json(url)
        if old.get("deg_hash") != h or DegradationConfig.from_dict(old["config"]) != cfg:
            raise ValueError(f"{url} describes another degradation ({old.get('deg_hash')}), refusing to mix outputs")
    else:
        contract.write_json_atomic(url, config_record(cfg, seed))
    return h


def _decode(key: str, files: dict[str, bytes]) -> tuple[np.ndarray | None, str | None]:
    """(H, W, 3) uint8 RGB, or (None, reason)."""
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        return None, f"no image member (has: {', '.join(sorted(files)) or 'nothing'})"
    try:
        with Image.open(io.BytesIO(files[ext])) as im:
            im.load()
            return np.asarray(im.convert("RGB")), None
    except Exception as e:  # PIL raises many types for truncated/corrupt/bomb files
        return None, f"undecodable image {key}.{ext}: {type(e).__name__}: {e}"


def _png(lr_3hw: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(lr_3hw.permute(1, 2, 0).cpu().numpy(), mode="RGB").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


class DegradeShard:
    """Degrade one HR shard into its LR shard. Construct once per process; call per shard id.

    Args:
        root: dataset root URL.
        cfg, seed: degradation config and dataset seed (together they name the output folder).
        batch_size: images per batched pipeline call (memory: ~batch × 60 MB at 1024² on CPU).
        hr_size: expected square HR side; None = the first decodable image of each shard sets it.
        device: "cpu", "cuda", … ; None = cuda when available.
    """

    def __init__(self, root: str, cfg: DegradationConfig, seed: int, batch_size: int = 8,
                 hr_size: int | None = None, device: str | None = None):
        self.root, self.cfg, self.seed = root.rstrip("/"), cfg, int(seed)
        self.batch_size, self.hr_size = batch_size, hr_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.deg_hash = deg_hash(cfg, seed)
        self.min_side = min_hr_side(cfg)

    def _size_error(self, img: np.ndarray, expected: int | None) -> str | None:
        h, w = img.shape[:2]
        if h != w:
            return f"wrong size {w}x{h}: HR must be square"
        if expected is not None and h != expected:
            return f"wrong size {w}x{h} (expected {expected}x{expected})"
        if h % self.cfg.scale or h < self.min_side:
            return f"wrong size {w}x{h}: side must be a multiple of {self.cfg.scale} and >= {self.min_side}"
        return None

    def __call__(self, shard: int) -> ShardResult:
        t0 = time.monotonic()
        try:
            return self._run(int(shard), t0)
        except Exception as e:  # G8: report, never raise; the distributor decides about retries
            return ShardResult(False, int(shard), err=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",
                               seconds=time.monotonic() - t0)

    def _run(self, shard: int, t0: float) -> ShardResult:
        stats_url = contract.lr_stats(self.root, self.deg_hash, shard)
        st = contract.done_stats(stats_url, self.root, shard)  # None also when the HR shard was rewritten since
        if st is not None:
            return ShardResult(True, shard, n=st["n_ok"], n_bad=st["n_bad"], skipped=True, stats=st)
        hr_sha = contract.hr_tar_sha256(self.root, shard)  # read before the tar: a later rewrite makes this stale
        ensure_config_json(self.root, self.cfg, self.seed)
        hr_url = contract.hr_tar(self.root, shard)
        if not contract.exists(hr_url):
            raise FileNotFoundError(f"HR shard {hr_url} does not exist")

        good: list[tuple[str, np.ndarray]] = []
        bad: list[dict] = []
        expected = self.hr_size
        seen: set[str] = set()
        for key, files, err in contract.iter_tar_samples(hr_url):
            if err is not None:
                bad.append({"key": key, "reason": f"{err}: {key!r}"})
                continue
            if key in seen:  # a second run of members with the same key: the LR tar must keep keys unique
                bad.append({"key": key, "reason": f"duplicate key {key!r} (members not adjacent in the tar)"})
                continue
            seen.add(key)
            img, reason = _decode(key, files)
            if img is not None:
                expected = expected or (img.shape[0] if img.shape[0] == img.shape[1] else None)
                reason = self._size_error(img, expected)
            if reason is not None:
                bad.append({"key": key, "reason": reason})
            else:
                good.append((key, img))

        samples: list[tuple[str, dict[str, bytes]]] = []
        for i in range(0, len(good), self.batch_size):
            chunk = good[i:i + self.batch_size]
            hr = torch.from_numpy(np.stack([img for _, img in chunk])).permute(0, 3, 1, 2).to(self.device)
            lr, params = degrade(hr, [k for k, _ in chunk], self.cfg, self.seed)
            for (key, _), lr_i, p in zip(chunk, lr, params, strict=True):
                record = {"key": key, "deg_hash": self.deg_hash, "dataset_seed": self.seed, "params": p}
                samples.append((key, {"png": _png(lr_i), "deg.json": json.dumps(record, sort_keys=True).encode()}))

        contract.put_atomic(contract.lr_tar(self.root, self.deg_hash, shard), contract.tar_bytes(samples))
        seconds = time.monotonic() - t0
        stats = {
            "shard": shard, "deg_hash": self.deg_hash, "hr_tar_sha256": hr_sha,
            "n_input": len(good) + len(bad), "n_ok": len(samples),
            "n_bad": len(bad), "bad": bad, "errors": dict(Counter(b["reason"].split(":")[0] for b in bad)),
            "seconds": round(seconds, 3), "images_per_s": round(len(samples) / max(seconds, 1e-9), 3),
            "device": str(self.device), "batch_size": self.batch_size,
        }
        contract.write_json_atomic(stats_url, stats)  # last: its presence marks the shard done
        return ShardResult(True, shard, n=len(samples), n_bad=len(bad), seconds=seconds, stats=stats)


def summarize_run(root: str, h: str, results: list[ShardResult], seconds: float) -> dict:
    """The stage summary (`dataset.stage.StageSummary`) of a degradation run into `{root}/lr/{h}`, loop or Ray."""
    return summarize("degrade", root, f"lr/{h}", h, results, seconds, TOTALS)
