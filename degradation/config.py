"""`DegradationConfig`: every parameter of Real-ESRGAN's second-order degradation, with named presets.

Field names follow Real-ESRGAN's `options/train_realesrgan_x4plus.yml` (and BasicSR's `RealESRGANDataset`), so a
reader can diff the two. Defaults are the full Real-ESRGAN values that NSARM's offline `add_deg.py` uses
(`realesrgan` preset); `nsarm-light`, `seesr` and `pisasr` equal the configs they name (cited at `PRESETS`).
The output folder of a run is named by `deg_hash(cfg, seed)`: a change of any field or of the seed is a new folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dataset import configs

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
CONFIG_VERSION = 1  # bump when the meaning of a field (not just its value) changes


@dataclass(frozen=True)
class DegradationConfig:
    # --- GT sharpening (Real-ESRGAN degrades the USM-sharpened GT; NSARM add_deg.py does the same)
    gt_usm: bool = True
    usm_radius: int = 50  # Gaussian window (made odd: 51), sigma from OpenCV's rule = 8.0
    usm_weight: float = 0.5
    usm_threshold: float = 10.0  # on the 0-255 scale
    # --- kernel sizes: drawn from {7, 9, ..., 21}, zero-padded to blur_kernel_size (hard-coded in BasicSR)
    kernel_range: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    blur_kernel_size: int = 21
    # --- first-order blur
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)  # generalised Gaussian shape
    betap_range: tuple[float, float] = (1.0, 2.0)  # plateau shape
    # --- first-order resize / noise / JPEG
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)  # scale factor relative to the HR size
    resize_modes: tuple[str, ...] = RESIZE_MODES  # chosen uniformly
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: tuple[float, float] = (1.0, 30.0)  # Gaussian sigma on the 0-255 scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    first_jpeg: bool = True  # JPEG after the first-order noise (NSARM add_deg.py's 'light' branch skips it)
    # --- second order: blur, resize, noise (all skipped when second_order is False, as in add_deg.py's 'light')
    second_order: bool = True
    second_blur_prob: float = 0.8
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    # --- second-order resize (relative to the final HR/scale size) / noise / JPEG
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    # --- final stage: [resize to HR/scale + sinc] and JPEG, in either order with probability 1/2
    final_sinc_prob: float = 0.8
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    resize_back_first_prob: float = 0.5
    scale: int = 4

    def __post_init__(self):
        for name in ("kernel_list", "kernel_list2"):
            bad = set(getattr(self, name)) - set(KERNEL_TYPES)
            if bad:
                raise ValueError(f"DegradationConfig.{name}: unknown kernel types {sorted(bad)}")
        for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            if len(getattr(self, lst)) != len(getattr(self, prob)):
                raise ValueError(f"DegradationConfig.{prob} must have one probability per entry of {lst}")
        if any(k % 2 == 0 or k > self.blur_kernel_size for k in self.kernel_range):
            raise ValueError(f"DegradationConfig.kernel_range must hold odd sizes <= {self.blur_kernel_size}")
        if set(self.resize_modes) - set(RESIZE_MODES):
            raise ValueError(f"DegradationConfig.resize_modes must be a subset of {RESIZE_MODES}")
        if self.scale < 1:
            raise ValueError("DegradationConfig.scale must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DegradationConfig:
        """Inverse of `to_dict` (lists from JSON become tuples); unknown keys are an error naming them."""
        return configs.from_dict(cls, _upgrade_config(dict(d)))

    def hash(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of every field (stable across processes/machines).

        Fields added after CONFIG_VERSION 1 (`_ADDED_FIELDS`) enter only when not at their default, so the folders
        of configs written before they existed keep their names.
        """
        at_default = {k for k, default in _ADDED_FIELDS.items() if getattr(self, k) == default}
        return configs.config_hash(self, exclude=at_default, extra={"version": CONFIG_VERSION}, compact=True)


_ADDED_FIELDS = {"first_jpeg": True, "second_order": True}  # name -> default


def _upgrade_config(d: dict) -> dict:
    """Load older config.json files: drop bookkeeping keys written beside the fields."""
    d.pop("version", None)
    return d


def deg_hash(cfg: DegradationConfig, seed: int) -> str:
    """Name of the output folder `{root}/lr/{deg_hash}`: the config hash plus the dataset seed, since both decide
    the LR bytes (two seeds of one config must not share a folder)."""
    return f"{cfg.hash()}-s{int(seed)}"


# The diffusion-SR peers' lighter variant: GT USM off (their `realesrgan.py` comments `self.usm_shaper(img_gt)` out),
# narrower resize/noise/JPEG ranges, kernels as Real-ESRGAN. SeeSR and PiSA-SR ship the same file value for value.
_PEERS_LIGHT = dict(
    gt_usm=False,
    resize_range=(0.3, 1.5),
    noise_range=(1.0, 15.0),
    poisson_scale_range=(0.05, 2.0),
    jpeg_range=(60.0, 95.0),
    second_blur_prob=0.5,
    resize_range2=(0.6, 1.2),
    noise_range2=(1.0, 12.0),
    poisson_scale_range2=(0.05, 1.0),
    jpeg_range2=(60.0, 100.0),
)

# Each preset equals, value for value, the config file it names (tests/unit/degradation/test_deg_presets.py).
# Not offered, because they cannot be matched here: StableSR (configs/stableSRNew/v2-finetune_text_T_512.yaml keeps
# the LQ at HR size with no_degradation_prob=0.01 and narrower kernels) and VARSR (its repository is not available).
PRESETS: dict[str, DegradationConfig] = {
    # Full Real-ESRGAN x4plus defaults == NSARM infinity/dataset/add_deg.py ttt='realesrgan' (the paper's LR).
    "realesrgan": DegradationConfig(),
    # NSARM infinity/dataset/add_deg.py ttt='light': USM GT, first-order blur/resize/noise, no first JPEG, no second
    # order, then the final [resize + sinc] / JPEG stage with jpeg_range2.
    "nsarm-light": DegradationConfig(
        resize_range=(0.5, 1.5),
        gaussian_noise_prob=0.3,
        noise_range=(1.0, 20.0),
        poisson_scale_range=(0.05, 2.0),
        gray_noise_prob=0.2,
        jpeg_range=(60.0, 95.0),
        first_jpeg=False,
        second_order=False,
        jpeg_range2=(60.0, 95.0),
    ),
    # cswry/SeeSR dataloaders/params_realesrgan.yml (used by basicsr/data/realesrgan.py).
    "seesr": DegradationConfig(**_PEERS_LIGHT),
    # csslc/PiSA-SR src/datasets/params.yml (used by src/datasets/realesrgan.py).
    "pisasr": DegradationConfig(**_PEERS_LIGHT),
}


def degradation_config(preset: str, **overrides) -> DegradationConfig:
    """The named preset with field overrides (`None` = not given); an unknown name raises naming the choices."""
    return configs.override(configs.resolve(PRESETS, preset, "degradation"), **overrides)
