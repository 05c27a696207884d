"""Scale schedules, (un)patchify and the multi-scale residual decomposition of NSARM/Infinity. Pure tensor math.

Letters: B batch, d bits per VAE latent pixel, D = d·p² bits per transformer token (p = 1, or 2 with spatial
patchify), H×W the full VAE latent, h×w one scale's grid, K number of scales, L tokens over all scales.
Latents, residuals and codes are channel-first `(B, d, h, w)` float; bits are int64 {0, 1} in the same layout.

Schedules (Infinity `dynamic_resolution`, spec §2.1): for each of 15 aspect-ratio templates (h/w from 0.333 to 3.0)
a list of 13 transformer grids; pn '0.06M' / '0.25M' / '0.60M' / '1M' take the first 7 / 10 / 12 / 13.
    get_schedule(pn, h_div_w=1.0, patch=1) -> ScaleSchedule   (nearest template; grids, vae_grids, token counts)
    schedule_for(preset_or_pn, h_div_w=1.0) -> ScaleSchedule   (preset → its default pn, patch; see nsarm.config)
    k_t_for(preset) -> int                                      (scales supplied by the transformation net)
    rope_grid(h_div_w) -> (h, w)                                (last '1M' grid: RoPE positions are normalised to it)
    nearest_h_div_w_template(h_div_w) -> float

Tensor helpers:
    resize(x_BdHW, (h, w), mode)  'area' (adaptive average), 'trilinear'/'bilinear' (align_corners=False); same size
                                  → returned unchanged (so the last scale of a decomposition is exact).
    patchify(x_BdHW, p) -> (B, d·p², H/p, W/p), channel index c·p² + p·i + j (pixel_unshuffle); unpatchify = inverse.
    to_tokens(x_BChw) -> (B, h·w, C) row-major;  from_tokens(x_BLC, h, w) -> (B, C, h, w)

Algorithms (paper supplementary):
    decompose(z_BdHW, vae_grids, ...)            Alg. 1 (+ Bitwise Self-Correction flips, spec §2.4) -> Decomposition
    cascade_modify(z_BdHW, vae_grids, pred, ...) Alg. 2: first K_t residuals come from `pred` (transformation net),
                                                 later targets = bits of down(z − cascade built from the prediction)
    transformer_inputs(dec, patch) -> (B, L − h₀w₀, D)  next-scale inputs of scales 1..K−1 (teacher forcing)
    bit_labels(dec, patch)         -> (B, L, D) int64   bit labels of all scales
    split_tokens(x_BLC, grids)     -> per-scale (B, D, h, w)   inverse of the two above, for inference
    sum_codes(codes, (H, W), mode) -> (B, d, H, W)      f̂ = Σ up(code_k), the decoder input
    scale_loss_weights(grids)      -> (L,) float, per-token weights ∝ √(h_K w_K / (h w)) summing to 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nsarm.bits import bits_to_codes, bsc_flip_prob, bsq_quantize, flip_bits
from nsarm.config import SCHEDULE_PNS, TOKENIZER_PRESETS, tokenizer_config

Grid = tuple[int, int]

# ---------------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------------

# Transformer grids (h, w) of the '1M' schedule for h/w ≥ 1 (Infinity dynamic_resolution.ratio2hws; data, spec §2.1).
# The transposed ratios (w > h) are keyed int(1000/r)/1000 and use (w, h).
_GRIDS_1M: dict[float, tuple[Grid, ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)),
}
_PN_NUM_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
# Infinity's VAE stride for its schedule tables: transformer grid × 16 = image size (both official tokenizers).
TOKEN_STRIDE = 16


def _all_templates() -> dict[float, tuple[Grid, ...]]:
    out = dict(_GRIDS_1M)
    for r, grids in _GRIDS_1M.items():
        if r != 1.0:
            out[int(1 / r * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return dict(sorted(out.items()))


GRIDS_1M_BY_TEMPLATE: dict[float, tuple[Grid, ...]] = _all_templates()
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(GRIDS_1M_BY_TEMPLATE)  # 15 values, 0.333 … 3.0


def nearest_h_div_w_template(h_div_w: float) -> float:
    """The aspect-ratio template (h/w) nearest to `h_div_w` (> 0), as Infinity picks it (first on ties)."""
    if not h_div_w > 0:
        raise ValueError(f"h_div_w must be > 0, got {h_div_w}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(t - h_div_w))


@dataclass(frozen=True)
class ScaleSchedule:
    """A resolved scale schedule: transformer grids, and VAE-latent grids (×patch) for the tokenizer side."""

    pn: str  # '0.06M' | '0.25M' | '0.60M' | '1M'
    h_div_w: float  # the aspect-ratio template used
    grids: tuple[Grid, ...]  # transformer token grids (h_k, w_k), k = 0..K-1
    patch: int = 1  # 2 with spatial patchify (VAE grid = 2 × transformer grid)
    vae_grids: tuple[Grid, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae_grids", tuple((h * self.patch, w * self.patch) for h, w in self.grids))

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def tokens_per_scale(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    @property
    def num_tokens(self) -> int:
        """L = Σ h·w (e.g. 10521 for 1:1 '1M', 521 for '0.06M')."""
        return sum(self.tokens_per_scale)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the generated image = last grid × 16."""
        h, w = self.grids[-1]
        return h * TOKEN_STRIDE, w * TOKEN_STRIDE


