"""`nsarm eval` argument handling and the MLflow param flattening (no server needed)."""

from __future__ import annotations

import pytest

from nsarm.cli import main
from nsarm.tracking import flatten


def test_eval_needs_exactly_one_source(tmp_path):
    with pytest.raises(SystemExit, match="exactly one of --checkpoint or --sr-dir"):
        main(["eval", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a folder"):
        main(["eval", "--sr-dir", f"x={tmp_path / 'missing'}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--testset needs --testset-root"):
        main(["eval", "--checkpoint", "c.pth", "--testset", "realsr", "--out", str(tmp_path)])


def test_checkpoint_mode_uses_the_inference_module(tmp_path, photo_pairs):
    """Until nsarm.inference provides build_upscale_fn, the model path says so instead of failing obscurely."""
    from nsarm.eval.testsets import write_png

    write_png(photo_pairs[0][1], tmp_path / "lr" / "a.png")
    try:
        from nsarm import inference
    except ImportError:
        inference = None
    if inference is not None and hasattr(inference, "build_upscale_fn"):
        pytest.skip("nsarm.inference.build_upscale_fn exists: covered by the model tests")
    with pytest.raises(SystemExit, match="build_upscale_fn|nsarm.inference"):
        main(["eval", "--checkpoint", str(tmp_path / "c.pth"), "--lr-dir", str(tmp_path / "lr"),
              "--out", str(tmp_path / "out"), "--no-mlflow"])


def test_flatten_params():
    assert flatten({"metric": {"crop_border": 0, "metrics": ("psnr",)}, "n": 3}) == {
        "metric.crop_border": "0", "metric.metrics": "('psnr',)", "n": "3"}
    assert len(flatten({"x": "y" * 10000})["x"]) == 6000  # MLflow's param length limit
