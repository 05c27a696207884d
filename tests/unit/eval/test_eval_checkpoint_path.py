"""`nsarm eval --checkpoint`: a saved model (our format) is loaded once and scored on an LR/HR folder pair; the SR
outputs are 4× the LR and their PSNR-Y is what the metric code computes from the saved PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nsarm.checkpoints import save_checkpoint
from nsarm.cli import main
from nsarm.model import build_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model("tiny"), tmp_path_factory.mktemp("ckpt") / "tiny")


def test_eval_checkpoint_scores_saved_outputs(tiny_checkpoint, sample_photos, tmp_path):
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    for photo in sample_photos[:2]:
        hr = Image.open(photo.path).convert("RGB").resize((256, 256), Image.BICUBIC)
        hr.save(hr_dir / f"{photo.photo_id}.png")
        hr.resize((64, 64), Image.BICUBIC).save(lr_dir / f"{photo.photo_id}.png")
    out = tmp_path / "report"
    rc = main(["eval", "--checkpoint", str(tiny_checkpoint), "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir),
               "--name", "pairs", "--metrics", "psnr,ssim", "--out", str(out), "--no-mlflow", "--device", "cpu"])
    assert rc == 0
    srs = sorted((out).rglob("*.png"))
    sr_files = [p for p in srs if p.parent.name == "sr" or "sr" in p.parts]
    assert len(sr_files) >= 2
    for p in sr_files[:2]:
        assert Image.open(p).size == (256, 256)
    # the reported PSNR is the metric of the saved SR against the HR (recomputed independently here)
    import pyarrow.parquet as pq

    table = pq.read_table(next(out.rglob("*.parquet"))).to_pandas()
    from skimage.metrics import peak_signal_noise_ratio

    def y(img):  # BT.601 luma, the SR convention
        a = np.asarray(img, dtype=np.float64) / 255.0
        return 16 / 255 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255

    for _, row in table.iterrows():
        key = str(row["key"])
        sr = next(p for p in sr_files if p.stem == key)
        ref = peak_signal_noise_ratio(y(Image.open(hr_dir / f"{key}.png")), y(Image.open(sr)), data_range=1.0)
        assert abs(float(row["psnr"]) - ref) < 0.05, (key, row["psnr"], ref)


def test_eval_checkpoint_missing_is_a_clear_error(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    rc = main(["eval", "--checkpoint", str(tmp_path / "nope"), "--lr-dir", str(tmp_path), "--name", "x",
               "--out", str(tmp_path / "o"), "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err  # one line, as every CLI's input check (tests/unit/test_cli_inputs.py)
    assert "--checkpoint" in err and "nope" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()  # nothing created
