"""The paper-comparable SSIM/NIQE protocol (pyiqa, default) against pyiqa itself reading the saved PNGs, and the
named BasicSR option. Published per-image tables (the NSARM authors' lab, the diffusion-SR peers) come from pyiqa."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nsarm.eval.metrics import BASICSR_VARIANTS, MetricConfig, MetricSuite, variant

pytest.importorskip("pyiqa")


def _sr_like(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A poor x4 'SR output': bicubic down/up-sampling, then noise and JPEG q=40 (deterministic given `rng`)."""
    import io

    from PIL import Image

    h, w = hr.shape[:2]
    small = Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(small, dtype=int) + rng.integers(-8, 9, hr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=40)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def sr_hr_folders(sample_photos, tmp_path_factory):
    """Five real photos, 192x288 centre crops as HR and a degraded copy of each as SR, saved as PNG folders."""
    from nsarm.eval.testsets import read_rgb, write_png

    root = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(7)
    for photo in sorted(sample_photos, key=lambda p: p.photo_id)[:5]:
        img = read_rgb(photo.path)
        top, left = (img.shape[0] - 192) // 2, (img.shape[1] - 288) // 2
        hr = np.ascontiguousarray(img[top:top + 192, left:left + 288])
        write_png(hr, root / "hr" / f"{photo.photo_id}.png")
        write_png(_sr_like(hr, rng), root / "sr" / f"{photo.photo_id}.png")
    return root / "sr", root / "hr"


def _pyiqa_table(sr_dir, hr_dir, mat_path) -> dict[str, dict[str, float]]:
    """The per-image table as a pyiqa user computes it: create_metric, file paths in, no project code."""
    import pyiqa
    import torch

    from nsarm.eval.metrics import _ensure_pkg_resources

    _ensure_pkg_resources()  # only the openai-clip import shim pyiqa needs on this setuptools
    cpu = torch.device("cpu")
    ssim = pyiqa.create_metric("ssim", device=cpu)
    niqe = pyiqa.create_metric("niqe", device=cpu, pretrained_model_path=str(mat_path))
    table = {}
    for sr in sorted(sr_dir.iterdir()):
        hr = hr_dir / sr.name
        table[sr.stem] = {"ssim": ssim(str(sr), str(hr)).item(), "niqe": niqe(str(sr)).item()}
    return table


def test_default_protocol_reproduces_pyiqa_per_image_table(sr_hr_folders, tmp_path):
    import basicsr
    import scipy.io

    from nsarm.eval.evaluate import score_folder

    sr_dir, hr_dir = sr_hr_folders
    # pyiqa's NIQE model file, written the way pyiqa's download names it, from BasicSR's copy of the MATLAB model
    npz = np.load(f"{basicsr.__path__[0]}/metrics/niqe_pris_params.npz")
    mat = tmp_path / "niqe_modelparameters.mat"
    scipy.io.savemat(mat, {"mu_prisparam": npz["mu_pris_param"], "cov_prisparam": npz["cov_pris_param"]})
    want = _pyiqa_table(sr_dir, hr_dir, mat)

    cfg = MetricConfig(metrics=("psnr", "ssim", "niqe"))
    assert cfg.protocol == "pyiqa"  # the default is the paper-comparable protocol
    ours = score_folder(MetricSuite(cfg), sr_dir, hr_dir).set_index("key")
    basic = score_folder(MetricSuite(MetricConfig(metrics=("ssim", "niqe"), protocol="basicsr")),
                         sr_dir, hr_dir).set_index("key")
    assert sorted(ours.index) == sorted(want) and len(want) == 5
    for key, row in want.items():
        assert ours.loc[key, "ssim"] == pytest.approx(row["ssim"], abs=0.001), key
        assert ours.loc[key, "niqe"] == pytest.approx(row["niqe"], abs=0.02), key
        assert 0.2 < row["ssim"] < 0.95 and 3 < row["niqe"] < 30, (key, row)  # a poor but real image
    # The BasicSR option is a different protocol: on these images it misses the published table somewhere.
    assert max(abs(basic.loc[k, "niqe"] - r["niqe"]) for k, r in want.items()) > 0.02
    assert max(abs(basic.loc[k, "ssim"] - r["ssim"]) for k, r in want.items()) > 0.001


def test_niqe_needs_no_download(tmp_path, photo_pairs):
    """The pyiqa NIQE builds from the parameters BasicSR ships: nothing is fetched or written anywhere."""
    suite = MetricSuite(MetricConfig(metrics=("niqe",), weights_dir=str(tmp_path)))
    assert suite.available == ("niqe",), suite.unavailable
    assert math.isfinite(suite.score(photo_pairs[0][2])["niqe"])
    assert list(tmp_path.iterdir()) == []


def test_protocol_is_named_and_checked():
    assert MetricSuite(MetricConfig(metrics=("ssim",), protocol="basicsr")).variants == \
        {"ssim": BASICSR_VARIANTS["ssim"]}
    assert "pyiqa" in variant("niqe") and "basicsr" in variant("niqe", "basicsr")
    assert variant("psnr", "basicsr") == variant("psnr")  # PSNR is one protocol
    with pytest.raises(ValueError, match="unknown metric protocol 'matlab'"):
        MetricSuite(MetricConfig(metrics=("ssim",), protocol="matlab"))
