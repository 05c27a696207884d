"""Each named degradation preset equals, value for value, the config file it names. The expected values are
transcribed here from the upstream files (read, not imported), so a drift on either side fails a test."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from degradation.config import PRESETS, DegradationConfig
from degradation.pipeline import degrade

# Real-ESRGAN's kernel block, identical in all four files below (NSARM add_deg.py module constants; the peers'
# `kernel_info`; blur_kernel_size2 = 21 there, our one blur_kernel_size; kernel sizes 7..21 hard-coded in each).
KERNELS = dict(
    blur_kernel_size=21, kernel_range=(7, 9, 11, 13, 15, 17, 19, 21),
    kernel_list=("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"),
    kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03), sinc_prob=0.1, blur_sigma=(0.2, 3.0),
    betag_range=(0.5, 4.0), betap_range=(1.0, 2.0),
    kernel_list2=("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"),
    kernel_prob2=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03), sinc_prob2=0.1, blur_sigma2=(0.2, 1.5),
    betag_range2=(0.5, 4.0), betap_range2=(1.0, 2.0), final_sinc_prob=0.8, final_sinc_omega=(math.pi / 3, math.pi),
    resize_modes=("area", "bilinear", "bicubic"), resize_back_first_prob=0.5, scale=4,
)

# Xiangtaokong/NSARM infinity/dataset/add_deg.py, branch ttt == 'realesrgan' (USM on the GT: usm_sharpener(gt)).
NSARM_REALESRGAN = dict(
    KERNELS, gt_usm=True, usm_radius=50, usm_weight=0.5, usm_threshold=10.0,
    resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5), gaussian_noise_prob=0.5, noise_range=(1.0, 30.0),
    poisson_scale_range=(0.05, 3.0), gray_noise_prob=0.4, jpeg_range=(30.0, 95.0), first_jpeg=True,
    second_order=True, second_blur_prob=0.8, resize_prob2=(0.3, 0.4, 0.3), resize_range2=(0.3, 1.2),
    gaussian_noise_prob2=0.5, noise_range2=(1.0, 25.0), poisson_scale_range2=(0.05, 2.5), gray_noise_prob2=0.4,
    jpeg_range2=(30.0, 95.0),
)

# Same file, branch ttt == 'light': first-order values changed, the first JPEG and the whole second order
# commented out, final stage with jpeg_range2 = [60, 95]. Second-order values are kept as written there (unused).
NSARM_LIGHT = dict(
    NSARM_REALESRGAN, resize_range=(0.5, 1.5), gaussian_noise_prob=0.3, noise_range=(1.0, 20.0),
    poisson_scale_range=(0.05, 2.0), gray_noise_prob=0.2, jpeg_range=(60.0, 95.0), first_jpeg=False,
    second_order=False, jpeg_range2=(60.0, 95.0),
)

# cswry/SeeSR dataloaders/params_realesrgan.yml; the GT USM line of basicsr/data/realesrgan.py is commented out.
SEESR = dict(
    KERNELS, gt_usm=False, usm_radius=50, usm_weight=0.5, usm_threshold=10.0,
    resize_prob=(0.2, 0.7, 0.1), resize_range=(0.3, 1.5), gaussian_noise_prob=0.5, noise_range=(1.0, 15.0),
    poisson_scale_range=(0.05, 2.0), gray_noise_prob=0.4, jpeg_range=(60.0, 95.0), first_jpeg=True,
    second_order=True, second_blur_prob=0.5, resize_prob2=(0.3, 0.4, 0.3), resize_range2=(0.6, 1.2),
    gaussian_noise_prob2=0.5, noise_range2=(1.0, 12.0), poisson_scale_range2=(0.05, 1.0), gray_noise_prob2=0.4,
    jpeg_range2=(60.0, 100.0),
)

# csslc/PiSA-SR src/datasets/params.yml (the same numbers as SeeSR's file; USM likewise commented out in
# src/datasets/realesrgan.py).
PISASR = dict(SEESR)


def _assert_equals(preset: str, want: dict) -> None:
    cfg = PRESETS[preset]
    got = dataclasses.asdict(cfg)
    assert set(want) == set(got), set(want) ^ set(got)  # every field is pinned
    diff = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    assert not diff, f"{preset} differs from its source: {diff}"


def test_realesrgan_equals_nsarm_add_deg_realesrgan():
    _assert_equals("realesrgan", NSARM_REALESRGAN)


def test_seesr_equals_params_realesrgan_yml():
    _assert_equals("seesr", SEESR)


def test_pisasr_equals_params_yml():
    _assert_equals("pisasr", PISASR)


def test_nsarm_light_equals_add_deg_light_and_runs_first_order_only(hr_photos):
    _assert_equals("nsarm-light", NSARM_LIGHT)
    from degradation.reference import BasicSRChain

    hr = torch.stack([t for _, t in hr_photos[:3]])
    keys = [k for k, _ in hr_photos[:3]]
    cfg = dataclasses.replace(PRESETS["nsarm-light"], gt_usm=False)  # USM is the one step not bit-exact (see there)
    lr, params = degrade(hr, keys, cfg, dataset_seed=5)
    chain = BasicSRChain()
    for i, p in enumerate(params):
        assert p["jpeg1"] is None and p["blur2"] is p["resize2"] is p["noise2"] is None
        assert 60 <= p["final"]["jpeg"] <= 95
        assert torch.equal(lr[i:i + 1], chain(hr[i:i + 1].float() / 255, p)), keys[i]
    # switching the steps back on changes the LR: the flags really skip work
    full, _ = degrade(hr, keys, dataclasses.replace(cfg, first_jpeg=True, second_order=True), dataset_seed=5)
    assert not torch.equal(full, lr)


def test_presets_are_the_named_ones_and_old_folders_keep_their_names():
    assert sorted(PRESETS) == ["nsarm-light", "pisasr", "realesrgan", "seesr"]  # no vague `light`
    # Folder names of datasets built before first_jpeg/second_order existed (hashes from the previous config).
    assert PRESETS["realesrgan"].hash() == "f55431955739"
    assert DegradationConfig(gt_usm=False).hash() == "a05f83006c99"
    assert PRESETS["nsarm-light"].hash() != dataclasses.replace(PRESETS["nsarm-light"], second_order=True).hash()


@pytest.mark.parametrize("preset", ["nsarm-light", "seesr", "pisasr"])
def test_preset_from_dict_roundtrip(preset):
    cfg = PRESETS[preset]
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
