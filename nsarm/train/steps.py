"""Stage-1 and stage-2 losses of NSARM training. Pure torch: modules and tensors in, a loss and a few stats out.

Letters: B batch, d bits per VAE latent pixel, D = d·p² bits per transformer token (p = 2 with patchify), K scales,
K_t the scales the transformation network supplies, L = Σ h·w tokens over all transformer grids, (H, W) the HR
latent, n the LR latent side.

Stage 1 (paper Fig. 2 "MSE loss", spec §5.5): targets are the UN-quantised residuals of the HR latent for the first
K_t scales (Alg. 1: R_k = area(z − F_{k−1})); the prediction is map_net(LR latent). Both sides are compared in the
raw layout of `transform_net.flatten_target` (the release trained against `residual.reshape(B, -1, d)`), the MSE is
taken over all K_t scales' elements together.

Stage 2 (paper Fig. 2 "CE loss", Alg. 2): the first K_t residuals are the map net's predictions, BSQ-quantised with
a straight-through gradient; every later scale's label is the bits of area(z − cascade), the cascade built from the
predicted codes ("modified GT"). The transformer is teacher-forced on the cascade's next-scale inputs (trilinear,
as the released trainers), captions are dropped to the learned unconditional embedding with probability 0.1, and
the per-bit 2-class cross-entropy is averaged over bits, weighted per token ∝ √(h_K w_K / (h w)) (Infinity's
`reweight_loss_by_scale`) and counted only on scales ≥ K_t: the transformer's own outputs on the first K_t scales
are discarded at inference. The loss reaches the map net through the quantised codes in the transformer inputs.

    z_hr, z_lr = encode_pair(tokenizer, hr_B3HW, lr_B3hw)
    out = stage1_loss(map_net, z_lr, z_hr, vae_grids, k_t)
    out = stage2_loss(transformer, map_net, z_lr, z_hr, text, grids, patch, Stage2Options(...), generator)
    loss, stats = StageModule(model, stage)(z_lr, z_hr, text, grids, patch, opts, generator)   # what DDP/FSDP wrap
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nsarm.model import NSARMModel
from nsarm.scales import bit_labels, cascade_modify, decompose, scale_loss_weights, transformer_inputs
from nsarm.transform_net import flatten_target
from nsarm.transformer import PackedText

Grid = tuple[int, int]


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, the value to backpropagate
    stats: dict[str, float]  # detached numbers for logging


@torch.no_grad()
def encode_pair(tokenizer, hr_B3HW: torch.Tensor, lr_B3hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen tokenizer: images in [0, 1] → raw (un-quantised) latents z_hr (B, d, H, W), z_lr (B, d, n, n)."""
    return tokenizer.encode_raw(hr_B3HW * 2 - 1), tokenizer.encode_raw(lr_B3hw * 2 - 1)


def stage1_targets(z_hr: torch.Tensor, vae_grids: Sequence[Grid], k_t: int, down: str = "area",
                   up: str = "trilinear") -> list[torch.Tensor]:
    """Un-quantised Alg.-1 residuals of the first K_t scales, each (B, d, h_k, w_k)."""
    if not 0 < k_t <= len(vae_grids):
        raise ValueError(f"k_t={k_t} must be in [1, {len(vae_grids)}] for grids {list(vae_grids)}")
    with torch.no_grad():
        return decompose(z_hr, vae_grids, down=down, up=up).residuals[:k_t]


def stage1_loss(map_net, z_lr: torch.Tensor, z_hr: torch.Tensor, vae_grids: Sequence[Grid], k_t: int,
                down: str = "area", up: str = "trilinear") -> StepOutput:
    """MSE between map_net(z_lr) and the HR latent's first K_t residuals (both in the release's raw layout)."""
    targets = stage1_targets(z_hr, vae_grids, k_t, down, up)
    preds = map_net(z_lr)
    if len(preds) != k_t:
        raise ValueError(f"transformation net returns {len(preds)} scales, K_t is {k_t}")
    pred_BN = torch.cat([flatten_target(p).flatten(1) for p in preds], dim=1)
    tgt_BN = torch.cat([flatten_target(t).flatten(1) for t in targets], dim=1)
    loss = F.mse_loss(pred_BN.float(), tgt_BN.float())
    stats = {"loss": float(loss.detach()), "target_var": float(tgt_BN.var())}
    for k, (p, t) in enumerate(zip(preds, targets, strict=True)):
        stats[f"mse_scale{k}"] = float(F.mse_loss(p.detach().float(), t.float()))
    return StepOutput(loss, stats)


@dataclass(frozen=True)
class Stage2Options:
    k_t: int  # scales supplied by the transformation net
    caption_drop: float = 0.1
    loss_from_scale: int | None = None  # None = k_t
    reweight_by_scale: bool = True
    flip_layers: int = 0  # Bitwise Self-Correction (0 = off)
    flip_strength: float = 0.3
    down: str = "area"
    up: str = "trilinear"
    next_mode: str = "trilinear"


