"""Deterministic JPEG compression round-trip in torch, batched over images of DIFFERENT sizes and qualities.

Why our own and not a per-sample encoder (libjpeg via PIL/cv2): Real-ESRGAN trains on BasicSR's DiffJPEG (4:2:0,
standard luminance/chrominance tables, quality→factor rule of libjpeg, 16-pixel zero padding, round-to-nearest
quantisation), which is *not* byte-compatible with libjpeg (different DCT, rounding and chroma filter). To give the
same LR distribution as the NSARM training data we reproduce DiffJPEG(differentiable=False): the same constants and
the same float32 operation order, so per image the result equals DiffJPEG's (verified bit-exact in the tests on
CPU; stated tolerance 1/255 for other devices).

Batching: every image is padded to a multiple of 16 and cut into 8×8 blocks; the blocks of ALL images (Y, Cb, Cr)
are concatenated into one (N, 64) matrix and transformed with one matmul against the 64×64 DCT basis, with a
per-block quantisation table (table × the image's quality factor). A block's result depends only on that block,
so an image's output is the same whatever else is in the batch. Shapes: N blocks, H×W image size.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

# Standard JPEG quantisation tables (ITU T.81 Annex K), transposed as DiffJPEG stores them.
_Y_TABLE = np.array(
    [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
     [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
     [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float32).T
_C_TABLE = np.full((8, 8), 99, dtype=np.float32)
_C_TABLE[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]).T
_RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                    dtype=np.float32).T
_YCC2RGB = np.array([[1.0, 0.0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]], dtype=np.float32).T
_MIN_ROWS = 64  # matmuls with very few rows take a different BLAS path; padding keeps results row-independent


def _dct_bases() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward basis T[x,y,u,v] = cos((2x+1)uπ/16)cos((2y+1)vπ/16) with scale α(u)α(v)/4, and the inverse basis
    T'[u,v,x,y] with α(u)α(v); α(0) = 1/√2, else 1."""
    fwd = np.zeros((8, 8, 8, 8), dtype=np.float32)
    inv = np.zeros((8, 8, 8, 8), dtype=np.float32)
    for x, y, u, v in itertools.product(range(8), repeat=4):
        fwd[x, y, u, v] = np.cos((2 * x + 1) * u * np.pi / 16) * np.cos((2 * y + 1) * v * np.pi / 16)
        inv[x, y, u, v] = np.cos((2 * u + 1) * x * np.pi / 16) * np.cos((2 * v + 1) * y * np.pi / 16)
    alpha = np.array([1.0 / np.sqrt(2)] + [1] * 7)
    return fwd, (np.outer(alpha, alpha) * 0.25).astype(np.float32), inv, np.outer(alpha, alpha).astype(np.float32)


class _Consts:
    """The constant tensors on one device (built once per device and reused)."""

    def __init__(self, device: torch.device):
        fwd, scale, inv, alpha = _dct_bases()
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.fwd_64 = t(fwd.reshape(64, 64))
        self.scale = t(scale)
        self.inv_64 = t(inv.reshape(64, 64))
        self.alpha = t(alpha)
        self.y_table, self.c_table = t(_Y_TABLE), t(_C_TABLE)
        self.rgb2ycc, self.ycc2rgb = t(_RGB2YCC), t(_YCC2RGB)
        self.shift_in = torch.tensor([0.0, 128.0, 128.0], device=device)
        self.shift_out = torch.tensor([0.0, -128.0, -128.0], device=device)


_CONSTS: dict[str, _Consts] = {}


def _consts(device: torch.device) -> _Consts:
    if str(device) not in _CONSTS:
        _CONSTS[str(device)] = _Consts(device)
    return _CONSTS[str(device)]


