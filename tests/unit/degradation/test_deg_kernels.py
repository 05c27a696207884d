"""Kernels: shapes, normalisation, symmetry, sampling distribution, and equality with BasicSR's kernel functions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from degradation import kernels as K
from degradation.config import KERNEL_TYPES, PRESETS


def _params(ktype: str, size: int = 15) -> dict:
    p = {"type": ktype, "size": size, "sigma_x": 2.3, "sigma_y": 0.9, "theta": 0.7}
    if ktype.startswith(("generalized", "plateau")):
        p["beta"] = 1.7
    if ktype == "sinc":
        p = {"type": "sinc", "size": size, "omega_c": 1.1}
    return p


@pytest.mark.parametrize("ktype", [*KERNEL_TYPES, "sinc"])
def test_kernel_shape_sum_symmetry(ktype):
    k = K.kernel_from_params(_params(ktype), pad_to=21)
    assert k.shape == (21, 21)
    assert abs(k.sum() - 1) < 1e-12
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # point symmetry: correlation == convolution
    assert k[:3].sum() == 0 and k[:, -3:].sum() == 0  # a 15×15 kernel zero-padded by 3 on each side
    assert k.argmax() == 10 * 21 + 10  # peak at the centre (the sinc's too: J1(x)/x is largest at x = 0)


def test_pulse_is_identity_and_sizes_checked():
    assert K.kernel_from_params(None, 21)[10, 10] == 1 and K.kernel_from_params(None, 21).sum() == 1
    with pytest.raises(ValueError, match="odd"):
        K.circular_lowpass_kernel(1.0, 8)
    with pytest.raises(ValueError, match="unknown kernel type"):
        K.kernel_from_params({"type": "box", "size": 7})


def test_isotropic_ignores_sigma_y_and_theta():
    a = K.kernel_from_params({"type": "iso", "size": 9, "sigma_x": 1.5, "sigma_y": 9.0, "theta": 2.0}, pad_to=9)
    b = K.gaussian_kernel(9, 1.5, 1.5, 0.0, isotropic=False)
    np.testing.assert_allclose(a, b, atol=1e-15)


@pytest.mark.parametrize("ktype", [*KERNEL_TYPES, "sinc"])
def test_matches_basicsr_kernel_functions(ktype):
    from basicsr.data import degradations as D

    p = _params(ktype, 13)
    iso = not ktype.endswith("aniso")
    if ktype == "sinc":
        ref = D.circular_lowpass_kernel(p["omega_c"], 13, pad_to=21)
    elif ktype in ("iso", "aniso"):
        ref = D.bivariate_Gaussian(13, p["sigma_x"], p["sigma_y"], p["theta"], isotropic=iso)
    elif ktype.startswith("generalized"):
        ref = D.bivariate_generalized_Gaussian(13, p["sigma_x"], p["sigma_y"], p["theta"], p["beta"], isotropic=iso)
    else:
        ref = D.bivariate_plateau(13, p["sigma_x"], p["sigma_y"], p["theta"], p["beta"], isotropic=iso)
    ours = K.kernel_from_params(p, pad_to=21 if ktype == "sinc" else 13)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # float64 maths, different operation order


@pytest.mark.parametrize("seed", range(12))
def test_random_mixed_kernels_parameterisation_matches_basicsr(seed):
    """Run BasicSR's random_mixed_kernels, replay its own RNG draws to read off the parameters it chose, and check
    our kernel_from_params builds the identical kernel (same meaning of every parameter)."""
    from basicsr.data.degradations import random_mixed_kernels

    cfg = PRESETS["realesrgan"]
    args = (list(cfg.kernel_list), list(cfg.kernel_prob), 11, cfg.blur_sigma, cfg.blur_sigma, [-math.pi, math.pi],
            cfg.betag_range, cfg.betap_range)
    random.seed(seed)
    np.random.seed(seed)
    ref = random_mixed_kernels(*args, noise_range=None)
    random.seed(seed)
    np.random.seed(seed)
    ktype = random.choices(list(cfg.kernel_list), list(cfg.kernel_prob))[0]
    sx = np.random.uniform(*cfg.blur_sigma)
    sy, th = (np.random.uniform(*cfg.blur_sigma), np.random.uniform(-math.pi, math.pi)) if "aniso" in ktype else (sx, 0)
    p = {"type": ktype, "size": 11, "sigma_x": sx, "sigma_y": sy, "theta": th}
    if ktype.startswith(("generalized", "plateau")):
        rng = cfg.betag_range if ktype.startswith("generalized") else cfg.betap_range
        p["beta"] = np.random.uniform(rng[0], 1) if np.random.uniform() < 0.5 else np.random.uniform(1, rng[1])
    np.testing.assert_allclose(K.kernel_from_params(p, pad_to=11), ref, rtol=0, atol=1e-12)


def test_sampler_distribution_and_ranges():
    cfg = PRESETS["realesrgan"]
    rng = np.random.default_rng(0)
    draws = [K.sample_blur_params(rng, cfg.kernel_range, cfg.kernel_list, cfg.kernel_prob, cfg.sinc_prob,
                                  cfg.blur_sigma, cfg.betag_range, cfg.betap_range) for _ in range(4000)]
    n_sinc = sum(d["type"] == "sinc" for d in draws)
    assert abs(n_sinc / 4000 - cfg.sinc_prob) < 0.02
    others = [d for d in draws if d["type"] != "sinc"]
    for t, prob in zip(cfg.kernel_list, cfg.kernel_prob, strict=True):
        assert abs(sum(d["type"] == t for d in others) / len(others) - prob) < 0.025, t
    assert {d["size"] for d in draws} == set(cfg.kernel_range)
    for d in draws:
        if d["type"] == "sinc":
            assert (math.pi / 3 if d["size"] < 13 else math.pi / 5) <= d["omega_c"] <= math.pi
        else:
            assert cfg.blur_sigma[0] <= d["sigma_x"] <= cfg.blur_sigma[1]
            assert cfg.blur_sigma[0] <= d["sigma_y"] <= cfg.blur_sigma[1]
            assert -math.pi <= d["theta"] <= math.pi
        if d["type"].startswith("plateau"):
            assert cfg.betap_range[0] <= d["beta"] <= cfg.betap_range[1]
    again = K.sample_blur_params(np.random.default_rng(5), cfg.kernel_range, cfg.kernel_list, cfg.kernel_prob,
                                 cfg.sinc_prob, cfg.blur_sigma, cfg.betag_range, cfg.betap_range)
    assert again == K.sample_blur_params(np.random.default_rng(5), cfg.kernel_range, cfg.kernel_list,
                                         cfg.kernel_prob, cfg.sinc_prob, cfg.blur_sigma, cfg.betag_range,
                                         cfg.betap_range)


def test_final_sinc_probability():
    rng = np.random.default_rng(1)
    draws = [K.sample_final_sinc_params(rng, 0.8, (7, 9, 21), (math.pi / 3, math.pi)) for _ in range(2000)]
    assert abs(sum(d is not None for d in draws) / 2000 - 0.8) < 0.03


def test_cv2_gaussian_matches_opencv():
    import cv2

    np.testing.assert_allclose(K.cv2_gaussian_1d(51), cv2.getGaussianKernel(51, 0)[:, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(K.cv2_gaussian_1d(21, 2.5), cv2.getGaussianKernel(21, 2.5)[:, 0], rtol=0, atol=1e-15)
