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


def test_flatten_params():
    assert flatten({"metric": {"crop_border": 0, "metrics": ("psnr",)}, "n": 3}) == {
        "metric.crop_border": "0", "metric.metrics": "('psnr',)", "n": "3"}
    assert len(flatten({"x": "y" * 10000})["x"]) == 6000  # MLflow's param length limit