def quality_to_factor(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's quality scaling (float32, as DiffJPEG): q < 50 → 50/q, else (200 - 2q)/100. Clamped above 0 so
    that q = 100 (the `seesr`/`pisasr` presets' upper bound) cannot divide by zero."""
    factor = torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0
    return torch.clamp_min(factor, 1e-6)


def jpeg_roundtrip(images: list[torch.Tensor], qualities: list[float]) -> list[torch.Tensor]:
    """Compress and decompress each image at its own quality, all blocks in one batched transform.

    Args:
        images: list of (1, 3, H_i, W_i) float32 RGB in [0, 1] (clamp before: values outside give artefacts).
        qualities: JPEG quality per image, in (0, 100].
    Returns:
        list of (1, 3, H_i, W_i) float32 in [0, 1], same order.
    """
    if not images:
        return []
    device = images[0].device
    c = _consts(device)
    factors = quality_to_factor(torch.tensor(qualities, dtype=torch.float32, device=device))  # (B,) float32

    # ---- colour transform and chroma subsampling per image (DiffJPEG's ops and order), blocks gathered in one buffer
    planes, segments, layout, n = [], [], [], 0  # segments: (first row, end row, quantisation table × factor)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        hp, wp = math.ceil(h / 16) * 16, math.ceil(w / 16) * 16  # DiffJPEG pads to 16 (4:2:0 MCU)
        x = F.pad(img * 255, (0, wp - w, 0, hp - h), mode="constant", value=0)
        ycc = torch.tensordot(x.permute(0, 2, 3, 1), c.rgb2ycc, dims=1).add_(c.shift_in)  # (1, hp, wp, 3)
        chroma = F.avg_pool2d(ycc.permute(0, 3, 1, 2)[:, 1:], kernel_size=2, stride=2, count_include_pad=False)
        for plane, table in ((ycc[0, :, :, 0], c.y_table), (chroma[0, 0], c.c_table), (chroma[0, 1], c.c_table)):
            nb = plane.numel() // 64
            planes.append(plane)
            segments.append((n, n + nb, table * factors[i]))
            n += nb
        layout.append((h, w, hp, wp))
    rows = max(n, _MIN_ROWS)
    buf_N88 = torch.zeros(rows, 8, 8, device=device) if rows > n else torch.empty(rows, 8, 8, device=device)
    for plane, (a, b, _) in zip(planes, segments, strict=True):
        ph, pw = plane.shape
        buf_N88[a:b].view(ph // 8, pw // 8, 8, 8).copy_(plane.reshape(ph // 8, 8, pw // 8, 8).permute(0, 2, 1, 3))

    # ---- one forward DCT, per-image quantisation, one inverse DCT (in place; same arithmetic as DiffJPEG)
    flat = buf_N88.view(rows, 64).sub_(128)
    coef_N88 = torch.mm(flat, c.fwd_64).view(rows, 8, 8).mul_(c.scale)
    for a, b, table in segments:
        coef_N88[a:b].div_(table).round_().mul_(table)  # quantise + dequantise
    coef_N88.mul_(c.alpha)
    pix_N88 = torch.mm(coef_N88.view(rows, 64), c.inv_64).view(rows, 8, 8).mul_(0.25).add_(128)

    # ---- per image: merge blocks, nearest chroma upsampling, colour transform back
    out = []
    for i, (h, w, hp, wp) in enumerate(layout):
        ycc = torch.empty(1, hp, wp, 3, device=device)
        (a, b, _), (ca, cb_, _), (ra, rb, _) = segments[3 * i:3 * i + 3]
        ycc[0, :, :, 0].view(hp // 8, 8, wp // 8, 8).copy_(pix_N88[a:b].view(hp // 8, wp // 8, 8, 8).permute(0, 2, 1, 3))
        for ch, (s0, s1) in ((1, (ca, cb_)), (2, (ra, rb))):
            src = pix_N88[s0:s1].view(hp // 16, wp // 16, 8, 8).permute(0, 2, 1, 3)  # (hp/16, 8, wp/16, 8)
            ycc[0, :, :, ch].view(hp // 16, 8, 2, wp // 16, 8, 2).copy_(src[:, :, None, :, :, None])
        rgb = torch.tensordot(ycc.add_(c.shift_out), c.ycc2rgb, dims=1).permute(0, 3, 1, 2)
        out.append(rgb.clamp_(0, 255).div_(255)[:, :, :h, :w])
    return out
