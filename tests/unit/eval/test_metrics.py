"""Metric suite: PSNR and BasicSR-protocol SSIM against scikit-image on an independent BT.601 Y, edge cases, the
BasicSR NIQE option against BasicSR,
the offline (no weights) path, and LPIPS from a local weight file against the official lpips loading path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nsarm.eval.metrics import SPECS, MetricConfig, MetricSuite, Unavailable


def y_bt601(img_HW3: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 studio-swing luma in [16, 235], written out independently of BasicSR."""
    rgb = img_HW3.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_ssim_match_scikit_image_on_y(basic_suite, photo_pairs, crop):
    suite = MetricSuite(MetricConfig(metrics=("psnr", "ssim"), crop_border=crop, protocol="basicsr"))
    for name, hr, sr in photo_pairs:
        got = suite.score(sr, hr)
        ys, yh = y_bt601(sr), y_bt601(hr)
        if crop:
            ys, yh = ys[crop:-crop, crop:-crop], yh[crop:-crop, crop:-crop]
        want_psnr = peak_signal_noise_ratio(yh, ys, data_range=255)
        want_ssim = structural_similarity(yh, ys, data_range=255, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
        assert got["psnr"] == pytest.approx(want_psnr, abs=1e-3), name
        assert got["ssim"] == pytest.approx(want_ssim, abs=1e-4), name
        assert 20 < got["psnr"] < 45 and 0.3 < got["ssim"] < 1.0  # noise of +-12 grey levels: sane range


def test_identical_and_constant_images(basic_suite, photo_pairs):
    _, hr, _ = photo_pairs[0]
    same = basic_suite.score(hr, hr.copy())
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0, abs=1e-9)

    a = np.full((128, 256, 3), 100, np.uint8)
    b = np.full((128, 256, 3), 110, np.uint8)
    row = basic_suite.score(a, b)
    dy = (y_bt601(b) - y_bt601(a))[0, 0]  # constant Y offset: 10 * (65.481 + 128.553 + 24.966) / 255
    assert row["psnr"] == pytest.approx(10 * math.log10(255.0**2 / dy**2), abs=1e-3)
    ya, yb = 100.0, 110.0  # pyiqa SSIM: Y of YIQ (weights sum to 1) of a grey image is that grey level
    c1 = (0.01 * 255) ** 2  # constant images: SSIM reduces to the luminance term
    assert row["ssim"] == pytest.approx((2 * ya * yb + c1) / (ya**2 + yb**2 + c1), abs=1e-6)
    assert math.isnan(row["niqe"])  # a flat image has no natural-scene statistics: NaN, not a crash


def test_basicsr_niqe_option_matches_basicsr_on_real_photos(sample_photos):
    import cv2
    from basicsr.metrics.niqe import calculate_niqe

    from nsarm.eval.testsets import read_rgb

    photos = [p for p in sample_photos if p.photo_id in ("skimage-camera", "skimage-chelsea", "skimage-coffee")]
    assert len(photos) == 3
    basic_suite = MetricSuite(MetricConfig(metrics=("niqe",), protocol="basicsr"))
    values = []
    for p in photos:
        # BasicSR's own way: cv2 reads BGR uint8; niqe converts to MATLAB Y itself.
        want = calculate_niqe(cv2.imread(str(p.path)).astype(np.float32), 0, input_order="HWC", convert_to="y")
        got = basic_suite.score(read_rgb(p.path))["niqe"]
        assert got == pytest.approx(float(want), rel=1e-6), p.photo_id
        values.append(got)
    assert all(2 < v < 20 for v in values) and len(set(np.round(values, 3))) == 3


def test_fr_metrics_are_nan_without_reference_and_bad_input_is_named(basic_suite, photo_pairs):
    _, hr, sr = photo_pairs[1]
    row = basic_suite.score(sr)
    assert math.isnan(row["psnr"]) and math.isnan(row["ssim"]) and math.isfinite(row["niqe"])
    with pytest.raises(ValueError, match="sr shape .* != hr shape"):
        basic_suite.score(sr, hr[:64])
    with pytest.raises(TypeError, match="sr: expected a uint8"):
        basic_suite.score(sr.astype(np.float32), hr)
    with pytest.raises(ValueError, match="NIQE needs two 96x96 blocks"):
        basic_suite.score(sr[:, :128])
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSuite(MetricConfig(metrics=("psnr", "fid")))


