"""The tensor operations of the degradation: per-sample-kernel blur, USM sharpening, Gaussian/Poisson noise, resize.

Every function is tensor-in/tensor-out and draws randomness only from the `torch.Generator` it is given.
Numerics mirror BasicSR's `filter2D`, `USMSharp`, `add_gaussian_noise_pt` and `add_poisson_noise_pt` (same
operation order, same float32 constants) so that, given the same parameters and generator state, the results
match to the tolerances stated in tests/unit/degradation/test_equivalence.py. Two things differ on purpose:
  * blur uses grouped convolutions over the batch with a different kernel per sample (BasicSR's per-image layout
    is ~5x slower on CPU), cropped to each kernel's non-zero support; a grouped conv's output for a sample does not
    depend on its batch neighbours, which the per-sample determinism relies on;
  * Poisson noise counts grey levels with `bincount` over 256 bins instead of `torch.unique` (exactly the same
    count, O(N) instead of a sort: BasicSR's slowest step on CPU).
Shapes: B batch, H×W image size, K kernel size (odd). Images are float32 RGB in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from degradation.kernels import cv2_gaussian_1d


def support_radius(kernel_KK: torch.Tensor) -> int:
    """Half-width of the smallest centred square holding every non-zero tap (Real-ESRGAN zero-pads 7..21 kernels
    to 21, and narrow Gaussians underflow to exact zeros at the border)."""
    k = kernel_KK.shape[-1]
    nz = kernel_KK != 0
    r = k // 2
    while r > 0 and not (nz[k // 2 - r].any() or nz[k // 2 + r].any() or nz[:, k // 2 - r].any()
                         or nz[:, k // 2 + r].any()):
        r -= 1
    return r


def _nhwc(x_1CHW: torch.Tensor) -> torch.Tensor:
    # oneDNN's depthwise convolution is ~1.4x faster on channels-last input on CPU, with bit-identical results
    # (same per-tap accumulation order; covered by the BasicSR equivalence tests).
    return x_1CHW.contiguous(memory_format=torch.channels_last) if x_1CHW.device.type == "cpu" else x_1CHW


def _filter2d_same_k(img_B3HW: torch.Tensor, kernel_BKK: torch.Tensor) -> torch.Tensor:
    b, c, h, w = img_B3HW.shape
    k = kernel_BKK.shape[-1]
    padded = F.pad(img_B3HW, (k // 2,) * 4, mode="reflect")
    # (1, B·3, H+K-1, W+K-1) with B·3 groups: every channel of every image is its own 1-channel conv.
    weight = kernel_BKK.to(img_B3HW).repeat_interleave(c, dim=0).unsqueeze(1)  # (B·3, 1, K, K)
    out = F.conv2d(_nhwc(padded.reshape(1, b * c, *padded.shape[-2:])), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def filter2d_each(img_B3HW: torch.Tensor, kernel_BKK: torch.Tensor) -> list[torch.Tensor]:
    """`filter2d`, returned as a list of (1, 3, H, W) results (no re-assembly copy when the caller splits anyway)."""
    b = img_B3HW.shape[0]
    k = kernel_BKK.shape[-1]
    if k % 2 != 1:
        raise ValueError(f"filter2d: kernel size must be odd, got {k}")
    if kernel_BKK.shape[0] == 1 and b > 1:
        kernel_BKK = kernel_BKK.expand(b, k, k)
    radii = [support_radius(kernel_BKK[i]) for i in range(b)]
    out: list[torch.Tensor | None] = [None] * b
    c = k // 2
    for r in sorted(set(radii)):
        idx = [i for i, ri in enumerate(radii) if ri == r]
        sub = img_B3HW if len(idx) == b else img_B3HW[idx]
        y = _filter2d_same_k(sub, kernel_BKK[idx][:, c - r:c + r + 1, c - r:c + r + 1])
        for j, i in enumerate(idx):
            out[i] = y[j:j + 1]
    return out  # type: ignore[return-value]


def filter2d(img_B3HW: torch.Tensor, kernel_BKK: torch.Tensor) -> torch.Tensor:
    """Correlate each image with its own kernel (reflect padding, output the same size), as BasicSR's filter2D.

    Kernels are cropped to their non-zero support and the batch is split into groups of equal support, one grouped
    conv each: a zero tap adds an exact +0, so the result is bit-identical to the padded 21×21 conv (checked in the
    equivalence tests) at about half the multiply-adds on Real-ESRGAN's 7..21 kernel sizes.

    Args:
        img_B3HW: images, needs H, W > K // 2 (reflect padding).
        kernel_BKK: one float32 kernel per image (or (1, K, K), shared), K odd.
    """
    return torch.cat(filter2d_each(img_B3HW, kernel_BKK))


def _separable_blur(img_B3HW: torch.Tensor, g_K: torch.Tensor) -> torch.Tensor:
    """Blur with the separable kernel outer(g, g): two 1-D grouped passes (K× fewer multiply-adds than 2-D)."""
    b, c, h, w = img_B3HW.shape
    k = g_K.numel()
    x = _nhwc(F.pad(img_B3HW, (k // 2,) * 4, mode="reflect").reshape(1, b * c, h + k - 1, w + k - 1))
    row = g_K.view(1, 1, 1, k).expand(b * c, 1, 1, k)
    col = g_K.view(1, 1, k, 1).expand(b * c, 1, k, 1)
    x = F.conv2d(x, row, groups=b * c)  # (1, B·3, H+K-1, W)
    x = F.conv2d(x, col, groups=b * c)  # (1, B·3, H, W)
    return x.reshape(b, c, h, w)


def usm_sharpen(img_B3HW: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10.0) -> torch.Tensor:
    """Unsharp masking of the GT (Real-ESRGAN's USMSharp): sharpen where |I - blur(I)|·255 > threshold, with the
    mask softened by the same Gaussian. The 51×51 Gaussian is applied as two 1-D passes (it is separable)."""
    if radius % 2 == 0:
        radius += 1
    g_K = torch.from_numpy(cv2_gaussian_1d(radius)).to(img_B3HW)
    residual = img_B3HW - _separable_blur(img_B3HW, g_K)
    mask = (torch.abs(residual) * 255 > threshold).to(img_B3HW)
    soft_mask = _separable_blur(mask, g_K)
    sharp = torch.clip(img_B3HW + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img_B3HW


def rgb_to_gray(img_B3HW: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma with torchvision's rounded weights, (B, 1, H, W)."""
    r, g, b = img_B3HW.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img_B3HW.dtype).unsqueeze(-3)


