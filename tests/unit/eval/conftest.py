"""Fixtures for the evaluation tests: crops of the bundled real photos and a degraded copy of each."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def photo_pairs(sample_photos):
    """Four (name, hr, sr) uint8 RGB 128x256 (HxW) pairs from real photos; sr = hr + seeded noise, grey photos included."""
    from nsarm.eval.testsets import read_rgb

    rng = np.random.default_rng(0)
    pairs = []
    for photo in sorted(sample_photos, key=lambda p: p.photo_id)[:4]:
        img = read_rgb(photo.path)
        top, left = (img.shape[0] - 128) // 2, (img.shape[1] - 256) // 2  # two 96² NIQE blocks fit
        hr = np.ascontiguousarray(img[top:top + 128, left:left + 256])
        sr = np.clip(hr.astype(int) + rng.integers(-12, 13, hr.shape), 0, 255).astype(np.uint8)
        pairs.append((photo.photo_id, hr, sr))
    return pairs


@pytest.fixture(scope="session")
def basic_suite():
    """The metric suite with only the library metrics that need no weights (built once: BasicSR import ~3 s)."""
    from nsarm.eval.metrics import MetricConfig, MetricSuite

    return MetricSuite(MetricConfig(metrics=("psnr", "ssim", "niqe")))