def test_offline_path_reports_missing_weights_and_computes_the_rest(tmp_path, photo_pairs):
    suite = MetricSuite(MetricConfig(weights_dir=str(tmp_path)))
    assert suite.available == ("psnr", "ssim", "niqe")
    assert set(suite.unavailable) == {"lpips", "clipiqa", "musiq", "maniqa", "topiq"}
    for name, why in suite.unavailable.items():
        assert isinstance(why, Unavailable)
        for w in SPECS[name].weights:
            assert str(tmp_path / w.filename) in why.message() and w.url in why.message()
    _, hr, sr = photo_pairs[0]
    row = suite.score(sr, hr)
    assert set(row) == {"psnr", "ssim", "niqe"} and all(math.isfinite(v) for v in row.values())
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded into the weights folder


def test_pyiqa_never_downloads_inside_the_offline_guard(tmp_path):
    pytest.importorskip("pyiqa")
    import pyiqa
    import torch

    from nsarm.eval.metrics import offline_pyiqa

    with offline_pyiqa(tmp_path), pytest.raises(FileNotFoundError, match="downloads are disabled"):
        pyiqa.create_metric("musiq", device=torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []


def test_weight_table_matches_the_installed_pyiqa():
    """Our pinned file names are the ones pyiqa's default configs load (catches a pyiqa upgrade that renames)."""
    pytest.importorskip("pyiqa")
    from nsarm.eval.metrics import _ensure_pkg_resources

    _ensure_pkg_resources()
    from pyiqa.archs import clip_model, maniqa_arch, musiq_arch, topiq_arch

    def names(urls):
        return {u.rsplit("/", 1)[-1] for u in urls.values()}

    assert SPECS["musiq"].weights[0].filename in names(musiq_arch.default_model_urls)
    assert SPECS["maniqa"].weights[0].filename in names(maniqa_arch.default_model_urls)
    assert SPECS["topiq"].weights[0].filename in names(topiq_arch.default_model_urls)
    assert SPECS["clipiqa"].weights[0].url == clip_model._MODELS["RN50"]


def _random_alexnet_state(seed: int) -> dict:
    """A torchvision AlexNet state dict with random conv weights; the 57M classifier weights (unused by LPIPS)
    are stride-0 views of one zero, so the file stays small."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.alexnet().state_dict()
    return {k: (v if k.startswith("features.") else torch.zeros(1).expand_as(v)) for k, v in state.items()}


def test_lpips_loads_local_weights_like_the_official_path(tmp_path, photo_pairs):
    pytest.importorskip("lpips")
    import lpips
    import torch

    fname = SPECS["lpips"].weights[0].filename
    state = _random_alexnet_state(1)
    torch.save(state, tmp_path / fname)
    suite = MetricSuite(MetricConfig(metrics=("lpips",), weights_dir=str(tmp_path)))
    assert suite.available == ("lpips",), suite.unavailable

    # Reference: lpips' own constructor, whose torchvision AlexNet finds the same file in the torch hub cache.
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / fname).write_bytes((tmp_path / fname).read_bytes())
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        ref = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    finally:
        torch.hub.set_dir(old)

    _, hr, sr = photo_pairs[0]
    x = torch.from_numpy(sr).permute(2, 0, 1)[None].float() / 255
    y = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        want = ref(x, y, normalize=True).item()
    got = suite.score(sr, hr)["lpips"]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7) and got > 0

    # Other weights -> another value: the score really comes from the file.
    torch.save({k: v * 1.5 if k.startswith("features.") else v for k, v in state.items()}, tmp_path / fname)
    other = MetricSuite(MetricConfig(metrics=("lpips",), weights_dir=str(tmp_path))).score(sr, hr)["lpips"]
    assert abs(other - got) > 1e-6


def test_corrupt_weight_file_is_reported_not_raised(tmp_path, photo_pairs):
    pytest.importorskip("lpips")
    (tmp_path / SPECS["lpips"].weights[0].filename).write_bytes(b"not a checkpoint")
    suite = MetricSuite(MetricConfig(metrics=("psnr", "lpips"), weights_dir=str(tmp_path)))
    assert suite.available == ("psnr",)
    assert "failed to build" in suite.unavailable["lpips"].message()