def add_gaussian_noise(img_13HW: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, σ/255) noise, one field shared by the channels when `gray`, then clip to [0, 1].

    The draw order equals BasicSR's `generate_gaussian_noise_pt` for one image (grey field first), so a generator
    in the same state gives the same noise. Args: img (1, 3, H, W); sigma on the 0-255 scale.
    """
    _, _, h, w = img_13HW.shape
    sigma_t = torch.tensor(sigma, dtype=img_13HW.dtype, device=img_13HW.device)
    shape = (h, w) if gray else tuple(img_13HW.shape)
    noise = torch.randn(shape, dtype=img_13HW.dtype, device=img_13HW.device, generator=generator) * sigma_t / 255.0
    return torch.clamp(img_13HW + noise, 0, 1)  # (h, w) broadcasts over the 3 channels


def count_levels(img_8bit: torch.Tensor) -> int:
    """Number of distinct 8-bit levels in a tensor of integers 0..255 (what BasicSR gets from torch.unique)."""
    return int((torch.bincount(img_8bit.reshape(-1).to(torch.int64), minlength=256) > 0).sum())


def add_poisson_noise(img_13HW: torch.Tensor, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Add shot noise (BasicSR's generate_poisson_noise_pt for one image): quantise to 8 bit, find the number of
    levels v rounded up to a power of two, draw Poisson(x·v)/v, take the difference, scale it, clip to [0, 1]."""
    src = rgb_to_gray(img_13HW) if gray else img_13HW
    levels = torch.clamp((src * 255.0).round(), 0, 255)
    src = levels / 255.0
    vals = 2.0 ** math.ceil(math.log2(count_levels(levels)))
    vals_t = torch.tensor(vals, dtype=src.dtype, device=src.device)
    noise = torch.poisson(src * vals_t, generator=generator) / vals_t - src
    noise = noise * torch.tensor(scale, dtype=src.dtype, device=src.device)
    return torch.clamp(img_13HW + noise, 0, 1)  # a grey (1, 1, H, W) noise broadcasts over the channels


def add_noise(img_13HW: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
    """Apply a recorded noise step: {"kind": "gaussian", "sigma", "gray"} or {"kind": "poisson", "scale", "gray"}."""
    if params["kind"] == "gaussian":
        return add_gaussian_noise(img_13HW, params["sigma"], params["gray"], generator)
    if params["kind"] == "poisson":
        return add_poisson_noise(img_13HW, params["scale"], params["gray"], generator)
    raise ValueError(f"unknown noise kind in {params}")


def resize(img_13HW: torch.Tensor, mode: str, scale: float | None = None, size: tuple[int, int] | None = None):
    """F.interpolate exactly as Real-ESRGAN calls it (scale_factor for the 1st order, size afterwards;
    align_corners left at its default, no antialias)."""
    if size is not None:
        return F.interpolate(img_13HW, size=size, mode=mode)
    return F.interpolate(img_13HW, scale_factor=scale, mode=mode)
