"""Inference procedures (the model is passed in): Infinity text-to-image sampling and NSARM upscaling, tiled.

Letters: B images/tiles, d bits per VAE latent pixel, D = d·p² bits per token (p = 2 with patchify), (h, w) a
transformer grid, (H, W) the full VAE latent, T the native LR tile side, s = 4 the upscale factor.

    sr = upscale_images(model, [pil_or_tensor, ...], captions, text_encoder, UpscaleOptions(seed=1))
    img = generate(model, text, SamplingConfig(cfg_scale=3.0, tau=0.5), seed=0)

The scale loop (`sample_latent`, spec §4 and §5.4): every scale runs the transformer with a KV cache; logits are
divided by tau, CFG is applied on logits (cond/uncond halves of one batch), top-k/top-p filtered and sampled per
bit with one seeded torch.Generator per image (so results do not depend on the batch size). The first K_t scales
may be supplied as codes (NSARM: quantised transformation-net outputs); their sampled bits are discarded but still
drawn, which keeps the RNG stream identical to the release. The accumulated latent f̂ is resized to the next
scale with `next_mode` ('area' in the NSARM release, 'trilinear' in Infinity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nsarm.bits import bits_to_codes, bsq_quantize
from nsarm.scales import from_tokens, get_schedule, patchify, resize, rope_grid, to_tokens, unpatchify
from nsarm.tiling import colour_fix, quantize_like_pil, tiled_upscale
from nsarm.transformer import PackedText


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling knobs; defaults = the NSARM release (scripts/infer.sh + hard-coded top_p)."""

    cfg_scale: float = 1.0  # classifier-free guidance on logits; 1 = no unconditional branch
    tau: float | tuple[float, ...] = 0.5  # temperature, one value or one per scale
    top_k: int = 0  # 0 = off (the release's 900 is clipped to 2 classes: a no-op)
    top_p: float = 0.97
    next_mode: str = "area"  # next-scale input interpolation: 'area' (NSARM release) or 'trilinear' (Infinity)
    up_mode: str = "trilinear"  # code up-sampling into f̂ (tokenizer z_up)
    bf16: bool = True  # autocast the transformer to bf16 on CUDA (fp32 on CPU regardless)


