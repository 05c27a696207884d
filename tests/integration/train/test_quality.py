"""A tiny model trained for a few minutes (tokenizer warm-up → stage 1 → stage 2, one process) against bicubic ×4
in PSNR-Y on the held-out photos (never trained on), in the setting NSARM is built for: degraded LR.

Setting. The dataset (`degraded_root`: the 10 photos of `train_root`, HR 256², 2 held out) takes its LR from the
project's real degradation stage: Real-ESRGAN's second-order pipeline (`degradation.config.PRESETS["realesrgan"]`,
the NSARM paper's training and test degradation: blur, resize, Gaussian/Poisson noise σ 1-30, JPEG q30-95, twice),
each sample's parameters drawn from (dataset seed 0, key). Seed 0 is the default, not a pick. On a clean LR
(bicubic ×1/4) bicubic ×4 is nearly unbeatable in PSNR by any model whose output passes through a 0.125
bit-per-pixel tokenizer (measured 31.5 dB on these photos); on NSARM's degraded LR it is the honest reference.

The comparison itself is the strict one: the same held-out photos (camera, moon: never seen by the tokenizer or the
model), PSNR-Y (BasicSR, BT.601 Y) of the full 256² images for both methods, bicubic ×4 of the same LR.
Every step is capped by optimiser steps, not seconds, so the result does not depend on machine load.

What it guards (measured 2026-11-25, this exact test): the tiny model does NOT beat bicubic in PSNR, and the test
says so instead of xfailing: it asserts the model lands within GAP_DB of bicubic, far above a flat grey image, which
a broken stage (no learning, wrong LR, mismatched tokenizer) does not reach. Held-out PSNR-Y: model 22.16 dB
(SSIM 0.618; 22.11 dB in CI after the DropPath RNG change) vs bicubic 24.21 dB (SSIM 0.582); a flat grey image
11.7 / 22.9 dB (camera / moon). On an H100 the same pipeline ran 22 times over variants (codebook_dim 8/12/16,
128² tokenizer crops, wider/deeper transformer, 2.5× tokenizer and 5× stage steps, tokenizer width 64, tau 0.1, 6× the
training data): means 19.5-23.1 dB (21.3 for this exact config), none reached bicubic. The model beats bicubic on moon
(by up to 2.1 dB) and loses on camera in every variant (by 4-7.5 dB): every wrong bit of a bitwise generative model
adds a full-size residual, and camera's heavy degradation leaves the tiny model guessing. Table:
benchmarks/RESULTS.md "Tokenizer"; rerun: benchmarks/tiny_quality.py.
CPU time 414 s (≈ 3.5-4 min wall on an idle 2-core box; 20 min on the shared, loaded one).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKENIZER_STEPS = 400  # warm-up of the tiny tokenizer (WARM_UP_RECIPE in nsarm/train/holdout.py)
STAGE_STEPS = 60  # stage 1 and stage 2 each, batch 4
# How far below bicubic the model may land: measured 2.05-2.10 dB on CPU and 2.9 dB on an H100 for this config (runs
# of one config vary by up to ±2 dB, see above); a model that learned nothing scores ~7 dB below (flat grey, 17.3 dB).
GAP_DB = 4.0


def test_tiny_model_gets_within_4_db_of_bicubic_on_degraded_held_out_photos(degraded_root, tmp_path):
    from nsarm.eval.holdout import evaluate_export, tokenizer_ceiling
    from nsarm.train.config import train_config
    from nsarm.train.holdout import warm_up_tokenizer
    from nsarm.train.loop import LocalContext, LoopOptions, train_stage

    root = degraded_root["root"]
    tok = warm_up_tokenizer(root, str(tmp_path / "tok" / "tiny.safetensors"), steps=TOKENIZER_STEPS, holdout=2)
    ceiling = tokenizer_ceiling(tok, root, 2, include_train=False)
    common = dict(batch_size=4, holdout=2, image_every=0, checkpoint_every=1000)
    c1 = train_config("tiny", 1, steps=STAGE_STEPS, tokenizer_path=tok, **common)
    train_stage(c1, root, LocalContext(tmp_path / "s1"),
                options=LoopOptions(latent_cache=str(tmp_path / "lat"), export_dir=str(tmp_path / "e1")))
    c2 = train_config("tiny", 2, steps=STAGE_STEPS, init_from=str(tmp_path / "e1"), **common)
    train_stage(c2, root, LocalContext(tmp_path / "s2"),
                options=LoopOptions(latent_cache=str(tmp_path / "lat"), export_dir=str(tmp_path / "e2")))
    scores = evaluate_export(str(tmp_path / "e2"), root, 2, str(tmp_path / "eval"))
    report = {**scores, "tokenizer_ceiling": ceiling}
    assert scores["keys"] == ["camera", "moon"], report
    # The comparison is sane and the LR really is degraded: bicubic of a clean LR scores 31.5 dB on these photos.
    assert 20 < scores["bicubic"]["psnr"] < 28, report
    assert scores["model"]["psnr"] > scores["bicubic"]["psnr"] - GAP_DB, report
