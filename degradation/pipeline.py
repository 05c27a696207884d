"""Real-ESRGAN second-order degradation, batched over images with different random parameters per sample.

    hr (B, 3, H, W) ─ USM ─ blur1 ─ resize1 ─ noise1 ─ JPEG1 ─ [blur2] ─ resize2 ─ noise2 ─┬ resize+sinc → JPEG2 ┬─ lr
                                                                                        └ JPEG2 → resize+sinc ┘
    lr (B, 3, H/4, W/4) uint8
(`first_jpeg=False` drops JPEG1 and `second_order=False` the blur2/resize2/noise2 block: NSARM add_deg.py's 'light'.)

Determinism: a sample's parameters are drawn up front by `sample_params(cfg, sample_seed(dataset_seed, key), …)`
from its own numpy Generator, and its noise fields from torch Generators seeded by recorded seeds, so nothing
depends on the batch: the LR of a sample is byte-identical for any batch size, order or worker count (same
hardware and torch build; across CPU ISAs or on GPU, float kernels may differ by an ulp and a few pixels by 1/255).
The parameter dict is JSON-able; `replay(hr, params)` re-applies it and reproduces the LR bytes.

Batching: steps on same-size images (USM and blur1 on the HR batch; the final sinc at H/4) run as one grouped
convolution; the random resizes give every sample its own size, so the middle of the pipeline runs on a list of
(1, 3, h_i, w_i) tensors: noise is per-sample (its own generator), JPEG concatenates the 8×8 blocks of all images
into one transform (degradation/jpeg.py), blur2 groups equal sizes. Nothing pads images to a common canvas, so the
arithmetic per sample is exactly that of a one-image run (what the determinism and BasicSR tests check).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from degradation import ops
from degradation.config import DegradationConfig
from degradation.jpeg import jpeg_roundtrip
from degradation.kernels import kernel_from_params, sample_blur_params, sample_final_sinc_params

PARAMS_VERSION = 1


def sample_seed(dataset_seed: int, key: str) -> int:
    """63-bit seed of one sample from (dataset seed, sample key), stable across processes and machines."""
    digest = hashlib.sha256(f"nsarm-degradation:{int(dataset_seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def min_hr_side(cfg: DegradationConfig) -> int:
    """Smallest square HR side for which every intermediate image stays larger than the reflect padding of the
    blurs (BasicSR's filter2D needs size > K//2) and the HR is a multiple of the scale."""
    pad = cfg.blur_kernel_size // 2
    side = cfg.scale
    while not (side * cfg.resize_range[0] // 1 > pad and int(side / cfg.scale * cfg.resize_range2[0]) > pad
               and side > (cfg.usm_radius | 1) // 2):
        side += cfg.scale
    return side


def _resize_params(rng: np.random.Generator, prob, scale_range, modes) -> dict:
    kind = ("up", "down", "keep")[int(rng.choice(3, p=np.asarray(prob, dtype=np.float64) / sum(prob)))]
    scale = {"up": lambda: rng.uniform(1, scale_range[1]), "down": lambda: rng.uniform(scale_range[0], 1),
             "keep": lambda: 1.0}[kind]()
    return {"updown": kind, "scale": float(scale), "mode": str(modes[int(rng.integers(len(modes)))])}


def _noise_params(rng: np.random.Generator, gaussian_prob, sigma_range, poisson_range, gray_prob) -> dict:
    if rng.uniform() < gaussian_prob:
        p = {"kind": "gaussian", "sigma": float(rng.uniform(*sigma_range))}
    else:
        p = {"kind": "poisson", "scale": float(rng.uniform(*poisson_range))}
    p["gray"] = bool(rng.uniform() < gray_prob)
    p["seed"] = int(rng.integers(2**63 - 1))  # seeds the torch Generator of this noise field
    return p


def sample_params(cfg: DegradationConfig, seed: int, hr_hw: tuple[int, int]) -> dict:
    """Draw every random choice of one sample's degradation. Returns a self-contained JSON-able dict (replay needs
    nothing else): sizes, kernels (as shape parameters), resize scale/mode, noise kind/level/seed, JPEG qualities,
    final-stage order and sinc."""
    rng = np.random.default_rng(seed)
    h, w = hr_hw
    blur1 = sample_blur_params(rng, cfg.kernel_range, cfg.kernel_list, cfg.kernel_prob, cfg.sinc_prob,
                               cfg.blur_sigma, cfg.betag_range, cfg.betap_range)
    blur2 = sample_blur_params(rng, cfg.kernel_range, cfg.kernel_list2, cfg.kernel_prob2, cfg.sinc_prob2,
                               cfg.blur_sigma2, cfg.betag_range2, cfg.betap_range2)
    final_sinc = sample_final_sinc_params(rng, cfg.final_sinc_prob, cfg.kernel_range, cfg.final_sinc_omega)
    resize1 = _resize_params(rng, cfg.resize_prob, cfg.resize_range, cfg.resize_modes)
    noise1 = _noise_params(rng, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range,
                           cfg.gray_noise_prob)
    jpeg1 = float(rng.uniform(*cfg.jpeg_range))
    use_blur2 = bool(rng.uniform() < cfg.second_blur_prob)
    resize2 = _resize_params(rng, cfg.resize_prob2, cfg.resize_range2, cfg.resize_modes)
    noise2 = _noise_params(rng, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
                           cfg.gray_noise_prob2)
    resize_back_first = bool(rng.uniform() < cfg.resize_back_first_prob)
    final_mode = str(cfg.resize_modes[int(rng.integers(len(cfg.resize_modes)))])
    jpeg2 = float(rng.uniform(*cfg.jpeg_range2))
    # Every draw above happens whatever the config switches off, so a preset's other draws do not shift; a step
    # that is off is recorded as None (jpeg1; blur2/resize2/noise2 without a second order).
    resize2["size"] = [int(h / cfg.scale * resize2["scale"]), int(w / cfg.scale * resize2["scale"])]
    second = cfg.second_order
    return {
        "version": PARAMS_VERSION, "seed": int(seed), "hr_size": [int(h), int(w)], "scale": cfg.scale,
        "kernel_pad": cfg.blur_kernel_size,
        "usm": {"radius": cfg.usm_radius, "weight": cfg.usm_weight, "threshold": cfg.usm_threshold}
        if cfg.gt_usm else None,
        "blur1": blur1, "resize1": resize1, "noise1": noise1, "jpeg1": jpeg1 if cfg.first_jpeg else None,
        "blur2": blur2 if use_blur2 and second else None,
        "resize2": resize2 if second else None,
        "noise2": noise2 if second else None,
        "final": {"resize_back_first": resize_back_first, "mode": final_mode, "sinc": final_sinc, "jpeg": jpeg2},
    }


def _kernels(params: list[dict], name: str, device) -> torch.Tensor:
    """Float32 (B, K, K) kernels of one blur step (float64 maths, cast once, as BasicSR's FloatTensor)."""
    pad = params[0]["kernel_pad"]
    return torch.stack([torch.from_numpy(kernel_from_params(p[name], pad)).float() for p in params]).to(device)


def _generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _blur_by_size(xs: list[torch.Tensor], kernels: list[torch.Tensor]) -> list[torch.Tensor]:
    """filter2d on a ragged list: one grouped conv per group of equal-size images."""
    out: list[torch.Tensor | None] = [None] * len(xs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    for idx in groups.values():
        ys = ops.filter2d_each(torch.cat([xs[i] for i in idx]), torch.stack([kernels[i] for i in idx]))
        for i, y in zip(idx, ys, strict=True):
            out[i] = y
    return out  # type: ignore[return-value]


def _final(xs: list[torch.Tensor], params: list[dict], lr_hw: tuple[int, int]) -> list[torch.Tensor]:
    """[resize to HR/scale + sinc] then JPEG, or JPEG then [resize + sinc], per sample as recorded."""
    device = xs[0].device
    first = [i for i, p in enumerate(params) if p["final"]["resize_back_first"]]
    later = [i for i, p in enumerate(params) if not p["final"]["resize_back_first"]]
    xs = list(xs)
    jpeg_later = jpeg_roundtrip([torch.clamp(xs[i], 0, 1) for i in later], [params[i]["final"]["jpeg"] for i in later])
    for i, y in zip(later, jpeg_later, strict=True):
        xs[i] = y
    xs = [ops.resize(x, p["final"]["mode"], size=lr_hw) for x, p in zip(xs, params, strict=True)]
    sinc_idx = [i for i, p in enumerate(params) if p["final"]["sinc"] is not None]  # a pulse kernel is the identity
    if sinc_idx:
        sub = [params[i] for i in sinc_idx]
        k = torch.stack([torch.from_numpy(kernel_from_params(p["final"]["sinc"], p["kernel_pad"])).float()
                         for p in sub]).to(device)
        for i, y in zip(sinc_idx, ops.filter2d_each(torch.cat([xs[i] for i in sinc_idx]), k), strict=True):
            xs[i] = y
    jpeg_first = jpeg_roundtrip([torch.clamp(xs[i], 0, 1) for i in first], [params[i]["final"]["jpeg"] for i in first])
    for i, y in zip(first, jpeg_first, strict=True):
        xs[i] = y
    return xs


def _second_order(xs: list[torch.Tensor], params: list[dict]) -> list[torch.Tensor]:
    """Optional blur, resize relative to the final size, noise (per sample, as recorded)."""
    device = xs[0].device
    blur_idx = [i for i, p in enumerate(params) if p["blur2"] is not None]
    if blur_idx:
        k2 = _kernels([params[i] for i in blur_idx], "blur2", device)
        blurred = _blur_by_size([xs[i] for i in blur_idx], list(k2))
        for i, y in zip(blur_idx, blurred, strict=True):
            xs[i] = y
    xs = [ops.resize(xi, p["resize2"]["mode"], size=tuple(p["resize2"]["size"])) for xi, p in zip(xs, params, strict=True)]
    return [ops.add_noise(xi, p["noise2"], _generator(p["noise2"]["seed"], device)) for xi, p in zip(xs, params, strict=True)]


@torch.no_grad()
def degrade_batch(hr_B3HW: torch.Tensor, params: list[dict]) -> torch.Tensor:
    """Apply recorded parameter sets to a batch of same-size HR images.

    Args:
        hr_B3HW: uint8 in [0, 255] or float in [0, 1], RGB; H, W divisible by the scale.
        params: one dict per image from `sample_params` (or read back from `{key}.deg.json`).
    Returns:
        lr_B3hw: uint8, (B, 3, H/scale, W/scale).
    """
    b, _, h, w = hr_B3HW.shape
    if len(params) != b:
        raise ValueError(f"degrade_batch: {b} images but {len(params)} parameter sets")
    for p in params:
        if list(p["hr_size"]) != [h, w]:
            raise ValueError(f"degrade_batch: parameters for HR {p['hr_size']} applied to a {h}x{w} image")
    x = hr_B3HW.float() / 255.0 if hr_B3HW.dtype == torch.uint8 else hr_B3HW.float()
    device = x.device
    usm = params[0]["usm"]
    if usm is not None:  # the same for every sample of a config
        x = ops.usm_sharpen(x, usm["radius"], usm["weight"], usm["threshold"])
    # ---- first order: blur (batched, per-sample kernels), resize, noise, JPEG
    xs = ops.filter2d_each(x, _kernels(params, "blur1", device))
    xs = [ops.resize(xi, p["resize1"]["mode"], scale=p["resize1"]["scale"]) for xi, p in zip(xs, params, strict=True)]
    xs = [ops.add_noise(xi, p["noise1"], _generator(p["noise1"]["seed"], device)) for xi, p in zip(xs, params, strict=True)]
    if params[0]["jpeg1"] is not None:  # on/off is the same for every sample of a config
        xs = jpeg_roundtrip([torch.clamp(xi, 0, 1) for xi in xs], [p["jpeg1"] for p in params])
    if params[0]["resize2"] is not None:
        xs = _second_order(xs, params)
    # ---- final: resize to exactly HR/scale + sinc, JPEG (in the recorded order), then 8-bit
    scale = params[0]["scale"]
    xs = _final(xs, params, (h // scale, w // scale))
    out = torch.cat(xs)
    return torch.clamp((out * 255.0).round(), 0, 255).to(torch.uint8)


def degrade(hr_B3HW: torch.Tensor, keys: list[str], cfg: DegradationConfig, dataset_seed: int
            ) -> tuple[torch.Tensor, list[dict]]:
    """Sample each image's parameters from (dataset_seed, key) and degrade the batch.

    Returns:
        (lr_B3hw uint8 (B, 3, H/scale, W/scale), the parameter dicts to store as `{key}.deg.json`).
    """
    h, w = hr_B3HW.shape[-2:]
    params = [sample_params(cfg, sample_seed(dataset_seed, k), (h, w)) for k in keys]
    return degrade_batch(hr_B3HW, params), params


def replay(hr_3HW: torch.Tensor, params: dict) -> torch.Tensor:
    """Re-apply one recorded parameter set (e.g. read from `{key}.deg.json`); returns (3, H/scale, W/scale) uint8."""
    return degrade_batch(hr_3HW.unsqueeze(0), [params])[0]