def token_weights(grids: Sequence[Grid], from_scale: int, reweight: bool) -> torch.Tensor:
    """(L,) loss weight per token: scale re-weighting (or uniform), zero before `from_scale`, summing to 1."""
    w = scale_loss_weights(grids) if reweight else torch.ones(sum(h * w for h, w in grids))
    start = sum(h * ww for h, ww in grids[:from_scale])
    if start >= w.numel():
        raise ValueError(f"loss_from_scale={from_scale} leaves no scale of {list(grids)} to train on")
    w = w.clone()
    w[:start] = 0
    return w / w.sum()


def drop_captions(batch: int, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) bool: which captions become the unconditional embedding (CFG training)."""
    return torch.rand(batch, generator=generator) < rate


def stage2_loss(transformer, map_net, z_lr: torch.Tensor, z_hr: torch.Tensor, text: PackedText,
                grids: Sequence[Grid], patch: int, opts: Stage2Options,
                generator: torch.Generator | None = None) -> StepOutput:
    """Bitwise CE of the transformer on cascade-modified targets (Alg. 2), end to end through the map net.

    Args:
        grids: transformer grids (h, w); VAE grids are patch × these and the last equals z_hr's size.
        text: PackedText of the B captions (raw T5 features, e.g. from the caption cache).
        generator: CPU generator for caption drop and BSC flips (part of the checkpointed RNG state).
    """
    B = z_hr.shape[0]
    vae_grids = [(h * patch, w * patch) for h, w in grids]
    preds = map_net(z_lr)
    if len(preds) != opts.k_t:
        raise ValueError(f"transformation net returns {len(preds)} scales, K_t is {opts.k_t}")
    dec = cascade_modify(z_hr, vae_grids, [p.float() for p in preds], down=opts.down, up=opts.up,
                         next_mode=opts.next_mode, flip_layers=opts.flip_layers, flip_strength=opts.flip_strength,
                         generator=generator)
    x_BLd = transformer_inputs(dec, patch)  # (B, L − 1, D); carries the STE gradient to the map net
    labels_BLD = bit_labels(dec, patch)  # (B, L, D)
    uncond_B = drop_captions(B, opts.caption_drop, generator)
    logits = transformer(text, x_BLd, list(grids), uncond_B=uncond_B.to(z_hr.device))  # (B, L, 2D)
    L, D = labels_BLD.shape[1:]
    ce_BLD = F.cross_entropy(logits.float().reshape(-1, 2), labels_BLD.reshape(-1), reduction="none").view(B, L, D)
    from_scale = opts.k_t if opts.loss_from_scale is None else opts.loss_from_scale
    w_L = token_weights(grids, from_scale, opts.reweight_by_scale).to(ce_BLD.device)
    loss = (ce_BLD.mean(-1) * w_L).sum(-1).mean()
    with torch.no_grad():
        correct_BL = (logits.view(B, L, D, 2).argmax(-1) == labels_BLD).float().mean(-1)
        start = sum(h * w for h, w in grids[:from_scale])
        stats = {"loss": float(loss.detach()), "bit_acc": float(correct_BL[:, start:].mean()),
                 "bit_acc_last": float(correct_BL[:, -grids[-1][0] * grids[-1][1]:].mean()),
                 "caption_drop": float(uncond_B.float().mean())}
    return StepOutput(loss, stats)


class StageModule(nn.Module):
    """What one stage trains, as one module (DDP/FSDP wrap it): the map net, plus the transformer in stage 2; its
    forward is the stage's loss."""

    def __init__(self, model: NSARMModel, stage: int):
        super().__init__()
        self.stage = stage
        self.model_config = model.cfg.to_dict()  # saved in every checkpoint beside the weights
        self.map_transformer = model.map_transformer
        self.transformer = model.transformer if stage == 2 else None

    def forward(self, z_lr, z_hr, text, grids, patch, opts: Stage2Options, generator):
        if self.stage == 1:
            vae_grids = [(h * patch, w * patch) for h, w in grids]
            out = stage1_loss(self.map_transformer, z_lr, z_hr, vae_grids, opts.k_t, opts.down, opts.up)
        else:
            out = stage2_loss(self.transformer, self.map_transformer, z_lr, z_hr, text, grids, patch, opts, generator)
            # Every rank gives every trained parameter a gradient (0 here when no caption was dropped): FSDP
            # reduce-scatters only parameters that have one, so a rank without a dropped caption would send a smaller
            # buffer than one with (gloo: "Received data size doesn't match expected size"). DDP gets the same zeros.
            return out.loss + 0.0 * self.transformer.cfg_uncond.sum(), out.stats
        return out.loss, out.stats
