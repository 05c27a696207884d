"""Infinity-compatible BSQ-VAE tokenizer: CNN encoder/decoder + multi-scale binary spherical quantiser (spec §3).

Letters: B batch, H×W image size, d codebook_dim, (h, w) latent grids. Images are float (B, 3, H, W) in [-1, 1]
(`to_tensor * 2 - 1`); 5-D (B, 3, T, H, W) inputs are accepted and processed frame by frame. H and W must be
multiples of the VAE stride `cfg.downsample` (16 for d32-f16, 8 for d14-f8-patchify and tiny).

The module tree reproduces the official `flux_vqgan.AutoEncoder` state-dict keys exactly (270 keys for d32-f16,
226 for d14-f8-patchify): convs wrapped as `<name>.conv`, GroupNorms as `<name>.norm`, and the quantiser registered
twice (`quantizer.lfq.mask` and `quantize.lfq.mask`). The code is our own; only names and shapes follow the release.

Public API:
    build_tokenizer(preset) -> Tokenizer            randomly initialised; preset name or TokenizerConfig
    load_tokenizer(path, preset=None) -> Tokenizer  official .pth (weights under 'vae'), a raw state-dict .pth/.pt,
                                                    or our `<name>.safetensors` + `<name>.json` (config) pair
    save_tokenizer(tok, path)                       our format (`path` ends in .safetensors; config JSON beside)
    Tokenizer.encode_raw(img)      -> z (B, d, H/f, W/f) float32, un-quantised encoder features
    Tokenizer.encode_bits(img, schedule) -> nsarm.scales.Decomposition (bits/codes/inputs per scale, f_hat)
    Tokenizer.decode(codes)        -> img (B, 3, H, W) in [-1, 1]; codes = f̂ (B, d, h, w) or a list of per-scale codes
    Tokenizer.forward(img, vae_grids) -> (recon unclamped, Decomposition)   training path (straight-through)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nsarm.bits import bsq_mask
from nsarm.config import TokenizerConfig, tokenizer_config
from nsarm.scales import Decomposition, ScaleSchedule, decompose, sum_codes

# ---------------------------------------------------------------------------------------------------------------------
# Building blocks (names chosen to produce the official keys)
# ---------------------------------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """A 2-D convolution under the attribute `conv` (official wrapper level: keys `<name>.conv.weight/bias`)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """GroupNorm (affine, eps 1e-6) under the attribute `norm` (keys `<name>.norm.weight/bias`)."""

    def __init__(self, c: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 (3×3) → norm2 → swish → conv2 (3×3), plus a 1×1 `nin_shortcut` when widths differ."""

    def __init__(self, c_in: int, c_out: int, cfg: TokenizerConfig):
        super().__init__()
        self.norm1 = Normalize(c_in, cfg.norm_groups, cfg.norm_eps)
        self.conv1 = Conv(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out, cfg.norm_groups, cfg.norm_eps)
        self.conv2 = Conv(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = Conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then 3×3 conv stride 2 (no symmetric padding: matches the release exactly)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2, then 3×3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], resample: nn.Module | None, name: str) -> nn.Module:
    """One resolution level: `block` ModuleList (+ empty `attn` list, as released) and optional re-sampler."""
    lvl = nn.Module()
    lvl.block = nn.ModuleList(blocks)
    lvl.attn = nn.ModuleList()  # attention is off in every released tokenizer; kept for the module tree only
    if resample is not None:
        setattr(lvl, name, resample)
    return lvl


def _mid(c: int, cfg: TokenizerConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c, cfg)
    mid.block_2 = ResnetBlock(c, c, cfg)
    return mid


class Encoder(nn.Module):
    """conv_in → per level: num_res_blocks ResnetBlocks (+ Downsample on the first log2(f) levels) → mid → out."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = cfg.widths
        self.conv_in = Conv(cfg.in_channels, cfg.base_ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = cfg.base_ch
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c, w, cfg))
                c = w
            self.down.append(_level(blocks, Downsample(c) if i < cfg.num_down else None, "downsample"))
        self.mid = _mid(c, cfg)
        self.norm_out = Normalize(c, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = Conv(c, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl in self.down:
            for blk in lvl.block:
                h = blk(h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in → mid → levels from lowest resolution: num_res_blocks+1 ResnetBlocks (+ Upsample for levels
    1..log2(f)) → norm_out → swish → conv_out. `up[0]` is the highest resolution, as released."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = cfg.widths
        c = widths[-1]
        self.conv_in = Conv(cfg.codebook_dim, c, 3, padding=1)
        self.mid = _mid(c, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c, widths[i], cfg))
                c = widths[i]
            levels.insert(0, _level(blocks, Upsample(c) if 1 <= i <= cfg.num_down else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(c, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = Conv(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for lvl in reversed(self.up):
            for blk in lvl.block:
                h = blk(h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BSQState(nn.Module):
    """Holds the official `lfq.mask` buffer (MSB-first bit weights); the quantisation math is in nsarm.bits."""

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", bsq_mask(d))


class MultiScaleQuantizer(nn.Module):
    """Parameter-free quantiser; exists for the `quantizer.lfq.mask` key (math: nsarm.scales.decompose)."""

    def __init__(self, d: int):
        super().__init__()
        self.lfq = BSQState(d)


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------------


class Tokenizer(nn.Module):
    """BSQ-VAE: encoder, decoder and the multi-scale BSQ quantiser (see the module docstring for the API)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleQuantizer(cfg.codebook_dim)
        self.quantize = self.quantizer  # registered twice on purpose: the release has both key prefixes

    def _frames(self, img: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        if img.dim() == 5:  # (B, 3, T, H, W) → (B·T, 3, H, W)
            B, C, T, H, W = img.shape
            return img.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W), T
        if img.dim() != 4:
            raise ValueError(f"Tokenizer: image must be (B, 3, H, W) or (B, 3, T, H, W), got {tuple(img.shape)}")
        return img, None

    def encode_raw(self, img: torch.Tensor) -> torch.Tensor:
        """Un-quantised encoder features z (B, d, H/f, W/f) float32 from images (B, 3, H, W) in [-1, 1].

        This is `encode_for_raw_features`: the input of Alg. 1 and, for LR images, of the transformation network.
        """
        x, T = self._frames(img)
        f = self.cfg.downsample
        if x.shape[1] != self.cfg.in_channels or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"Tokenizer.encode_raw: expected ({self.cfg.in_channels} channels, H and W multiples of {f}), "
                f"got shape {tuple(img.shape)}"
            )
        # fp32 encoder even under a caller's autocast (the release runs it in fp32; bits flip on bf16 rounding)
        no_amp = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
        with no_amp:
            z = self.encoder(x.float())
        if T is not None:  # back to (B, d, T, h, w)
            z = z.reshape(-1, T, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        return z

    def encode_bits(
        self, img: torch.Tensor, schedule: ScaleSchedule | Sequence[tuple[int, int]], **decompose_kwargs
    ) -> Decomposition:
        """Encode images and decompose them over a scale schedule (Alg. 1).

        Args:
            img: (B, 3, H, W) in [-1, 1].
            schedule: a ScaleSchedule (its `vae_grids` are used) or VAE-latent grids whose last entry is (H/f, W/f).
            decompose_kwargs: forwarded to nsarm.scales.decompose (down, up, next_mode, flips, prefix).
        Returns:
            Decomposition: bits[k] (B, d, h_k, w_k) int64, codes, inputs, residuals, f_hat (B, d, H/f, W/f).
        """
        grids = schedule.vae_grids if isinstance(schedule, ScaleSchedule) else schedule
        kw = {"down": self.cfg.z_down, "up": self.cfg.z_up} | decompose_kwargs
        return decompose(self.encode_raw(img), grids, **kw)

    def decode(self, codes: torch.Tensor | Sequence[torch.Tensor], clamp: bool = True) -> torch.Tensor:
        """Decode f̂ (B, d, h, w) — or a list of per-scale codes, summed with `cfg.z_up` up-sampling to the last
        code's size — into images (B, 3, h·f, w·f) in [-1, 1] (clamped unless clamp=False)."""
        if not isinstance(codes, torch.Tensor):
            codes = list(codes)
            codes = sum_codes(codes, tuple(codes[-1].shape[-2:]), self.cfg.z_up)
        if codes.dim() == 5 and codes.shape[2] == 1:  # official (B, d, 1, h, w)
            codes = codes[:, :, 0]
        if codes.dim() != 4 or codes.shape[1] != self.cfg.codebook_dim:
            raise ValueError(f"Tokenizer.decode: expected (B, {self.cfg.codebook_dim}, h, w), got {tuple(codes.shape)}")
        img = self.decoder(codes)
        return img.clamp(-1, 1) if clamp else img

    def forward(self, img: torch.Tensor, vae_grids: Sequence[tuple[int, int]] | None = None):
        """Training path: encode → multi-scale BSQ (straight-through) → decode. Returns (recon unclamped, Decomposition).

        vae_grids defaults to a single full-resolution scale (plain BSQ of every latent pixel).
        """
        z = self.encode_raw(img)
        grids = list(vae_grids) if vae_grids is not None else [tuple(z.shape[-2:])]
        dec = decompose(z, grids, down=self.cfg.z_down, up=self.cfg.z_up)
        return self.decoder(dec.f_hat), dec


def build_tokenizer(preset: str | TokenizerConfig = "tiny") -> Tokenizer:
    """A randomly initialised Tokenizer for a preset name ('d32-f16', 'd14-f8-patchify', 'tiny') or a config.

    Build under `with torch.device('meta'):` to inspect keys/shapes of the big presets without allocating memory.
    """
    return Tokenizer(tokenizer_config(preset))


# ---------------------------------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------------------------------

_MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


def _to_model_keys(sd: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a state dict onto the model's key style.

    Accepts the model style (`x.conv.weight`, `x.norm.weight`) and the flux style without the wrapper level
    (`x.weight` → `x.conv.weight` / `x.norm.weight`), like the official `load_cnn`. Returns (mapped, unexpected).
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for k, v in sd.items():
        if k in model_keys:
            out[k] = v
            continue
        stem, _, leaf = k.rpartition(".")
        for wrapper in ("conv", "norm"):
            cand = f"{stem}.{wrapper}.{leaf}"
            if cand in model_keys:
                out[cand] = v
                break
        else:
            unexpected.append(k)
    return out, unexpected


def load_state_dict_into(tok: Tokenizer, sd: dict[str, torch.Tensor], strict: bool = True) -> Tokenizer:
    """Fill every parameter of `tok` from `sd` (either key style). Raises ValueError listing missing, unexpected
    (only when strict) and wrongly shaped keys. The `lfq.mask` buffers may be absent (they are constants)."""
    own = tok.state_dict()
    mapped, unexpected = _to_model_keys(sd, set(own))
    for k in _MASK_KEYS:
        if k not in mapped:
            mapped[k] = own[k]
        elif mapped[k].shape == own[k].shape and not own[k].is_meta and not torch.equal(mapped[k].long().cpu(), own[k]):
            raise ValueError(f"load_tokenizer: buffer {k} = {mapped[k].tolist()} is not the MSB-first bit mask")
    missing = sorted(set(own) - set(mapped))
    bad_shape = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape))
    if missing or bad_shape or (strict and unexpected):
        raise ValueError(
            f"load_tokenizer: state dict does not fit preset {tok.cfg.name!r}: "
            f"{len(missing)} missing {missing[:20]}{' …' if len(missing) > 20 else ''}; "
            f"{len(unexpected)} unexpected {sorted(unexpected)[:20]}; {len(bad_shape)} wrong shapes {bad_shape[:10]}"
        )
    tok.load_state_dict(mapped, strict=True)
    return tok


def _config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Save in our format: `<path>.safetensors` (weights) + `<path>.json` (`{"tokenizer": asdict(cfg), ...}`)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_tokenizer: path must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory: the duplicate `quantize.*` buffer is dropped (it is re-created).
    sd = {k: v.detach().contiguous() for k, v in tok.state_dict().items() if not k.startswith("quantize.")}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "nsarm-tokenizer", "preset": tok.cfg.name})
    tmp.replace(path)
    _config_path(path).write_text(json.dumps({"tokenizer": tok.cfg.to_dict()}, indent=2))
    return path


def load_tokenizer(
    path: str | Path, preset: str | TokenizerConfig | None = None, *, strict: bool = True, use_ema: bool = False
) -> Tokenizer:
    """Load a tokenizer with every parameter filled; returns it in eval mode with requires_grad False.

    Args:
        path: an official checkpoint (`infinity_vae_d32reg.pth`, `infinity_vae_d56_f8_14_patchify.pth`: a dict
            whose 'vae' entry is the state dict), a plain state-dict `.pth`/`.pt`, or our `.safetensors` file
            with its `.json` config beside it. Pickles are read with `torch.load(weights_only=True)`, so an
            untrusted file cannot execute code.
        preset: preset name or TokenizerConfig; required for .pth files; for our format it defaults to the JSON
            config and must agree with it when given.
        strict: reject keys the model does not have (missing or wrongly shaped keys are always an error).
        use_ema: take the 'ema' entry of an official checkpoint instead of 'vae'.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_tokenizer: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        cfg_file = _config_path(path)
        file_cfg = None
        if cfg_file.is_file():
            file_cfg = TokenizerConfig.from_dict(json.loads(cfg_file.read_text())["tokenizer"])
        if preset is None and file_cfg is None:
            raise ValueError(f"load_tokenizer: {path} has no config {cfg_file.name} beside it; pass preset=")
        cfg = tokenizer_config(preset) if preset is not None else file_cfg
        if file_cfg is not None and cfg != file_cfg:
            raise ValueError(f"load_tokenizer: preset {cfg.name!r} differs from the config saved in {cfg_file}")
        sd = load_file(str(path))
    else:
        if preset is None:
            raise ValueError(f"load_tokenizer: pass preset= for {path} (e.g. 'd32-f16' or 'd14-f8-patchify')")
        cfg = tokenizer_config(preset)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict):
            raise ValueError(f"load_tokenizer: {path} holds a {type(ckpt).__name__}, expected a dict")
        entry = "ema" if use_ema else "vae"
        sd = ckpt[entry] if entry in ckpt and isinstance(ckpt[entry], dict) else ckpt
        if use_ema and entry not in ckpt:
            raise ValueError(f"load_tokenizer: {path} has no 'ema' entry (keys {sorted(ckpt)[:10]})")
    tok = load_state_dict_into(build_tokenizer(cfg), sd, strict=strict)
    tok.eval().requires_grad_(False)
    return tok