def get_schedule(pn: str, h_div_w: float = 1.0, patch: int = 1) -> ScaleSchedule:
    """Schedule for a pn name and an aspect ratio (snapped to the nearest template).

    Args:
        pn: one of '0.06M', '0.25M', '0.60M', '1M' (7, 10, 12, 13 scales).
        h_div_w: image height / width (> 0).
        patch: 1, or 2 for spatially patchified tokenizers (d14-f8-patchify, tiny).
    """
    if pn not in _PN_NUM_SCALES:
        raise ValueError(f"unknown schedule pn {pn!r}; choose from {SCHEDULE_PNS}")
    if patch not in (1, 2):
        raise ValueError(f"patch must be 1 or 2, got {patch}")
    t = nearest_h_div_w_template(h_div_w)
    return ScaleSchedule(pn=pn, h_div_w=t, grids=GRIDS_1M_BY_TEMPLATE[t][: _PN_NUM_SCALES[pn]], patch=patch)


def schedule_for(preset_or_pn: str, h_div_w: float = 1.0) -> ScaleSchedule:
    """Schedule for a tokenizer preset (its `default_pn`, its patch) or a bare pn name (patch 1).

    `schedule_for('tiny')` → 1:1 '0.06M': grids 1,2,4,6,8,12,16, VAE grids 2..32 (HR 256² at f8).
    """
    if preset_or_pn in TOKENIZER_PRESETS:
        cfg = TOKENIZER_PRESETS[preset_or_pn]
        return get_schedule(cfg.default_pn, h_div_w, cfg.patch)
    if preset_or_pn in _PN_NUM_SCALES:
        return get_schedule(preset_or_pn, h_div_w, 1)
    raise ValueError(f"{preset_or_pn!r} is neither a tokenizer preset {sorted(TOKENIZER_PRESETS)} nor a pn {SCHEDULE_PNS}")


def k_t_for(preset: str) -> int:
    """K_t of a tokenizer preset: how many leading scales the transformation network supplies (tiny 4, else 7)."""
    return tokenizer_config(preset).k_t


def rope_grid(h_div_w: float = 1.0) -> Grid:
    """Last grid of the '1M' schedule of the template: 2-D RoPE positions of every pn are normalised to it (§1.6)."""
    return GRIDS_1M_BY_TEMPLATE[nearest_h_div_w_template(h_div_w)][-1]


def scale_loss_weights(grids: Sequence[Grid]) -> torch.Tensor:
    """Per-token loss weights (L,) of Infinity's `reweight_loss_by_scale`: ∝ √(h_K·w_K)/√(h·w), normalised to sum 1."""
    hK, wK = grids[-1]
    w = torch.cat([torch.full((h * ww,), (hK * wK) ** 0.5 / (h * ww) ** 0.5) for h, ww in grids])
    return w / w.sum()


# ---------------------------------------------------------------------------------------------------------------------
# Tensor helpers
# ---------------------------------------------------------------------------------------------------------------------


