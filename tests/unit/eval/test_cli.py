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


def test_rp60_is_scored_at_512_by_default_and_the_protocol_is_reported(tmp_path, sample_photos):
    """RP60 has no HR; the paper downsamples its 1024² outputs to 512² before scoring (Sec. 4.1)."""
    import pandas as pd
    from PIL import Image

    for p in sorted(sample_photos, key=lambda p: p.photo_id)[:2]:  # two real photos as 1024² "SR outputs"
        with Image.open(p.path) as im:
            im.convert("RGB").resize((1024, 1024), Image.BICUBIC).save(tmp_path / f"{p.photo_id}.png")
    (tmp_path / "sr").mkdir()
    for f in tmp_path.glob("*.png"):
        f.rename(tmp_path / "sr" / f.name)

    def run(out, *extra):
        assert main(["eval", "--sr-dir", f"m={tmp_path / 'sr'}", "--name", "rp60", "--metrics", "psnr",
                     "--no-mlflow", "--out", str(tmp_path / out), *extra]) == 0
        return pd.read_parquet(tmp_path / out / "per_image.parquet"), (tmp_path / out / "summary.md").read_text()

    table, summary = run("default")
    assert set(table["height"]) == {512} and set(table["width"]) == {512}
    assert "SSIM/NIQE protocol `pyiqa`" in summary
    table, summary = run("native", "--eval-size", "0", "--protocol", "basicsr")
    assert set(table["height"]) == {1024}
    assert "SSIM/NIQE protocol `basicsr`" in summary
    with pytest.raises(SystemExit):  # argparse names the bad choice
        main(["eval", "--sr-dir", str(tmp_path / "sr"), "--protocol", "matlab", "--out", str(tmp_path / "x")])
