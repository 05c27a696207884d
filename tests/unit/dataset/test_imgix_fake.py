"""The imgix stand-in (`dataset.httpserve.imgix_render`) behaves like the CDN's documented defaults, so the shard
tests over it mean something: q=75 JPEG re-encode by default, fit=clip enlarges, fit=max never does, fm=png is
lossless."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dataset.httpserve import imgix_render, imgix_size


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture(scope="module")
def astronaut(sample_photos) -> bytes:
    return next(p for p in sample_photos if p.photo_id == "skimage-astronaut").path.read_bytes()  # 512² PNG


def test_fit_clip_enlarges_and_fit_max_never_does():
    assert imgix_size((512, 512), 1024, None, "clip") == (1024, 1024)  # imgix's default fit: a fake 1024² "HR"
    assert imgix_size((512, 512), 1024, None, "max") == (512, 512)
    assert imgix_size((6000, 4000), 1536, None, "max") == (1536, 1024)
    assert imgix_size((6000, 4000), 1000, 1000, "clip") == (1000, 667)


def test_default_output_is_a_q75_reencode_and_png_is_lossless(astronaut):
    src = np.asarray(_decode(astronaut).convert("RGB"))
    jpg, ctype = imgix_render(astronaut, {"w": "512", "fm": "jpg"})  # no q: imgix's default 75
    assert ctype == "image/jpeg"
    q75 = io.BytesIO()
    Image.fromarray(src).save(q75, "JPEG", quality=75)
    assert jpg == q75.getvalue()
    png, ctype = imgix_render(astronaut, {"w": "512", "fm": "png", "q": "100", "fit": "max"})
    assert ctype == "image/png" and np.array_equal(np.asarray(_decode(png).convert("RGB")), src)
    q100, _ = imgix_render(astronaut, {"w": "512", "fm": "jpg", "q": "100"})
    err = {name: np.abs(np.asarray(_decode(b).convert("RGB")).astype(int) - src).mean() for name, b in
           (("q75", jpg), ("q100", q100))}
    assert err["q100"] < err["q75"] / 2


def test_unknown_parameters_are_refused(astronaut):
    with pytest.raises(ValueError, match="fit='crop'"):
        imgix_render(astronaut, {"w": "100", "fit": "crop"})
    with pytest.raises(ValueError, match="fm='avif'"):
        imgix_render(astronaut, {"fm": "avif"})