def resize(x: torch.Tensor, size: Grid, mode: str) -> torch.Tensor:
    """Resize (B, C, h, w) to `size` with 'area' or 'trilinear'/'bilinear' (align_corners=False).

    'trilinear' is the official name: Infinity interpolates (B, d, 1, h, w) with a time axis of 1, which is exactly
    bilinear on (B, d, h, w). A same-size call returns x itself (no numerical change).
    """
    if x.dim() != 4:
        raise ValueError(f"resize expects (B, C, h, w), got shape {tuple(x.shape)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    if mode in ("trilinear", "bilinear"):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"resize: unknown mode {mode!r} (use 'area', 'trilinear' or 'bilinear')")


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, d, H, W) → (B, d·p², H/p, W/p); channel c·p² + p·i + j holds sub-pixel (i, j) of channel c."""
    if p == 1:
        return x
    if x.shape[-1] % p or x.shape[-2] % p:
        raise ValueError(f"patchify: spatial size {tuple(x.shape[-2:])} not divisible by {p}")
    return F.pixel_unshuffle(x, p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, d·p², h, w) → (B, d, p·h, p·w)."""
    return x if p == 1 else F.pixel_shuffle(x, p)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h·w, C), row-major token order."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h·w, C) → (B, C, h, w)."""
    if x.shape[1] != h * w:
        raise ValueError(f"from_tokens: {x.shape[1]} tokens do not fill a {h}×{w} grid")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def split_tokens(x: torch.Tensor, grids: Sequence[Grid]) -> list[torch.Tensor]:
    """(B, Σ h·w, C) → list of (B, C, h, w) per scale (e.g. sampled bits → per-scale bit maps)."""
    sizes = [h * w for h, w in grids]
    if x.shape[1] != sum(sizes):
        raise ValueError(f"split_tokens: got {x.shape[1]} tokens, grids need {sum(sizes)}")
    return [from_tokens(t, h, w) for t, (h, w) in zip(x.split(sizes, dim=1), grids, strict=True)]


def sum_codes(codes: Sequence[torch.Tensor], size: Grid, up: str = "trilinear") -> torch.Tensor:
    """f̂ = Σ_k up(code_k → size): the accumulated latent the decoder turns into an image. Returns (B, d, H, W)."""
    out = None
    for c in codes:
        u = resize(c, size, up)
        out = u if out is None else out + u
    if out is None:
        raise ValueError("sum_codes: empty code list")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Algorithm 1 (multi-scale residual decomposition) and Algorithm 2 (cascaded GT modification)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Decomposition:
    """Result of `decompose` / `cascade_modify`; lists are indexed by scale k = 0..K-1.

    residuals[k]: (B, d, h_k, w_k) float, the un-quantised residual R_k = down(z − F_{k−1}) (stage-1 MSE target), or
                  the given prediction for the first K_t scales of Alg. 2.
    bits[k]:      (B, d, h_k, w_k) int64 {0,1}, bit labels of BSQ(residuals[k]) (clean, never flipped).
    codes[k]:     (B, d, h_k, w_k) float ±1/√d, the code that entered the cascade (flipped if BSC flipped it).
    inputs[k]:    (B, d, h_{k+1}, w_{k+1}), k = 0..K−2: F̃_k = next(F_k → grid k+1), the transformer input of scale k+1.
    f_hat:        (B, d, H, W), F_K = Σ_k up(codes[k]), the decoder input.
    """

    residuals: list[torch.Tensor]
    bits: list[torch.Tensor]
    codes: list[torch.Tensor]
    inputs: list[torch.Tensor]
    f_hat: torch.Tensor


