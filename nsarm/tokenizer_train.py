"""Warm-up training of a small BSQ-VAE tokenizer (the `tiny` preset) on a folder of photos, on CPU, in minutes.

The real presets always load the official weights; this exists so the demo and CPU tests have a tokenizer that
reconstructs images without any download. Loss = λ₁·L1 + λ₂·MSE on the reconstruction through the multi-scale BSQ
path (straight-through), plus a commitment term pulling each normalised residual towards its code.

    python -m nsarm.tokenizer_train --photos DIR --out runs/tokenizer/tiny.safetensors --steps 400
    # → tiny.safetensors + tiny.json (config, train config, held-out metrics); load with
    #   nsarm.tokenizer.load_tokenizer("runs/tokenizer/tiny.safetensors")

Public API:
    TokenizerTrainConfig             frozen dataclass of the optimisation settings
    load_photos(folder) -> list[(3, H, W) float in [-1, 1]]
    training_grids(latent_hw, preset) -> VAE grids used at a latent size (the preset's schedule, cut at the latent)
    reconstruction_mse(tok, images, size) -> mean MSE of centre crops resized to size² ([-1, 1] scale)
    train_tokenizer(cfg, images, held_out=None, tok=None) -> (Tokenizer, stats dict)
    main(argv) — the CLI above
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.progress import eta_seconds, progress_line
from nsarm.config import TOKENIZER_PRESETS
from nsarm.scales import schedule_for
from nsarm.tokenizer import Tokenizer, build_tokenizer, save_tokenizer

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # a progress line at least this often, whatever log_every says

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GREY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as PIL's convert("L")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    preset: str = "tiny"
    steps: int = 400  # optimiser steps (a few minutes on 2 CPU cores at the defaults)
    batch_size: int = 8
    crop: int = 64  # training crop side (fully convolutional: the model is used at 64² LR and 256² HR)
    short_side: tuple[int, int] = (96, 320)  # photos are rescaled so their short side is in this range, then cropped
    lr: float = 2e-3  # Adam; betas as the official VAE trainer (0.9, 0.95)
    warmup_steps: int = 0  # linear lr warm-up, then cosine decay to final_lr_frac · lr
    final_lr_frac: float = 0.1
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    commit_weight: float = 0.25  # official commitment_loss_weight
    grey_prob: float = 0.0  # share of training crops turned grey (Y in all three channels): grey photos exist
    zero_init_residual: bool = False  # zero the last conv of every ResnetBlock (fresh models only): see _zero_init
    eval_size: int = 128  # held-out reconstruction is measured on centre crops resized to this side
    seed: int = 0
    max_seconds: float | None = None  # stop early when this wall-clock budget is spent
    device: str | None = None  # None: cuda when available, else cpu (batches are cropped on the CPU either way)
    log_every: int = 25  # a progress line (step, loss, samples/s, ETA) every N steps through this module's logger


def load_photos(folder: str | Path) -> list[torch.Tensor]:
    """All images in `folder` (sorted by name) as RGB float tensors (3, H, W) in [-1, 1]; grey images become RGB."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"load_photos: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for p in files:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        out.append(x.permute(2, 0, 1).float() / 127.5 - 1)
    return out


def training_grids(latent_hw: tuple[int, int], preset: str = "tiny") -> list[tuple[int, int]]:
    """The preset's square VAE grids that fit a (square) latent, ending at the latent size itself."""
    h, w = latent_hw
    ladder = schedule_for(preset if preset in TOKENIZER_PRESETS else "tiny").vae_grids  # custom configs: tiny's
    grids = [g for g in ladder if g[0] < h and g[1] < w]
    return grids + [(h, w)]


def _resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = short / min(h, w)
    size = (max(short, round(h * s)), max(short, round(w * s)))
    return F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _centre_square(img: torch.Tensor, size: int) -> torch.Tensor:
    img = _resize_short(img, size)
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top : top + size, left : left + size]


def _zero_init(tok: Tokenizer) -> None:
    """Zero the second conv of every ResnetBlock, so each block starts as its shortcut ("zero-γ" init, Goyal et
    al. 2017; Fixup). The fresh encoder/decoder then start as a shallow stack of the stride/up-sampling convs and
    the residual branches grow from zero: on a CPU budget of a few hundred steps this trains much faster."""
    from nsarm.tokenizer import ResnetBlock

    for m in tok.modules():
        if isinstance(m, ResnetBlock):
            nn.init.zeros_(m.conv2.conv.weight)
            nn.init.zeros_(m.conv2.conv.bias)


def _lr_factor(cfg: TokenizerTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to final_lr_frac: short runs still end with small steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))


def _random_batch(images: list[torch.Tensor], cfg: TokenizerTrainConfig, g: torch.Generator) -> torch.Tensor:
    crops = []
    for _ in range(cfg.batch_size):
        img = images[int(torch.randint(len(images), (1,), generator=g))]
        lo, hi = cfg.short_side
        img = _resize_short(img, int(torch.randint(max(lo, cfg.crop), hi + 1, (1,), generator=g)))
        h, w = img.shape[-2:]
        top = int(torch.randint(h - cfg.crop + 1, (1,), generator=g))
        left = int(torch.randint(w - cfg.crop + 1, (1,), generator=g))
        crop = img[:, top : top + cfg.crop, left : left + cfg.crop]
        if torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        if cfg.grey_prob and torch.rand((), generator=g) < cfg.grey_prob:
            crop = (GREY_WEIGHTS.view(3, 1, 1) * crop).sum(0, keepdim=True).expand(3, -1, -1)
        crops.append(crop)
    return torch.stack(crops)


