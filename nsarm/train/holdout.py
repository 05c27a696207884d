"""The train-nsarm flow's tokenizer warm-up (tiny preset): the BSQ-VAE trained on the dataset minus its held-out split.

    tok = warm_up_tokenizer(root, "runs/tokenizer/tiny.safetensors", steps=400, holdout=2)   # tiny preset only

The warm-up is capped by optimiser steps (`max_seconds` is only a safety net for the demo), so its result does not
depend on how loaded the machine is. What it reaches is measured by `nsarm.eval.holdout.tokenizer_ceiling`; the
held-out split (`data.holdout_keys(root, n)`, the last n samples of the last shard) is scored by
`nsarm.eval.holdout.evaluate_export`.
"""

from __future__ import annotations

from pathlib import Path

from nsarm.train.data import holdout_keys, hr_images

# The tiny warm-up recipe (benchmarks/RESULTS.md "Tokenizer" has the before/after ceilings): TokenizerTrainConfig
# fields that differ from its defaults. Crops come from the 256² HR rescaled to a short side of 160-256 (the sizes the
# tokenizer is used at, not 96); some crops are grey because real datasets hold grey photos (the held-out ones here).
WARM_UP_RECIPE = {"short_side": (160, 256), "grey_prob": 0.3, "lr": 3e-3, "warmup_steps": 20}


def warm_up_tokenizer(root: str, out_path: str, steps: int = 400, holdout: int = 0, max_seconds: float | None = None,
                      seed: int = 0) -> str:
    """Train the tiny BSQ-VAE on the dataset's HR images (held-out keys excluded) with WARM_UP_RECIPE for `steps`
    optimiser steps (`max_seconds`, if given, stops earlier); reuses an existing file."""
    import torch

    from nsarm.tokenizer import save_tokenizer
    from nsarm.tokenizer_train import TokenizerTrainConfig, train_tokenizer
    out = Path(out_path)
    if out.is_file() and out.with_suffix(".json").is_file():
        return str(out)
    images = list(hr_images(root, None, holdout_keys(root, holdout), seed).values())
    cfg = TokenizerTrainConfig(steps=steps, seed=seed, max_seconds=max_seconds, **WARM_UP_RECIPE)
    torch.manual_seed(seed)
    tok, _ = train_tokenizer(cfg, images)
    save_tokenizer(tok, out)
    return str(out)


