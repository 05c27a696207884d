"""Frozen configuration dataclasses and named presets for the NSARM model library.

Sections (one per stage, G3/G4): tokenizer (BSQ-VAE) configs and `TOKENIZER_PRESETS`; model/transformer configs
are added below by their owners. Every field has the paper's / official release's default; derived values (number
of down-sampling levels, bits per transformer token, …) are properties, never repeated fields.

Presets:
- `d32-f16`          Infinity-2B tokenizer `infinity_vae_d32reg.pth` (also d16/d24/d64 by changing codebook_dim).
- `d14-f8-patchify`  NSARM / Infinity-8B tokenizer `infinity_vae_d56_f8_14_patchify.pth`: f8 latent, 14 bits per
                     latent pixel, 2×2 spatial patchify → 56 bits per transformer token.
- `tiny`             CPU tests and the demo; mirrors the 8B/d56 path at small size (see `_TINY_NOTES`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dataset import configs

# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer (BSQ-VAE)
# ---------------------------------------------------------------------------------------------------------------------

# Names of the scale-schedule sizes of Infinity's dynamic_resolution (pn = "pixel number" of the final image).
SCHEDULE_PNS = ("0.06M", "0.25M", "0.60M", "1M")


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of an Infinity-compatible BSQ-VAE (encoder/decoder CNN + multi-scale binary spherical quantiser).

    The module tree built from this config has exactly the official state-dict key names (spec §3.3).
    """

    name: str = "d32-f16"
    in_channels: int = 3  # RGB images in [-1, 1]
    base_ch: int = 128  # width of the first encoder level / last decoder level
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # width multiplier per resolution level (encoder and decoder)
    num_res_blocks: int = 2  # ResnetBlocks per encoder level; the decoder uses num_res_blocks + 1 (official layout)
    codebook_dim: int = 32  # d: bits per VAE latent pixel (= encoder output channels; no quant projection)
    downsample: int = 16  # VAE spatial stride f (official "patch_size"); must be a power of two
    spatial_patchify: bool = False  # 2×2 latent pixels → one transformer token (pixel_unshuffle, spec §2.2)
    norm_groups: int = 32  # GroupNorm groups (official: 32, eps 1e-6); every width must be divisible by it
    norm_eps: float = 1e-6
    # Interpolation used by the multi-scale residual decomposition (spec §2.3): 'area' down, 'trilinear' up.
    z_down: str = "area"
    z_up: str = "trilinear"
    # Generation defaults of the pipeline that uses this tokenizer (read by nsarm.scales.schedule_for and the
    # model configs): the scale-schedule size and K_t, the number of leading scales the transformation network
    # supplies (paper Eq. 4/5: K_t = 7 for 1024² output).
    default_pn: str = "1M"
    k_t: int = 7

    def __post_init__(self) -> None:
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise ValueError(f"TokenizerConfig.downsample must be a power of two ≥ 2, got {self.downsample}")
        if self.num_down > len(self.ch_mult):
            raise ValueError(
                f"TokenizerConfig: downsample {self.downsample} needs {self.num_down} levels but ch_mult has "
                f"{len(self.ch_mult)}"
            )
        bad = [w for w in self.widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"TokenizerConfig: widths {bad} are not divisible by norm_groups={self.norm_groups}")
        if self.z_down not in ("area", "bilinear", "trilinear") or self.z_up not in ("area", "bilinear", "trilinear"):
            raise ValueError(f"TokenizerConfig: unknown interpolation z_down={self.z_down!r} z_up={self.z_up!r}")
        if self.default_pn not in SCHEDULE_PNS:
            raise ValueError(f"TokenizerConfig.default_pn must be one of {SCHEDULE_PNS}, got {self.default_pn!r}")

    # -- derived values ------------------------------------------------------------------------------------------
    @property
    def num_down(self) -> int:
        """Number of stride-2 down-sampling steps (encoder.down.{0..num_down-1}.downsample)."""
        return int(math.log2(self.downsample))

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level, highest resolution first."""
        return tuple(self.base_ch * m for m in self.ch_mult)

    @property
    def patch(self) -> int:
        """Side of the latent-pixel patch that forms one transformer token (2 with spatial patchify, else 1)."""
        return 2 if self.spatial_patchify else 1

    @property
    def token_bits(self) -> int:
        """d_vae: bits per transformer token (codebook_dim, or 4·codebook_dim with 2×2 patchify)."""
        return self.codebook_dim * self.patch * self.patch

    @property
    def token_stride(self) -> int:
        """Image pixels per transformer token side (16 for both official tokenizers)."""
        return self.downsample * self.patch

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists); inverse is `TokenizerConfig.from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        """Build from a dict written by `to_dict` (unknown keys are an error, missing keys take defaults)."""
        return configs.from_dict(cls, d)


# The `tiny` preset is a contract other modules rely on (transformer tests, the demo); keep it exactly so.
# It mirrors the 8B/d56 path at small size:
#   HR 256² → f8 latent 32×32 (VAE grids 2,4,8,12,16,24,32), LR 64² → LR latent 8×8;
#   2×2 patchify, codebook_dim 8 → 32-bit transformer tokens on grids 1,2,4,6,8,12,16 (the 1:1 '0.06M' schedule);
#   K_t = 4 scales come from the transformation network; widths 32/32/64/64 (GroupNorm 32 as released), 1.4M params,
#   ~23 GFLOP per 256² encode+decode (benchmarks/RESULTS.md: 0.35-0.75 img/s on the loaded shared 2-core box).
_TINY_NOTES = "HR 256², LR 64², f8, patchify 2×2, d=8 → 32-bit tokens, pn 0.06M, K_t=4"

TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "d32-f16": TokenizerConfig(name="d32-f16"),
    "d14-f8-patchify": TokenizerConfig(
        name="d14-f8-patchify", ch_mult=(1, 2, 4, 4), codebook_dim=14, downsample=8, spatial_patchify=True
    ),
    "tiny": TokenizerConfig(
        name="tiny", base_ch=32, ch_mult=(1, 1, 2, 2), codebook_dim=8, downsample=8, spatial_patchify=True,
        default_pn="0.06M", k_t=4,
    ),
}


def tokenizer_config(preset: str | TokenizerConfig) -> TokenizerConfig:
    """Resolve a preset name (or pass a config through). Unknown names raise with the list of choices."""
    if isinstance(preset, TokenizerConfig):
        return preset
    return configs.resolve(TOKENIZER_PRESETS, preset, "tokenizer")
