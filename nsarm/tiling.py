"""Tiled inference helpers and the release's colour fix. Pure tensor math, no model, no I/O.

Letters: B batch, h×w LR size, T native LR tile side (256 for NSARM-8B), s upscale factor (4), H×W = s·h × s·w.

The released NSARM accepts exactly T×T LR inputs. For other sizes the LR image is covered by overlapping T×T tiles
(`tile_starts`), each tile is upscaled on its own, and the s·T outputs are blended with weights that ramp smoothly
(raised cosine) across the overlap and stay 1 on image borders (`blend_tiles`), so seams vanish and an image of
exactly one tile is returned unchanged. Inputs smaller than a tile are reflect-padded to T (`pad_to_tile`).

Colour fix (spec §5.4, from the release's color_adjust): AdaIN to the LR image's per-channel mean/std, then the
wavelet fix (5-level à-trous [1,2,1]⊗[1,2,1]/16 blur, dilation 2^i, replicate padding): the SR image keeps its high
frequencies and takes the LR image's low frequencies. The release passes through 8-bit images between the steps
(`quantize_like_pil`), which we keep for parity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length) with at least `overlap` pixels shared.

    Tiles are spread evenly; the first starts at 0 and the last ends at `length`. length <= tile -> [0].
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int, lo_ramp: int, hi_ramp: int) -> torch.Tensor:
    """(n,) weights: raised-cosine rise over lo_ramp pixels, 1 in the middle, fall over hi_ramp pixels."""
    w = torch.ones(n, dtype=torch.float64)
    for ramp, side in ((lo_ramp, 0), (hi_ramp, 1)):
        if ramp > 0:
            x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
            r = 0.5 - 0.5 * torch.cos(math.pi * x)  # 0 -> 1, strictly inside (0, 1): never a zero weight
            if side == 0:
                w[:ramp] = torch.minimum(w[:ramp], r)
            else:
                w[n - ramp :] = torch.minimum(w[n - ramp :], r.flip(0))
    return w


class TileBlender:
    """Accumulates (C, t, t) tiles placed at (y, x) on a tile grid into one (C, H, W) image, tile by tile.

    Each tile's weight ramps over the overlap on sides where it has a neighbour (the true overlap with that
    neighbour) and is 1 towards the image border, so memory stays O(output) and a single tile comes back exactly.
    """

    def __init__(self, channels: int, out_hw: tuple[int, int], ys: list[int], xs: list[int], tile_hw: tuple[int, int]):
        self.ys, self.xs, self.tile_hw = sorted(ys), sorted(xs), tile_hw
        self.acc = torch.zeros(channels, *out_hw, dtype=torch.float64)
        self.wsum = torch.zeros(1, *out_hw, dtype=torch.float64)

    @staticmethod
    def _ramps(pos: int, all_pos: list[int], t: int) -> tuple[int, int]:
        i = all_pos.index(pos)
        lo = all_pos[i - 1] + t - pos if i > 0 else 0  # overlap with the previous tile
        hi = pos + t - all_pos[i + 1] if i + 1 < len(all_pos) else 0
        return max(lo, 0), max(hi, 0)

    def add(self, tile: torch.Tensor, y: int, x: int) -> None:
        t_h, t_w = self.tile_hw
        w = _ramp(t_h, *self._ramps(y, self.ys, t_h))[:, None] * _ramp(t_w, *self._ramps(x, self.xs, t_w))[None, :]
        self.acc[:, y : y + t_h, x : x + t_w] += tile.detach().cpu().double() * w
        self.wsum[:, y : y + t_h, x : x + t_w] += w

    def result(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.acc / self.wsum).to(dtype)


def blend_tiles(tiles: list[torch.Tensor], starts: list[tuple[int, int]], out_hw: tuple[int, int]) -> torch.Tensor:
    """Blend (C, t, t) tiles placed at (y, x) into one (C, H, W) image (see TileBlender)."""
    blender = TileBlender(tiles[0].shape[0], out_hw, list({y for y, _ in starts}), list({x for _, x in starts}), tuple(tiles[0].shape[-2:]))
    for tile, (y, x) in zip(tiles, starts, strict=True):
        blender.add(tile, y, x)
    return blender.result(tiles[0].dtype)


def pad_to_tile(img_3hw: torch.Tensor, tile: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (replicate when too small to reflect) an image to at least tile×tile; returns (padded, (h, w))."""
    h, w = img_3hw.shape[-2:]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph == 0 and pw == 0:
        return img_3hw, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(img_3hw[None], (0, pw, 0, ph), mode=mode)[0], (h, w)


