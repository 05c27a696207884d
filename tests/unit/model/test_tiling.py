"""Tiling geometry and blending with a real (bicubic) tile upscaler, and the release colour fix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nsarm.tiling import adain, blend_tiles, colour_fix, tile_starts, tiled_upscale, wavelet_split


def _smooth(h, w):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    blob = torch.exp(-((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.05)
    return torch.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y * x, 0.2 + 0.6 * blob])


def _bicubic_x4(tiles, *_):
    return F.interpolate(tiles, scale_factor=4, mode="bicubic", align_corners=False)


def test_tile_starts_cover_with_overlap():
    assert tile_starts(64, 64, 16) == [0] and tile_starts(40, 64, 16) == [0]
    for length in (65, 100, 112, 160, 257, 1000):
        starts = tile_starts(length, 64, 16)
        assert starts[0] == 0 and starts[-1] + 64 == length
        assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:], strict=False))


def test_tiled_bicubic_matches_whole_image_without_seams():
    img = _smooth(112, 160)  # 2 x 3 tiles of 64 with overlap 16
    calls = []
    out = tiled_upscale([img], lambda t, i, k: calls.append(k) or _bicubic_x4(t), tile=64, scale=4, overlap=16, batch_size=4)[0]
    assert out.shape == (3, 448, 640)
    assert calls == [[0, 1, 2, 3], [4, 5]]
    whole = _bicubic_x4(img[None])[0]
    err = (out - whole).abs()
    # tiles only differ from the whole image near their own borders (bicubic edge clamping); blending must hide it
    assert err.max() < 0.01, err.max()
    col_step = (out[:, :, 1:] - out[:, :, :-1]).abs().amax(dim=(0, 1))
    ref_step = (whole[:, :, 1:] - whole[:, :, :-1]).abs().amax(dim=(0, 1))
    assert (col_step - ref_step).abs().max() < 0.005


def test_small_and_many_images_share_batches():
    imgs = [_smooth(40, 50), _smooth(64, 64), _smooth(70, 64)]
    outs = tiled_upscale(imgs, lambda t, i, k: _bicubic_x4(t), tile=64, scale=4, overlap=16, batch_size=3)
    assert [tuple(o.shape) for o in outs] == [(3, 160, 200), (3, 256, 256), (3, 280, 256)]
    torch.testing.assert_close(outs[1], _bicubic_x4(imgs[1][None])[0])


def test_blend_is_smooth_and_exact_for_one_tile():
    one = torch.rand(3, 8, 8)
    assert torch.equal(blend_tiles([one], [(0, 0)], (8, 8)), one)
    a, b = torch.zeros(1, 16, 16), torch.ones(1, 16, 16)
    out = blend_tiles([a, b], [(0, 0), (0, 8)], (16, 24))
    assert torch.equal(out[:, :, :8], a[:, :, :8]) and torch.equal(out[:, :, 16:], b[:, :, 8:])
    assert (out[0, 0, 1:] - out[0, 0, :-1]).abs().max() <= math.pi / 2 / 8 + 1e-6  # raised cosine: no jump


def test_colour_fix_takes_lr_colours_and_keeps_sr_detail():
    g = torch.Generator().manual_seed(0)
    lr_up = _smooth(64, 64)[None]
    detail = 0.05 * torch.randn(1, 3, 64, 64, generator=g)
    sr = (lr_up * 0.5 + 0.3 + detail).clamp(0, 1)  # wrong colours, extra detail
    high, low = wavelet_split(sr)
    torch.testing.assert_close(high + low, sr)
    fixed_adain = adain(sr, lr_up)
    torch.testing.assert_close(fixed_adain.mean(dim=(2, 3)), lr_up.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    fixed = colour_fix(sr, lr_up)
    assert fixed.min() >= 0 and fixed.max() <= 1
    assert torch.equal(fixed * 255, (fixed * 255).round())  # 8-bit grid, like the release's PIL round trips
    low_lr = wavelet_split(lr_up)[1]
    assert (wavelet_split(fixed)[1] - low_lr).abs().mean() < (wavelet_split(sr)[1] - low_lr).abs().mean() / 5
    assert (wavelet_split(fixed)[0] - wavelet_split(fixed_adain)[0]).abs().mean() < 0.01
