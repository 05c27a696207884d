"""Score SR results: a folder of existing outputs (comparison mode) or a model's `upscale_fn` on a test set.

Both paths end in the same per-image table (one row per image: key, paths, every metric, `combined`), so our
checkpoints and other methods' published outputs are scored by the same code. Paper protocol (Sec. 4.1): SR
outputs larger than the HR (1024² vs 512²) are bicubic-downsampled to the HR size before scoring.

    suite = MetricSuite(MetricConfig(weights_dir=...))
    df = score_folder(suite, "out/nsarm", hr_dir="RealSR/HR")                  # comparison mode
    df = score_testset(suite, testset, upscale_fn, sr_out_dir="out/ckpt-40k")  # model path
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nsarm.eval.metrics import MetricSuite
from nsarm.eval.robustness import COMBINED_WEIGHTS, combined_score
from nsarm.eval.testsets import TestSet, paired_images, read_rgb, write_png

# upscale_fn(lr_images) -> sr_images: uint8 RGB (h, w, 3) in, uint8 RGB (H, W, 3) out, same order and length.
# It may also accept `captions=[str | None, ...]` (NSARM's text prompt); it is passed when the set has captions.
UpscaleFn = Callable[..., Sequence[np.ndarray]]


def match_size(sr: np.ndarray, shape_hw: tuple[int, int], name: str) -> np.ndarray:
    """Bicubic-downsample `sr` to `shape_hw` when it is an exact integer multiple larger (paper protocol)."""
    h, w = shape_hw
    sh, sw = sr.shape[:2]
    if (sh, sw) == (h, w):
        return sr
    if sh % h or sw % w or sh // h != sw // w or sh < h:
        raise ValueError(f"{name}: SR size {sw}x{sh} is not an integer multiple of the reference size {w}x{h}")
    from PIL import Image

    return np.asarray(Image.fromarray(sr).resize((w, h), Image.BICUBIC), dtype=np.uint8)


def _score_rows(suite: MetricSuite, pairs: list[tuple[str, np.ndarray, np.ndarray | None, dict]],
                eval_size: int | None) -> pd.DataFrame:
    rows = []
    for key, sr, hr, extra in pairs:
        if hr is not None:
            sr = match_size(sr, hr.shape[:2], key)
        elif eval_size is not None:
            sr = match_size(sr, (eval_size, eval_size), key)
        t0 = time.perf_counter()
        try:
            scores = suite.score(sr, hr)
        except (ValueError, TypeError) as e:
            raise ValueError(f"image {key!r}: {e}") from e
        rows.append({"key": key, **extra, "height": sr.shape[0], "width": sr.shape[1], **scores,
                     "score_seconds": time.perf_counter() - t0})
    df = pd.DataFrame(rows)
    if all(c in df.columns for c in COMBINED_WEIGHTS):
        df["combined"] = combined_score(df)
    return df


def score_folder(suite: MetricSuite, sr_dir: str | Path, hr_dir: str | Path | None = None,
                 eval_size: int | None = None) -> pd.DataFrame:
    """Comparison mode: score every image in `sr_dir`, paired with `hr_dir` by `testsets.pair_key`.

    Args:
        eval_size: with no HR, bicubic-downsample square SR outputs to this side first (e.g. 512 for RP60).
    Raises:
        ValueError naming SR images without an HR partner (an HR folder that does not match is a user error).
    """
    srs, hrs = paired_images(sr_dir, hr_dir, "SR")
    pairs = []
    for key, path in srs.items():
        hr_path = hrs.get(key)
        pairs.append((key, read_rgb(path), None if hr_path is None else read_rgb(hr_path),
                      {"sr_path": str(path), "hr_path": None if hr_path is None else str(hr_path)}))
    return _score_rows(suite, pairs, eval_size)


def score_testset(suite: MetricSuite, testset: TestSet, upscale_fn: UpscaleFn, *, sr_out_dir: str | Path | None = None,
                  batch_size: int = 1, eval_size: int | None = None) -> pd.DataFrame:
    """Model path: upscale every LR of `testset` with `upscale_fn`, optionally save the SR PNGs, score them.

    The per-image table gains `upscale_seconds` (the batch's wall time divided by its size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        takes_captions = "captions" in inspect.signature(upscale_fn).parameters
    except (TypeError, ValueError):  # builtins / C callables have no signature
        takes_captions = False
    pairs = []
    for start in range(0, len(testset), batch_size):
        batch = testset.images[start:start + batch_size]
        lrs = [read_rgb(im.lr_path) for im in batch]
        t0 = time.perf_counter()
        if takes_captions:
            srs = list(upscale_fn(lrs, captions=[im.caption for im in batch]))
        else:
            srs = list(upscale_fn(lrs))
        per_image = (time.perf_counter() - t0) / len(batch)
        if len(srs) != len(batch):
            raise ValueError(f"upscale_fn returned {len(srs)} images for a batch of {len(batch)}")
        for im, sr in zip(batch, srs, strict=True):
            if not isinstance(sr, np.ndarray) or sr.dtype != np.uint8 or sr.ndim != 3:
                raise ValueError(f"upscale_fn output for {im.key} must be uint8 (H, W, 3), got "
                                 f"{getattr(sr, 'dtype', type(sr).__name__)} {getattr(sr, 'shape', '')}")
            sr_path = write_png(sr, Path(sr_out_dir) / f"{im.key}.png") if sr_out_dir is not None else None
            hr = read_rgb(im.hr_path) if im.hr_path is not None else None
            pairs.append((im.key, sr, hr, {"lr_path": str(im.lr_path), "sr_path": sr_path and str(sr_path),
                                           "hr_path": im.hr_path and str(im.hr_path), "upscale_seconds": per_image}))
    return _score_rows(suite, pairs, eval_size)


def summarize(per_image: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """Set means of each metric (NaN columns skipped), as the headline numbers of Table 1."""
    out = {}
    for m in [*metrics, "combined"]:
        if m in per_image.columns:
            x = per_image[m].astype(float)
            x = x[np.isfinite(x)]  # PSNR of an identical pair is +inf; it would swamp the mean
            out[m] = float(x.mean()) if len(x) else math.nan
    return out