@torch.no_grad()
def reconstruction_mse(tok: Tokenizer, images: list[torch.Tensor], size: int, preset: str | None = None) -> float:
    """Mean squared error (images in [-1, 1]) of encode → multi-scale BSQ → decode on centre crops of side `size`."""
    was_training = tok.training
    tok.eval()
    f = tok.cfg.downsample
    if size % f:
        raise ValueError(f"reconstruction_mse: size {size} is not a multiple of the VAE stride {f}")
    grids = training_grids((size // f, size // f), preset or tok.cfg.name)
    errs = []
    device = next(tok.parameters()).device
    for img in images:
        x = _centre_square(img, size)[None].to(device)
        recon = tok.decode(tok.encode_bits(x, grids).f_hat)
        errs.append(F.mse_loss(recon, x).item())
    tok.train(was_training)
    return sum(errs) / len(errs)


def train_tokenizer(
    cfg: TokenizerTrainConfig,
    images: list[torch.Tensor],
    held_out: list[torch.Tensor] | None = None,
    tok: Tokenizer | None = None,
) -> tuple[Tokenizer, dict]:
    """Fit a tokenizer on `images` ((3, H, W) in [-1, 1], each side ≥ cfg.crop after rescaling).

    Returns the trained tokenizer (eval mode, on the CPU) and stats: steps run, seconds, final loss and, with
    `held_out`, `mse_init` / `mse_final` (reconstruction_mse at cfg.eval_size) and their ratio `reduction`.
    """
    torch.manual_seed(cfg.seed)  # parameter init of a fresh model
    if tok is None:
        tok = build_tokenizer(cfg.preset)
        if cfg.zero_init_residual:
            _zero_init(tok)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    f = tok.cfg.downsample
    if cfg.crop % f:
        raise ValueError(f"TokenizerTrainConfig.crop={cfg.crop} must be a multiple of the VAE stride {f}")
    grids = training_grids((cfg.crop // f, cfg.crop // f), cfg.preset)
    stats: dict = {"steps": 0}
    if held_out:
        stats["mse_init"] = reconstruction_mse(tok, held_out, cfg.eval_size, cfg.preset)
    opt = torch.optim.Adam(tok.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s))
    tok.train()
    t0, logged_at = time.monotonic(), 0.0
    for step in range(cfg.steps):
        x = _random_batch(images, cfg, g).to(device)
        recon, dec = tok(x, grids)
        loss = cfg.l1_weight * F.l1_loss(recon, x) + cfg.mse_weight * F.mse_loss(recon, x)
        if cfg.commit_weight:
            # distance of each normalised residual from its (binary) code: keeps residuals near cube vertices
            commit = sum(F.mse_loss(F.normalize(r, dim=1), c.detach()) for r, c in zip(dec.residuals, dec.codes, strict=True))
            loss = loss + cfg.commit_weight * commit / len(dec.codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        sched.step()
        stats.update(steps=step + 1, loss=loss.item())
        elapsed = time.monotonic() - t0
        out_of_time = cfg.max_seconds is not None and elapsed > cfg.max_seconds
        # every log_every steps, and at least every LOG_EVERY_S seconds when steps are slow, and at the end
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or out_of_time or elapsed - logged_at > LOG_EVERY_S:
            logged_at = elapsed
            eta = eta_seconds(step + 1, cfg.steps, elapsed)
            if cfg.max_seconds is not None and eta is not None:  # the time budget ends it sooner
                eta = min(eta, max(cfg.max_seconds - elapsed, 0.0))
            log.info(progress_line("tokenizer warm-up", step + 1, cfg.steps, "steps", elapsed, eta=eta,
                                   rate=(step + 1) * cfg.batch_size / elapsed, rate_unit="samples/s",
                                   detail=f"loss {stats['loss']:.4f}" + (" (time budget spent)" if out_of_time else "")))
        if out_of_time:
            break
    stats["seconds"] = time.monotonic() - t0
    tok.eval()
    if held_out:
        stats["mse_final"] = reconstruction_mse(tok, held_out, cfg.eval_size, cfg.preset)
        stats["reduction"] = stats["mse_init"] / max(stats["mse_final"], 1e-12)
    return tok.cpu(), stats


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Warm-up training of the tiny BSQ-VAE tokenizer on a folder of photos")
    p.add_argument("--photos", required=True, help="folder of .png/.jpg photos")
    p.add_argument("--out", required=True, help="output weights path ending in .safetensors (config JSON beside)")
    p.add_argument("--steps", type=int, default=TokenizerTrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TokenizerTrainConfig.batch_size)
    p.add_argument("--crop", type=int, default=TokenizerTrainConfig.crop)
    p.add_argument("--lr", type=float, default=TokenizerTrainConfig.lr)
    p.add_argument("--held-out", type=int, default=2, help="last N photos (by name) kept out of training, for the MSE")
    p.add_argument("--eval-size", type=int, default=TokenizerTrainConfig.eval_size)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when available)")
    a = p.parse_args(argv)
    cfg = TokenizerTrainConfig(steps=a.steps, batch_size=a.batch_size, crop=a.crop, lr=a.lr, seed=a.seed,
                               eval_size=a.eval_size, max_seconds=a.max_seconds, device=a.device)
    photos = load_photos(a.photos)
    if len(photos) <= a.held_out:
        raise ValueError(f"--held-out {a.held_out} leaves no training photos out of {len(photos)}")
    train, held = (photos[: -a.held_out], photos[-a.held_out :]) if a.held_out else (photos, None)
    tok, stats = train_tokenizer(cfg, train, held)
    out = save_tokenizer(tok, a.out)
    meta = json.loads(out.with_suffix(".json").read_text())
    meta.update(train=asdict(cfg), metrics=stats)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    print(json.dumps({"out": str(out), **stats}, indent=2))
    return stats


if __name__ == "__main__":
    main()
