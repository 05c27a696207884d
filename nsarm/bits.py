"""Binary spherical quantisation (BSQ) and bit-label ↔ code conversions (spec §3.4, §2.4). Pure tensor math, no I/O.

Letters: B batch, d bits per latent pixel (codebook_dim), h×w a scale's grid. Latents and codes are channel-first
`(B, d, h, w)` float; bits are the same layout, dtype int64 with values in {0, 1}.

BSQ maps a latent pixel v ∈ R^d to the nearest vertex of the hypercube inscribed in the unit sphere:
    u = v / ‖v‖,   q = sign(u) / √d   (sign(0) → −1),   bit = (q > 0)
so every code has L2 norm exactly 1 and the 2^d vertices form an implicit codebook (no embedding table).
In training the forward value is q but the gradient is the one of u (straight-through estimator).

Public API:
    bsq_quantize(z_Bdhw)            -> (codes_Bdhw in {±1/√d} with straight-through grad, bits_Bdhw in {0,1})
    bits_to_codes(bits_Bdhw)        -> codes_Bdhw in {±1/√d}
    codes_to_bits(codes_Bdhw)       -> bits_Bdhw
    bits_to_index(bits, dim) / index_to_bits(index, d, dim)   MSB-first integer form (official `lfq.mask`)
    bsq_mask(d)                     -> int64 (d,) = 2^(d-1), …, 2, 1  (the official `lfq.mask` buffer)
    bsc_flip_prob(strength, gen)    -> p ∈ {0, 0.01, …, strength}      (Bitwise Self-Correction, spec §2.4)
    flip_bits(bits, p, gen)         -> bits with each entry flipped independently with probability p
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bsq_mask(d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The official `quantizer.lfq.mask` buffer: int64 (d,) = 2**arange(d-1, -1, -1) (MSB first)."""
    return 2 ** torch.arange(d - 1, -1, -1, device=device)


def bsq_quantize(z: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise latent pixels to BSQ codes.

    Args:
        z: float tensor, any shape; the d-dimensional vector of each pixel lies along `dim` (default channels).
        dim: the bit/channel dimension.

    Returns:
        codes: same shape/dtype as z, values ±1/√d (unit L2 norm along `dim`); gradient is that of z/‖z‖
            (straight-through), so the encoder trains through the quantiser.
        bits: int64, same shape, 1 where the code is positive.
    """
    if not z.is_floating_point():
        raise TypeError(f"bsq_quantize: z must be a float tensor, got {z.dtype}")
    d = z.shape[dim]
    # Quantise in fp32 even under autocast: the sign of tiny components must not depend on bf16 rounding.
    u = F.normalize(z.float(), dim=dim)
    bits = (u > 0).long()
    q = (bits.to(u.dtype) * 2 - 1) / d**0.5
    codes = u + (q - u).detach()
    return codes.to(z.dtype), bits


def bits_to_codes(bits: torch.Tensor, dim: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bits {0,1} → BSQ codes ±1/√d along `dim` (already unit norm; the official L2 re-normalisation is a no-op)."""
    d = bits.shape[dim]
    return (bits.to(dtype) * 2 - 1) / d**0.5


def codes_to_bits(codes: torch.Tensor) -> torch.Tensor:
    """BSQ codes (or any latent) → int64 bits, 1 where positive (sign(0) counts as negative, like BSQ)."""
    return (codes > 0).long()


def bits_to_index(bits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Bits → MSB-first integer index (int64); only meaningful for d ≤ 63."""
    d = bits.shape[dim]
    if d > 63:
        raise ValueError(f"bits_to_index: d={d} bits do not fit an int64 index")
    mask = bsq_mask(d, bits.device)
    shape = [1] * bits.dim()
    shape[dim] = d
    return (bits.long() * mask.view(shape)).sum(dim)


def index_to_bits(index: torch.Tensor, d: int, dim: int = -1) -> torch.Tensor:
    """MSB-first integer index → int64 bits, the new bit axis inserted at `dim`."""
    mask = bsq_mask(d, index.device)
    bits = (index.long().unsqueeze(-1) & mask).ne(0).long()  # (..., d)
    return bits.movedim(-1, dim)


def bsc_flip_prob(strength: float, generator: torch.Generator | None = None) -> float:
    """Per-scale flip probability of Bitwise Self-Correction: uniform over {0, 0.01, …, strength} (spec §2.4).

    The official code draws `randint(0, 100*strength + 1) * 0.01`; strength 0.3 → 31 equally likely values.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"bsc_flip_prob: strength must be in [0, 1], got {strength}")
    n = int(round(100 * strength)) + 1
    return int(torch.randint(0, n, (1,), generator=generator).item()) * 0.01


def flip_bits(bits: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a copy of `bits` (int {0,1}) with each entry flipped independently with probability p ∈ [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip_bits: p must be in [0, 1], got {p}")
    if p == 0.0:
        return bits.clone()
    # Draw on CPU with the (CPU) generator so results do not depend on the device, then move.
    mask = torch.rand(bits.shape, generator=generator) < p
    return torch.where(mask.to(bits.device), 1 - bits, bits)
