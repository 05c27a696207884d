"""Fixtures for the degradation unit tests: real photos as 256² HR tensors (the tiny preset's HR size)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps


def photo_to_hr(path, side: int = 256) -> torch.Tensor:
    """Centre-crop/resize a photo to side² RGB, round-trip it through JPEG q95 (as the HR shards store it) and
    return a (3, side, side) uint8 tensor."""
    with Image.open(path) as im:
        im = ImageOps.fit(im.convert("RGB"), (side, side), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def hr_photos(sample_photos) -> list[tuple[str, torch.Tensor]]:
    """(key, (3, 256, 256) uint8) for 5 real photos: 4 colour (incl. the two that exercise Poisson's rejection
    sampler after USM) and 1 grey."""
    wanted = ("skimage-astronaut", "skimage-coffee", "skimage-hubble-deep-field", "skimage-rocket", "skimage-camera")
    by_id = {p.photo_id: p for p in sample_photos}
    return [(k, photo_to_hr(by_id[k].path)) for k in wanted]