def filter_logits(logits_NV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering, as the reference: entries outside are set to -inf.

    top-p sorts ascending and drops the entries whose cumulative probability is <= 1 - top_p, always keeping the
    most likely one.
    """
    logits_NV = logits_NV.clone()
    V = logits_NV.shape[-1]
    if 0 < top_k < V:
        kth = logits_NV.topk(top_k, dim=-1).values[..., -1:]
        logits_NV = logits_NV.masked_fill(logits_NV < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, idx = logits_NV.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits_NV = logits_NV.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits_NV


def apply_cfg(logits_2BlV: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """cfg·cond + (1 − cfg)·uncond on a batch laid out [cond; uncond]."""
    B = logits_2BlV.shape[0] // 2
    return cfg_scale * logits_2BlV[:B] + (1 - cfg_scale) * logits_2BlV[B:]


def sample_bits(
    logits_BlD2: torch.Tensor, generators: Sequence[torch.Generator | None], top_k: int = 0, top_p: float = 0.0
) -> torch.Tensor:
    """Sample one bit per (token, bit) from (B, l, D, 2) logits; image b uses generators[b]. Returns (B, l, D) int64."""
    B, n, D, _ = logits_BlD2.shape
    probs = filter_logits(logits_BlD2.float().reshape(B, n * D, 2), top_k, top_p).softmax(dim=-1)
    out = [torch.multinomial(probs[b], 1, replacement=True, generator=generators[b]) for b in range(B)]
    return torch.stack(out).view(B, n, D)


def _tau(sampling: SamplingConfig, si: int) -> float:
    return sampling.tau if isinstance(sampling.tau, (int, float)) else sampling.tau[si]


@torch.no_grad()
def sample_latent(
    transformer,
    text: PackedText,
    grids: Sequence[tuple[int, int]],
    patch: int,
    codebook_dim: int,
    sampling: SamplingConfig,
    generators: Sequence[torch.Generator | None],
    prefix_codes: Sequence[torch.Tensor] = (),
    trace: dict | None = None,
) -> torch.Tensor:
    """The autoregressive scale loop. Returns f̂ (B, d, H, W), the decoder input.

    Args:
        text: PackedText of the B captions.
        grids: transformer grids (h, w); VAE grids are patch × these.
        prefix_codes: codes (B, d, patch·h_k, patch·w_k) for the first K scales (NSARM); () for text-to-image.
        trace: if a dict is given, it receives per-scale lists 'inputs' (B, h·w, D) of scales >= 1, 'logits'
            (B, h·w, 2D) before tau/CFG (cond half) and 'bits' (B, h·w, D) — for tests and debugging.
    """
    cfg = sampling.cfg_scale
    B = int(text.lens_B.shape[0])
    device = next(transformer.parameters()).device
    if cfg != 1:  # one batch [cond; uncond]: the uncond half uses the learned cfg_uncond rows
        text = PackedText(torch.cat([text.features_NT, text.features_NT]), torch.cat([text.lens_B, text.lens_B]))
        uncond = torch.arange(2 * B) >= B
    else:
        uncond = None
    vae_grids = [(h * patch, w * patch) for h, w in grids]
    full = vae_grids[-1]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and sampling.bf16)
    with autocast:
        cond = transformer.condition(PackedText(text.features_NT.to(device), text.lens_B), uncond)
    cache = transformer.new_cache()
    full_hw = rope_grid(full[0] / full[1]) if len(grids) else None
    f_hat = torch.zeros(B, codebook_dim, *full, device=device)
    x_Bld = None
    for si, (h, w) in enumerate(grids):
        with autocast:
            logits = transformer.forward_scale(cond, x_Bld, si, grids, cache, full_hw).float()
        if trace is not None:
            trace.setdefault("logits", []).append(logits[:B])
            if si > 0:
                trace.setdefault("inputs", []).append(x_Bld[:B])
        logits = logits / _tau(sampling, si)
        if cfg != 1:
            logits = apply_cfg(logits, cfg)
        bits_BlD = sample_bits(logits.view(B, h * w, -1, 2), generators, sampling.top_k, sampling.top_p)
        if trace is not None:
            trace.setdefault("bits", []).append(bits_BlD)
        if si < len(prefix_codes):
            code = prefix_codes[si].to(device=device, dtype=f_hat.dtype)  # NSARM: the LR pathway decides these scales
        else:
            code = bits_to_codes(unpatchify(from_tokens(bits_BlD, h, w), patch))  # (B, d, vh, vw)
        f_hat = f_hat + resize(code, full, sampling.up_mode)  # same size at the last scale: added as is
        if si + 1 < len(grids):
            x_Bld = to_tokens(patchify(resize(f_hat, vae_grids[si + 1], sampling.next_mode), patch))
            if cfg != 1:
                x_Bld = torch.cat([x_Bld, x_Bld])
    return f_hat


def _generators(seed: int | None, n: int, device) -> list[torch.Generator | None]:
    if seed is None:
        return [None] * n
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


@torch.no_grad()
def generate(model, text: PackedText, sampling: SamplingConfig | None = None, seed: int | None = 0, h_div_w: float = 1.0):
    """Infinity text-to-image: B captions -> images (B, 3, H, W) in [0, 1] at the model's schedule size."""
    cfg = model.cfg
    sampling = sampling or SamplingConfig(cfg_scale=cfg.cfg_scale, tau=cfg.tau, top_p=cfg.top_p, next_mode=cfg.next_mode)
    tok = model.tokenizer
    schedule = get_schedule(cfg.pn, h_div_w, tok.cfg.patch)
    device = next(model.parameters()).device
    gens = _generators(seed, int(text.lens_B.shape[0]), device)
    f_hat = sample_latent(model.transformer, text, schedule.grids, tok.cfg.patch, tok.cfg.codebook_dim, sampling, gens)
    return quantize_like_pil((tok.decode(f_hat) + 1) / 2)


# ------------------------------------------------------------------------------------------------ NSARM upscaling
@dataclass(frozen=True)
class UpscaleOptions:
    """Upscaling knobs; sampling defaults come from the model config (NSARM release: cfg 1, tau 0.5, area)."""

    sampling: SamplingConfig | None = None
    seed: int | None = 1  # the release seeds 1; tile k of an image uses seed + k
    overlap: int | None = None  # LR pixels shared by neighbouring tiles; default T/4
    batch_size: int = 4  # tiles per forward pass
    colour_fix: bool = True  # AdaIN + wavelet against the bicubic-upscaled LR


@torch.no_grad()
def upscale_tiles(model, lr_B3TT: torch.Tensor, text: PackedText, sampling: SamplingConfig, generators) -> torch.Tensor:
    """Native-size NSARM: LR tiles (B, 3, T, T) in [0, 1] -> SR (B, 3, sT, sT) in [0, 1] (8-bit grid, no colour fix)."""
    cfg, tok = model.cfg, model.tokenizer
    if tok is None or model.map_transformer is None:
        raise ValueError(f"model {cfg.name!r} needs a tokenizer and a transformation network to upscale")
    T = cfg.lr_size
    if tuple(lr_B3TT.shape[1:]) != (3, T, T):
        raise ValueError(f"upscale_tiles expects LR tiles (B, 3, {T}, {T}), got {tuple(lr_B3TT.shape)}")
    device = next(model.parameters()).device
    z_lr = tok.encode_raw(lr_B3TT.to(device) * 2 - 1)  # raw features, not quantised (spec §5.4)
    prefix = [bsq_quantize(r.float())[0] for r in model.map_transformer(z_lr)]
    grids = get_schedule(cfg.pn, 1.0, tok.cfg.patch).grids
    f_hat = sample_latent(model.transformer, text, grids, tok.cfg.patch, tok.cfg.codebook_dim, sampling, generators, prefix)
    return quantize_like_pil((tok.decode(f_hat) + 1) / 2)  # the release writes uint8 (truncating) before colour fix


def _to_tensor(img) -> torch.Tensor:
    """PIL image / (3, h, w) float tensor in [0, 1] / (h, w, 3) uint8 array -> (3, h, w) float32 in [0, 1]."""
    import numpy as np

    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, h, w) in [0, 1], got shape {tuple(img.shape)}")
        return img.float()
    if hasattr(img, "convert"):  # PIL
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be (h, w, 3) uint8, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def bicubic_upscale(lr_3hw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """PIL bicubic resize (what the release's colour fix uses), on an 8-bit image; returns (3, H, W) in [0, 1]."""
    from PIL import Image

    arr = (lr_3hw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    up = Image.fromarray(arr).resize((size_hw[1], size_hw[0]), Image.BICUBIC)
    return _to_tensor(up)


def _select(text: PackedText, index: Sequence[int]) -> PackedText:
    starts = torch.cat([torch.zeros(1, dtype=torch.long), text.lens_B.cumsum(0)]).tolist()
    feats = [text.features_NT[starts[i] : starts[i + 1]] for i in index]
    return PackedText(torch.cat(feats), text.lens_B[list(index)])


@torch.no_grad()
def upscale_images(model, images: Sequence, text: PackedText, options: UpscaleOptions | None = None, progress=None):
    """Upscale images of any size by s (= 4) with overlapping native-size tiles, batched across all images.

    Args:
        images: PIL images, (3, h, w) float tensors in [0, 1] or (h, w, 3) uint8 arrays.
        text: PackedText with one caption per image (`TextEncoder.encode(captions)`).
        progress: optional callable(n_done_tiles, n_total_tiles).
    Returns:
        list of (3, s·h, s·w) float tensors in [0, 1] on an 8-bit grid.
    """
    options = options or UpscaleOptions()
    cfg = model.cfg
    sampling = options.sampling or SamplingConfig(cfg_scale=cfg.cfg_scale, tau=cfg.tau, top_p=cfg.top_p, next_mode=cfg.next_mode)
    T = cfg.lr_size
    s = get_schedule(cfg.pn, 1.0, model.tokenizer.cfg.patch).image_size[0] // T
    overlap = T // 4 if options.overlap is None else options.overlap
    if int(text.lens_B.shape[0]) != len(images):
        raise ValueError(f"{len(images)} images but {int(text.lens_B.shape[0])} captions")
    device = next(model.parameters()).device
    lrs = [_to_tensor(im) for im in images]

    def tile_fn(tiles_B3TT, image_index, tile_index):
        gens = [torch.Generator(device=device).manual_seed(options.seed + k) if options.seed is not None else None for k in tile_index]
        return upscale_tiles(model, tiles_B3TT, _select(text, image_index), sampling, gens)

    results = tiled_upscale(lrs, tile_fn, T, s, overlap, options.batch_size, progress)
    if options.colour_fix:
        results = [colour_fix(sr[None], bicubic_upscale(lr, tuple(sr.shape[-2:]))[None])[0] for sr, lr in zip(results, lrs, strict=True)]
    return results


# ------------------------------------------------------------------------------------------------ uint8 arrays in and out
# What `nsarm upscale`, `nsarm eval`, the MLflow model and the held-out evaluation call: PNG-ready uint8 arrays.
DEFAULT_CAPTION = "A high-quality image with harmonious colors and rich details."  # the release's alternative prompt


def upscale_options(cfg, seed: int | None = 1, cfg_scale: float | None = None, tau: float | None = None,
                    overlap: int | None = None, batch_size: int = 4, colour_fix: bool = True):
    """`nsarm upscale`'s UpscaleOptions: sampling from the model config unless `cfg_scale` / `tau` are given."""
    sampling = SamplingConfig(cfg_scale=cfg.cfg_scale if cfg_scale is None else cfg_scale,
                              tau=cfg.tau if tau is None else tau, top_p=cfg.top_p, next_mode=cfg.next_mode)
    return UpscaleOptions(sampling=sampling, seed=seed, overlap=overlap, batch_size=batch_size, colour_fix=colour_fix)


def to_uint8(sr_3HW):
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 numpy array, as `nsarm upscale` writes its PNGs."""
    return (sr_3HW.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def upscale_arrays(model, encoder, lr_images, *, seed: int | None = 1, cfg_scale: float | None = None,
                   tau: float | None = None, batch_size: int = 4, caption: str | None = None) -> list:
    """uint8 (h, w, 3) arrays -> uint8 (4h, 4w, 3) arrays; same pixels as `nsarm upscale` with these settings."""
    options = upscale_options(model.cfg, seed, cfg_scale, tau, batch_size=batch_size)
    with torch.no_grad():
        srs = upscale_images(model, list(lr_images), encoder.encode([caption or DEFAULT_CAPTION] * len(lr_images)),
                             options)
    return [to_uint8(sr) for sr in srs]


def make_upscale_fn(model, encoder, seed: int = 0, caption: str = ""):
    """`upscale_fn(lr_images, captions=None) -> list of uint8 (4h, 4w, 3)` of a loaded model and text encoder: the
    model's own sampling settings, tile seeds from `seed`.

    Args:
        lr_images (of the returned fn): uint8 RGB arrays (h, w, 3), any size (tiled).
        captions: one per image (None or "" entries use `caption`).
    """
    def upscale_fn(lr_images, captions=None):
        caps = [c if c else caption for c in (captions or [None] * len(lr_images))]
        with torch.no_grad():
            srs = upscale_images(model, list(lr_images), encoder.encode(caps), UpscaleOptions(seed=seed))
        return [to_uint8(sr) for sr in srs]

    return upscale_fn
