"""NSARM transformation network (`map_transformer`, spec §5.3): LR latent -> the first K_t residual scales.

Letters: B batch, d latent channels (VAE codebook_dim: 14 for NSARM-8B), n = latent side of the LR image
(32 for 256² LR with the f8 VAE), s = side of one output scale, D = width of one per-scale stage.

The LR image's raw (un-quantised) VAE features (B, d, n, n) pass a shared conv feature extractor; then, per
output scale i, a conv stage lifts them to width D_i, adaptive average pooling brings them to s_i × s_i, a
post-norm nn.TransformerEncoder mixes the s_i² tokens (no positional encoding), and a small MLP projects back
to d channels. Output i is the predicted residual of VAE scale i, shape (B, d, s_i, s_i).

Raw-reshape quirk (kept on purpose): the MLP output (B, s², d) is turned into (B, d, s, s) by a plain reshape —
a reinterpretation of memory, not a permute — exactly like the release. The released weights were trained
against targets flattened the same way (`residual.reshape(B, -1, d)` of a (B, d, 1, h, w) tensor), so the
network is self-consistent; a "clean" permute would silently break `NSARM.pth`. Training targets must be
flattened with `flatten_target()` below for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TransformNetConfig:
    """Sizes of the transformation network; defaults = `Map_Transformer_residual_for8B` of the release."""

    latent_channels: int = 14  # d: VAE codebook_dim of the LR latent (and of every output residual)
    latent_hw: int = 32  # n: LR latent side (256² LR / f8); LayerNorm([C, n, n]) hard-codes it
    extractor_widths: tuple[int, int] = (64, 128)  # widths of the shared conv feature extractor
    # Per output scale: (output side s, width D, encoder layers, heads). One entry per K_t scale.
    stages: tuple[tuple[int, int, int, int], ...] = (
        (2, 64, 4, 4),
        (4, 128, 6, 4),
        (8, 256, 8, 8),
        (12, 384, 10, 8),
        (16, 512, 12, 8),
        (24, 768, 14, 12),
        (32, 1024, 16, 16),
    )
    ffn_mult: int = 4  # dim_feedforward = ffn_mult * D
    dropout: float = 0.1  # nn.TransformerEncoderLayer default, active in training only

    @property
    def num_scales(self) -> int:
        return len(self.stages)

    @property
    def output_sides(self) -> tuple[int, ...]:
        return tuple(s for s, *_ in self.stages)


TRANSFORM_NET_PRESETS = {
    "nsarm-8b": TransformNetConfig(),
    # tiny: LR 64² -> f8 latent 8×8 with d=8; K_t=4 outputs at the VAE grids 2, 4, 8, 12 of the 0.06M schedule
    "tiny": TransformNetConfig(
        latent_channels=8,
        latent_hw=8,
        extractor_widths=(16, 32),
        stages=((2, 16, 1, 2), (4, 16, 1, 2), (8, 32, 1, 4), (12, 32, 1, 4)),
    ),
}


def _conv_ln_gelu(c_in: int, c_out: int, n: int) -> list[nn.Module]:
    # LayerNorm over (C, n, n) jointly with elementwise affine of that shape: as released (fixes n)
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LayerNorm([c_out, n, n]), nn.GELU()]


class TransformNet(nn.Module):
    """map_transformer: (B, d, n, n) raw LR latent -> list of K_t residuals (B, d, s_i, s_i)."""

    def __init__(self, cfg: TransformNetConfig):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.latent_channels, cfg.latent_hw
        w1, w2 = cfg.extractor_widths
        self.feature_extractor = nn.Sequential(*_conv_ln_gelu(d, w1, n), *_conv_ln_gelu(w1, w2, n), *_conv_ln_gelu(w2, d, n))
        self.feature_transforms = nn.ModuleList()
        self.adaptive_pools = nn.ModuleList()
        self.transformers = nn.ModuleList()
        self.output_projs = nn.ModuleList()
        for s, D, layers, heads in cfg.stages:
            self.feature_transforms.append(nn.Sequential(*_conv_ln_gelu(d, D // 2, n), *_conv_ln_gelu(D // 2, D, n)))
            self.adaptive_pools.append(nn.AdaptiveAvgPool2d(s))
            layer = nn.TransformerEncoderLayer(
                d_model=D, nhead=heads, dim_feedforward=cfg.ffn_mult * D, dropout=cfg.dropout, batch_first=True
            )  # post-norm, ReLU, LayerNorm eps 1e-5: the PyTorch defaults the release used
            self.transformers.append(nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False))
            self.output_projs.append(nn.Sequential(nn.Linear(D, D // 2), nn.LayerNorm(D // 2), nn.GELU(), nn.Linear(D // 2, d)))

    def forward(self, lr_latent_Bdnn: torch.Tensor) -> list[torch.Tensor]:
        """Args: lr_latent_Bdnn: raw VAE encoder features of the LR image (not quantised), fp32.
        Returns: K_t tensors (B, d, s_i, s_i), coarse to fine, in the raw-reshape layout (module docstring)."""
        cfg = self.cfg
        expect = (cfg.latent_channels, cfg.latent_hw, cfg.latent_hw)
        if lr_latent_Bdnn.dim() == 5:  # (B, d, 1, n, n) from a video-style VAE call
            lr_latent_Bdnn = lr_latent_Bdnn.squeeze(2)
        if tuple(lr_latent_Bdnn.shape[1:]) != expect:
            raise ValueError(
                f"transformation network expects an LR latent of shape (B, {', '.join(map(str, expect))}) "
                f"(LR side {cfg.latent_hw} × VAE stride), got {tuple(lr_latent_Bdnn.shape)}"
            )
        f = self.feature_extractor(lr_latent_Bdnn)
        B = f.shape[0]
        outs = []
        for (s, D, _, _), lift, pool, enc, proj in zip(
            cfg.stages, self.feature_transforms, self.adaptive_pools, self.transformers, self.output_projs, strict=True
        ):
            seq_BsD = pool(lift(f)).permute(0, 2, 3, 1).reshape(B, s * s, D)  # row-major tokens
            out_Bsd = proj(enc(seq_BsD))  # (B, s*s, d)
            outs.append(out_Bsd.reshape(B, cfg.latent_channels, s, s))  # raw reshape: the release's layout
        return outs


def flatten_target(residual_Bdss: torch.Tensor) -> torch.Tensor:
    """(B, d, s, s) target residual -> (B, s*s, d) in the same raw layout the network's outputs use (stage-1 MSE)."""
    return residual_Bdss.reshape(residual_Bdss.shape[0], -1, residual_Bdss.shape[1])
