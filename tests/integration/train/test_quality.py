"""A tiny model trained for a few minutes (tokenizer warm-up → stage 1 → stage 2, one process) against bicubic ×4
in PSNR-Y on the held-out photos (never trained on)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Measured 2026-11-25 (shared 2-core box): the tiny tokenizer after a ~7 min warm-up reconstructs the held-out photos
# (camera, moon) at 12.2 / 18.9 dB PSNR-Y even from their own exact bits (the ceiling of any transformer), while bicubic
# scores 31.5 dB on them; the trained model reached 22.5 dB (colour fix included). Beating bicubic needs a much better
# tiny tokenizer (nsarm/tokenizer_train.py), not more transformer steps; the test stays to show when it does.
REASON = "tiny tokenizer reconstruction ceiling (12-19 dB) is below bicubic (31.5 dB) on the held-out photos"


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=REASON)
def test_tiny_model_beats_bicubic_on_held_out_photos(train_root, tmp_path):
    from nsarm.train.config import train_config
    from nsarm.train.holdout import evaluate_export, warm_up_tokenizer
    from nsarm.train.loop import LocalContext, LoopOptions, train_stage

    root = train_root["root"]
    tok = warm_up_tokenizer(root, str(tmp_path / "tok" / "tiny.safetensors"), steps=300, holdout=2, max_seconds=180)
    common = dict(batch_size=4, holdout=2, image_every=0, checkpoint_every=1000)
    c1 = train_config("tiny", 1, steps=60, tokenizer_path=tok, **common)
    train_stage(c1, root, LocalContext(tmp_path / "s1"),
                options=LoopOptions(latent_cache=str(tmp_path / "lat"), export_dir=str(tmp_path / "e1")))
    c2 = train_config("tiny", 2, steps=60, init_from=str(tmp_path / "e1"), **common)
    train_stage(c2, root, LocalContext(tmp_path / "s2"),
                options=LoopOptions(latent_cache=str(tmp_path / "lat"), export_dir=str(tmp_path / "e2")))
    scores = evaluate_export(str(tmp_path / "e2"), root, 2, str(tmp_path / "eval"))
    assert scores["keys"] and scores["bicubic"]["psnr"] > 20  # the comparison itself is sane
    assert scores["model"]["psnr"] > scores["bicubic"]["psnr"], scores