def decompose(
    z: torch.Tensor,
    vae_grids: Sequence[Grid],
    *,
    down: str = "area",
    up: str = "trilinear",
    next_mode: str | None = None,
    prefix: Sequence[torch.Tensor] | None = None,
    flip_layers: int = 0,
    flip_strength: float = 0.0,
    generator: torch.Generator | None = None,
) -> Decomposition:
    """Algorithm 1: decompose a VAE latent into K quantised residual scales (+ optional BSC flips and LR prefix).

    For k = 0..K−1:  R_k = down(z − F_{k−1}, grid_k) (no resize at the full-size last scale),
    code_k, bits_k = BSQ(R_k);  F_k = F_{k−1} + up(code_k, (H, W));  input_k = next_mode(F_k, grid_{k+1}).

    Args:
        z: (B, d, H, W) float raw encoder features (`Tokenizer.encode_raw`); (H, W) must equal vae_grids[-1].
        vae_grids: VAE-latent grids (h_k, w_k), increasing, e.g. `ScaleSchedule.vae_grids`.
        down: residual down-sampling, 'area' (official).
        up: code up-sampling into the accumulator, 'trilinear' (official) or 'area'.
        next_mode: how F_k is resized to the next scale's input; default = `up` ('trilinear': Infinity training and
            inference, NSARM training). NSARM's released inference uses 'area' (spec §5.4).
        prefix: Alg. 2 only: residual predictions for the first len(prefix) scales (B, d, h_k, w_k); they replace
            R_k and are BSQ-quantised with a straight-through gradient, so the loss can reach their producer.
        flip_layers: Bitwise Self-Correction: scales k < flip_layers get their bits flipped with a probability drawn
            per scale by `bsc_flip_prob(flip_strength)`; the flipped code enters F_k ("requant"), so later residuals
            and labels correct the corruption, while bits[k] stays the clean label. Official: 13 and 0.3.
        generator: torch.Generator (CPU) for the flips.

    Returns:
        A `Decomposition`.
    """
    if z.dim() != 4:
        raise ValueError(f"decompose: z must be (B, d, H, W), got shape {tuple(z.shape)}")
    full = tuple(z.shape[-2:])
    if not vae_grids or tuple(vae_grids[-1]) != full:
        raise ValueError(f"decompose: last grid {tuple(vae_grids[-1]) if vae_grids else None} must equal latent {full}")
    prefix = list(prefix or [])
    if len(prefix) > len(vae_grids):
        raise ValueError(f"decompose: {len(prefix)} prefix residuals for {len(vae_grids)} scales")
    next_mode = next_mode or up
    B, d = z.shape[:2]

    residuals, bits_all, codes_all, inputs = [], [], [], []
    f_k = torch.zeros_like(z)
    for k, (h, w) in enumerate(vae_grids):
        if k < len(prefix):
            r = prefix[k]
            if tuple(r.shape) != (B, d, h, w):
                raise ValueError(f"decompose: prefix[{k}] has shape {tuple(r.shape)}, expected {(B, d, h, w)}")
        else:
            r = resize(z - f_k, (h, w), down)
        code, bits = bsq_quantize(r)
        if k < flip_layers and flip_strength > 0:
            p = bsc_flip_prob(flip_strength, generator)
            if p > 0:
                code = bits_to_codes(flip_bits(bits, p, generator), dtype=z.dtype)
        f_k = f_k + resize(code, full, up)
        residuals.append(r)
        bits_all.append(bits)
        codes_all.append(code)
        if k < len(vae_grids) - 1:
            inputs.append(resize(f_k, vae_grids[k + 1], next_mode))
    return Decomposition(residuals=residuals, bits=bits_all, codes=codes_all, inputs=inputs, f_hat=f_k)


def cascade_modify(
    z: torch.Tensor,
    vae_grids: Sequence[Grid],
    pred_residuals: Sequence[torch.Tensor],
    **kwargs,
) -> Decomposition:
    """Algorithm 2 (cascaded GT modification): targets of the HR latent given LR-derived first scales.

    Scales k < K_t = len(pred_residuals) use the transformation network's predictions (B, d, h_k, w_k) (BSQ-quantised,
    straight-through); every later scale k gets the modified target R_k = Q(down(z − F_{k−1})) where F_{k−1} is the
    cascade built from the predictions, i.e. the residual that steers the LR pathway back to the HR latent.
    With predictions equal to the true Alg. 1 residuals the result equals `decompose(z, vae_grids)`.
    `kwargs` are those of `decompose` (down, up, next_mode, flip_layers, flip_strength, generator).
    """
    return decompose(z, vae_grids, prefix=pred_residuals, **kwargs)


def transformer_inputs(dec: Decomposition, patch: int = 1) -> torch.Tensor:
    """Teacher-forcing inputs of scales 1..K−1: (B, L − h₀w₀, D), D = d·patch² (`x_BLC_wo_prefix`)."""
    return torch.cat([to_tokens(patchify(x, patch)) for x in dec.inputs], dim=1)


def bit_labels(dec: Decomposition, patch: int = 1) -> torch.Tensor:
    """Bit labels of all scales: (B, L, D) int64 {0,1}; token bit c·patch² + patch·i + j (pixel_unshuffle order)."""
    return torch.cat([to_tokens(patchify(b, patch)) for b in dec.bits], dim=1)