def tiled_upscale(
    images_3hw: list[torch.Tensor],
    tile_fn,
    tile: int,
    scale: int,
    overlap: int,
    batch_size: int = 4,
    progress=None,
) -> list[torch.Tensor]:
    """Upscale images of any size by `scale` with a function that only accepts tile×tile inputs.

    Tiles of all images are pooled into batches of `batch_size` (so many small images share forward passes).

    Args:
        images_3hw: (3, h, w) float tensors.
        tile_fn: (tiles (B, 3, tile, tile), image_index list, tile_index list) -> (B, 3, scale·tile, scale·tile).
            The tile index (row-major within its image) lets the caller seed each tile independently.
        progress: optional callable(done_tiles, total_tiles).
    Returns:
        (3, scale·h, scale·w) tensors, tiles blended by `blend_tiles`.
    """
    jobs = []  # (image index, tile index, y, x)
    blenders, padded_images = [], []
    for i, img in enumerate(images_3hw):
        padded, _ = pad_to_tile(img, tile)
        ys, xs = tile_starts(padded.shape[1], tile, overlap), tile_starts(padded.shape[2], tile, overlap)
        jobs.extend((i, k, y, x) for k, (y, x) in enumerate((y, x) for y in ys for x in xs))
        out_hw = (padded.shape[1] * scale, padded.shape[2] * scale)
        blenders.append(TileBlender(3, out_hw, [y * scale for y in ys], [x * scale for x in xs], (tile * scale,) * 2))
        padded_images.append(padded)
    for b0 in range(0, len(jobs), batch_size):
        batch = jobs[b0 : b0 + batch_size]
        tiles = torch.stack([padded_images[i][:, y : y + tile, x : x + tile] for i, _, y, x in batch])
        sr = tile_fn(tiles, [j[0] for j in batch], [j[1] for j in batch])
        if tuple(sr.shape[1:]) != (3, scale * tile, scale * tile):
            raise ValueError(f"tile_fn returned {tuple(sr.shape)}, expected (B, 3, {scale * tile}, {scale * tile})")
        for (i, _, y, x), out in zip(batch, sr, strict=True):
            blenders[i].add(out, y * scale, x * scale)  # accumulate now: memory stays O(output), not O(tiles)
        if progress:
            progress(min(b0 + batch_size, len(jobs)), len(jobs))
    return [
        blender.result(img.dtype)[:, : img.shape[1] * scale, : img.shape[2] * scale]
        for blender, img in zip(blenders, images_3hw, strict=True)
    ]


# ------------------------------------------------------------------------------------------------ colour fix
def quantize_like_pil(img: torch.Tensor) -> torch.Tensor:
    """Round-trip through 8 bits as torchvision's ToPILImage does (clamp, ×255, truncate), back to [0, 1]."""
    return (img.clamp(0, 1) * 255).to(torch.uint8).float() / 255


def _mean_std(x_BCHW: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x_BCHW.flatten(2)
    return flat.mean(2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]  # unbiased var, as released


def adain(content_BCHW: torch.Tensor, style_BCHW: torch.Tensor) -> torch.Tensor:
    """Give `content` the per-channel mean and std of `style`."""
    cm, cs = _mean_std(content_BCHW)
    sm, ss = _mean_std(style_BCHW)
    return (content_BCHW - cm) / cs * ss + sm


def wavelet_blur(x_BCHW: torch.Tensor, radius: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x_BCHW.dtype, device=x_BCHW.device) / 16
    C = x_BCHW.shape[1]
    x = F.pad(x_BCHW, (radius,) * 4, mode="replicate")
    return F.conv2d(x, k[None, None].repeat(C, 1, 1, 1), groups=C, dilation=radius)


def wavelet_split(x_BCHW: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == x: à-trous decomposition with dilations 1, 2, …, 2^(levels-1)."""
    high = torch.zeros_like(x_BCHW)
    for i in range(levels):
        low = wavelet_blur(x_BCHW, 2**i)
        high = high + (x_BCHW - low)
        x_BCHW = low
    return high, x_BCHW


def colour_fix(sr_B3HW: torch.Tensor, lr_up_B3HW: torch.Tensor, use_adain: bool = True, use_wavelet: bool = True) -> torch.Tensor:
    """Release colour fix. Both inputs in [0, 1] at the output size (LR already upscaled, PIL bicubic). Returns [0, 1]."""
    if use_adain:
        sr_B3HW = quantize_like_pil(adain(sr_B3HW, lr_up_B3HW))
    if use_wavelet:
        sr_B3HW = quantize_like_pil(wavelet_split(sr_B3HW)[0] + wavelet_split(lr_up_B3HW)[1])
    return sr_B3HW
