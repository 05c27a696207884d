"""2-D rotary position embedding of Infinity (spec §1.6, `rope2d_normalized_by_hw=2`).

Letters: L tokens over all scales, c head dim, P = c/2 rotated pairs.

Every scale's (row, col) positions are stretched onto the grid of the LAST scale of the '1M' schedule of the same
aspect ratio (64×64 for 1:1): row = round(i * 64 / h). So a 2×2 scale sits at rows {0, 32}, and a prefix
schedule (0.06M, 0.25M) uses exactly the positions it has inside the 1M schedule — which is what lets the
released 1024² weights run at smaller sizes. Pairs 0..P/2-1 rotate with the row angle, pairs P/2..P-1 with the
column angle; pair i is (x[2i], x[2i+1]) (interleaved, not half-split).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def full_grid_for(scale_schedule: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The 1M grid positions are normalised to, from the aspect ratio of the schedule's last scale (nearest template)."""
    from nsarm.scales import rope_grid

    h, w = scale_schedule[-1][-2:]
    return rope_grid(h / w)


def rope_positions(scale_schedule: Sequence[tuple[int, int]], full_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """(L, 2) long: (row, col) RoPE position of every token, scales laid out one after another, row-major.

    Args:
        scale_schedule: (h, w) per scale (a leading t of (t, h, w) entries is ignored; t must be 1).
        full_hw: the grid positions are normalised to; default from the schedule's aspect ratio.
    """
    uph, upw = full_hw or full_grid_for(scale_schedule)
    rows, cols = [], []
    for hw in scale_schedule:
        h, w = hw[-2:]
        # float32 multiply then round-half-even: identical to the reference's indices
        r = (torch.arange(h, dtype=torch.float32) * (uph / h)).round().long()
        c = (torch.arange(w, dtype=torch.float32) * (upw / w)).round().long()
        rows.append(r[:, None].expand(h, w).reshape(-1))
        cols.append(c[None, :].expand(h, w).reshape(-1))
    return torch.stack([torch.cat(rows), torch.cat(cols)], dim=-1)


def rope_angles(head_dim: int, positions_L2: torch.Tensor, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of the rotation angles, each (L, head_dim/2) fp32.

    With half = head_dim/2 and inv_freq = base^(-arange(0, half, 2)/half) (half/2 frequencies), the angles of a
    token are cat(row * inv_freq, col * inv_freq).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    pos = positions_L2.to(torch.float32)
    ang_LP = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)
    return ang_LP.cos(), ang_LP.sin()


def apply_rope(x_BHLc: torch.Tensor, cos_LP: torch.Tensor, sin_LP: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by angle i; computed in fp32, returned in fp32."""
    x = x_BHLc.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_LP.to(x.device), sin_LP.to(x.device)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
